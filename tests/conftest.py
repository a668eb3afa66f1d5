"""Test configuration: every test runs on the CPU backend, deterministically.

The SpikingJelly parity oracle (torch + spikingjelly) is optional. Parity code imports it with
:func:`import_oracle`: where it is missing, those modules and tests skip with the reason and the
install line (so ``python -m pytest -q tests`` passes after ``pip install -e '.[test]'``). With
``PLIF_REQUIRE_ORACLE=1`` in the environment (``.ci/run`` sets it) every skip of a parity module
or of a ``@pytest.mark.parity`` test is turned into a failure instead, so CI cannot pass without
having run the oracle comparisons.

At the end of a run the number of parity tests that were executed is printed by outcome, and the
parity modules skipped for a missing oracle, so a log shows whether the comparisons ran.
"""

import collections
import importlib
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ORACLE_INSTALL = (
    "pip install torch==2.13.0 && pip install --no-deps spikingjelly==2.0.0 loguru h5py "
    "snntorch==1.0.0 nirtorch==2.6"
)
REQUIRE_ORACLE_ENV = "PLIF_REQUIRE_ORACLE"

_parity_outcomes: collections.Counter = collections.Counter()
_oracle_skipped_modules: dict[str, str] = {}  # test module node id -> skip reason
_ORACLE_MISSING = "SpikingJelly parity oracle not installed"


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
            f"{_ORACLE_MISSING} (No module named {err.name!r}); install it with: {ORACLE_INSTALL}",
            allow_module_level=True,
        )


def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    return str(reason).removeprefix("Skipped: ")


def _required_message(reason: str) -> str:
    return (
        f"{REQUIRE_ORACLE_ENV}=1: parity tests must run, not skip ({reason}). Install the "
        f"oracle ({ORACLE_INSTALL}) or unset {REQUIRE_ORACLE_ENV}."
    )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if report.skipped and _ORACLE_MISSING in _skip_reason(report):
        _oracle_skipped_modules[report.nodeid] = _skip_reason(report)
        if oracle_required():
            report.outcome = "failed"
            report.longrepr = _required_message(_skip_reason(report))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and oracle_required() and "parity" in item.keywords:
        report.outcome = "failed"
        report.longrepr = _required_message(_skip_reason(report))
    return report


def pytest_runtest_logreport(report):
    if "parity" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _parity_outcomes[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_parity_outcomes.items()))
    terminalreporter.write_line(f"SpikingJelly parity tests executed: {counts or 'none'}")
    if _oracle_skipped_modules:
        names = ", ".join(sorted(_oracle_skipped_modules))
        verb = "failed" if oracle_required() else "skipped"
        terminalreporter.write_line(
            f"Parity modules {verb} without the SpikingJelly oracle: {names}; "
            f"install it with: {ORACLE_INSTALL}"
        )


def float64_quick_compile():
    """Generator for a module-scoped fixture: float64, and XLA's optimisations off, then restored.

    Exact comparisons are meaningful in float64; XLA compile time dominates the tiny networks of
    these tests and unoptimised code computes the same values. Restored afterwards so that other
    test files see float32 and optimised compilation.
    """
    import jax

    previous = {"jax_enable_x64": jax.config.read("jax_enable_x64")}
    jax.config.update("jax_enable_x64", True)
    try:
        previous["jax_disable_most_optimizations"] = jax.config.read(
            "jax_disable_most_optimizations"
        )
        jax.config.update("jax_disable_most_optimizations", True)
    except AttributeError:  # the option may go away in a future jax: then compile as usual
        pass
    yield
    for option, value in previous.items():
        jax.config.update(option, value)
