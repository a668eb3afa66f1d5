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
