"""The SpikingJelly / snnTorch parity oracle: optional, imported through :func:`import_oracle`.

Where it is missing, the modules and tests that need it skip with the reason and the install
line; with ``PLIF_REQUIRE_ORACLE=1`` (``.ci/run``) ``tests/conftest.py`` turns those skips into
failures.
"""

from __future__ import annotations

import importlib
import os

import pytest

ORACLE_INSTALL = (
    "pip install torch==2.13.0 && pip install --no-deps spikingjelly==2.0.0 loguru h5py "
    "snntorch==1.0.0 nirtorch==2.6"
)
REQUIRE_ORACLE_ENV = "PLIF_REQUIRE_ORACLE"
ORACLE_MISSING = "SpikingJelly parity oracle not installed"


def oracle_required() -> bool:
    """True where a skipped parity test must fail (``PLIF_REQUIRE_ORACLE=1``, set by .ci/run)."""
    return os.environ.get(REQUIRE_ORACLE_ENV, "") not in ("", "0")


def import_oracle(module: str):
    """Imports ``module`` of the parity oracle, or skips the caller where it is not installed.

    At module level it skips the whole test module, inside a test that test. Only a missing
    module (``ModuleNotFoundError``) skips; an installed oracle that fails to import is a bug
    and keeps its traceback.

    Args:
      module: dotted module name, e.g. ``"torch"`` or ``"spikingjelly.activation_based.neuron"``.

    Returns:
      The imported module.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        # allow_module_level: at a module's top level this skips the module; in a test, the test.
        pytest.skip(
            f"{ORACLE_MISSING} (No module named {err.name!r}); install it with: {ORACLE_INSTALL}",
            allow_module_level=True,
        )
