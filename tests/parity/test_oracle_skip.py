"""Without the SpikingJelly oracle the parity tests skip with the install line; CI refuses the skip.

Each test runs pytest in a subprocess on the two parity modules and on the parity test of
``test_train.py`` (the three places that import torch / spikingjelly), with a pytest plugin that
hides torch and spikingjelly (a ``sys.meta_path`` finder raising ``ModuleNotFoundError``, as on a
machine after ``pip install -e '.[test]'`` alone), so the result does not depend on whether this
environment has the oracle installed. ``tests/conftest.py`` and ``tests/support/oracle.py`` hold
the mechanism.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.oracle import ORACLE_INSTALL, REQUIRE_ORACLE_ENV

pytestmark = pytest.mark.e2e  # nested pytest runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARITY_TARGETS = (
    "tests/parity/test_parity_neurons.py",
    "tests/parity/test_parity_networks.py",
    "tests/training/test_train.py::test_learning_rate_matches_torch_cosine_annealing_past_t_max",
)

HIDE_ORACLE_PLUGIN = '''
"""pytest plugin: torch and spikingjelly cannot be imported (as if not installed)."""
import importlib.abc
import sys

HIDDEN = ("torch", "spikingjelly")


class _HideOracle(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


assert not any(m.split(".")[0] in HIDDEN for m in sys.modules), "imported before the plugin"
sys.meta_path.insert(0, _HideOracle())
'''


def _pytest_without_oracle(tmp_path, *args: str, require: bool) -> subprocess.CompletedProcess:
    (tmp_path / "hide_oracle.py").write_text(HIDE_ORACLE_PLUGIN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    env.pop(REQUIRE_ORACLE_ENV, None)
    if require:
        env[REQUIRE_ORACLE_ENV] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "hide_oracle"]
    cmd += ["-p", "no:cacheprovider"]
    return subprocess.run(
        [*cmd, *args, *PARITY_TARGETS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_parity_tests_skip_with_the_install_line_when_the_oracle_is_missing(tmp_path):
    result = _pytest_without_oracle(tmp_path, require=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "3 skipped in" in out and "passed" not in out and "error" not in out.lower(), out
    # -ra (pyproject) prints the reasons, "SKIPPED [count] location: reason": two modules and
    # one test, each for the missing module, with the fix.
    reasons = [line for line in out.splitlines() if line.startswith("SKIPPED [")]
    assert sum(int(line.split("[")[1].split("]")[0]) for line in reasons) == 3, out
    for line in reasons:
        assert "SpikingJelly parity oracle not installed (No module named 'torch')" in line, out
        assert line.endswith("install it with: " + ORACLE_INSTALL), out
    assert (
        "Parity modules skipped without the SpikingJelly oracle: "
        "tests/parity/test_parity_networks.py, "
        "tests/parity/test_parity_neurons.py; install it with: " + ORACLE_INSTALL
    ) in out


def test_require_oracle_turns_every_parity_skip_into_a_failure(tmp_path):
    result = _pytest_without_oracle(
        tmp_path, "--continue-on-collection-errors", "-rfE", require=True
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # tests failed (not 0: passed, not 5: nothing collected)
    assert "skipped" not in out.replace("must run, not skip", ""), out
    # Both module-level skips became collection errors, the in-test skip a failure.
    for module in PARITY_TARGETS[:2]:
        assert f"ERROR {module}" in out, out
    assert (
        "FAILED tests/training/test_train.py::"
        "test_learning_rate_matches_torch_cosine_annealing_past_t_max" in out
    )
    message = f"{REQUIRE_ORACLE_ENV}=1: parity tests must run, not skip"
    assert out.count(message) >= 3, out
    assert "1 failed, 2 errors" in out, out
