"""Test configuration: every test runs on the CPU backend, deterministically.

At the end of a run the number of SpikingJelly parity tests (``@pytest.mark.parity``) that were
executed is printed by outcome, so a CI log shows that the oracle comparisons ran and did not skip.
"""

import collections
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_parity_outcomes: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    if "parity" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _parity_outcomes[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_parity_outcomes.items()))
    terminalreporter.write_line(f"SpikingJelly parity tests executed: {counts or 'none'}")
