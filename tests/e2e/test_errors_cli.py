"""A user's mistakes through the command line: one ``error: ...`` line, exit 2, no traceback.

Every case runs the script's ``main`` through :func:`plif_jax.cli.run`, as ``python -m
experiments.<script>`` does, in this test process (``tests.support.cli.run_in_process``), and
one case of each family (``FRESH_PROCESS``: config value, command line, data, workdir,
checkpoint, prepare_data) also as a real ``python -m experiments.<script>`` subprocess, to show
the same from a fresh interpreter. Each checks: exit status 2, no ``Traceback`` on stderr, the
last stderr line is ``error: `` followed by the message naming the problem, one such line, and,
where files existed before, that they are byte-identical after. Most mistakes are caught by
``plif_jax.training.config`` before JAX is imported; the others need files the fixture writes in
the real formats (a tonic N-MNIST tree with a truncated event file, the training tests' tiny run
with damaged checkpoints).

The notebook's first cell shows a ``UserError`` the same way, and a bug keeps its traceback.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.support.cli import Run, run_in_process, run_subprocess
from tests.support.damage import snapshot, step_dir, truncate_arrays
from tests.support.runs import ROOT, cache_env

# The quick-start config at the smallest width: no case here gets as far as building it.
QUICK = ["--config=configs/quickstart.py", "--config.model.channels=2"]
# A config file that is exactly the tiny run's saved config (resumable in that run's workdir).
SAVED_CONFIG = """
import json

import ml_collections


def get_config():
    with open({path!r}) as f:
        return ml_collections.ConfigDict(json.load(f))
"""


@dataclasses.dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # after `python -m experiments.<script>`; {name} = a fixture path
    expect: tuple[str, ...]  # substrings of the error line
    unchanged: str | None = None  # a fixture path whose files must be byte-identical after
    script: str = "train"


CASES = {
    "unknown dataset": Case(
        (*QUICK, "--config.dataset=imagenet", "--workdir={fresh}"),
        ("Unknown dataset 'imagenet'", "--config.dataset=mnist"),
    ),
    "init_tau 1.0": Case(
        (*QUICK, "--config.neuron.init_tau=1.0", "--workdir={fresh}"),
        ("config.neuron.init_tau must be > 1", "got 1.0", "the paper uses 2.0"),
    ),
    "init_tau below 1": Case(
        (*QUICK, "--config.neuron.init_tau=0.5", "--workdir={fresh}"),
        ("config.neuron.init_tau must be > 1", "got 0.5"),
    ),
    "T = 0": Case(
        (*QUICK, "--config.data.T=0", "--workdir={fresh}"),
        ("config.data.T (time steps) must be a positive integer, got 0",),
    ),
    "batch larger than the data": Case(
        (
            *QUICK,
            "--config.dataset=digits_static",
            "--config.batch_size=5000",
            "--workdir={fresh}",
        ),
        ("batch size 5000 is larger than the 4000 samples", "Use a batch size <= 4000"),
    ),
    "remat_chunk not dividing T": Case(
        (*QUICK, "--config.model.remat_chunk=3", "--workdir={fresh}"),
        ("remat_chunk=3 does not divide config.data.T=8", "[1, 2, 4, 8]"),
    ),
    "negative learning rate": Case(
        (*QUICK, "--config.optim.lr=-0.001", "--workdir={fresh}"),
        ("config.optim.lr must be finite and >= 0, got -0.001",),
    ),
    "config file that does not exist": Case(
        ("--config=configs/nope.py",),
        ("--config: config file configs/nope.py not found", "quickstart.py"),
    ),
    "override of a field that does not exist": Case(
        (*QUICK, "--config.model.chanels=4"),
        ("--config.model.chanels=4: the config has no field model.chanels", '"channels"'),
    ),
    "override value of the wrong type": Case(
        (*QUICK, "--config.model.channels=abc"),
        ("flag --config.model.channels=abc", "invalid literal for int()"),
    ),
    "missing static data (tfds)": Case(
        (
            "--config=configs/mnist.py",
            "--config.model.channels=2",
            "--config.data.root={empty}",
            "--workdir={fresh}",
        ),
        ("No ArrayRecord copy of tfds dataset 'mnist'", "python -m experiments.prepare_data"),
    ),
    "missing event data": Case(
        ("--config=configs/nmnist.py", "--config.data.root={empty}", "--workdir={fresh}"),
        ("nmnist not found under {empty}", "tonic"),
    ),
    "truncated N-MNIST file": Case(
        (
            "--config=configs/nmnist.py",
            "--config.data.root={nmnist}",
            "--config.data.cache_dir={cache}",
            "--config.data.num_workers=1",
            "--workdir={fresh}",
        ),
        ("Truncated or corrupt N-MNIST file {nmnist}/NMNIST/Train/0/00000.bin", "Re-extract"),
    ),
    "workdir that is a file": Case(
        (*QUICK, "--workdir={a_file}"),
        ("--workdir {a_file} is a file, not a directory",),
    ),
    "unwritable workdir": Case(
        # sysfs refuses new directories, also to root (a chmod would not stop root).
        (*QUICK, "--workdir=/sys/kernel/plif_jax_run"),
        ("--workdir /sys/kernel/plif_jax_run cannot be written",),
    ),
    "incompatible workdir": Case(
        ("--config={saved_config}", "--config.model.channels=8", "--workdir={run}"),
        ("holds a checkpoint from an incompatible config", "model.channels: 4 -> 8"),
        unchanged="{run}",
    ),
    "workdir whose checkpoints are all damaged": Case(
        ("--config={saved_config}", "--workdir={damaged_run}"),
        ("No readable 'latest' checkpoint in {damaged_run}/checkpoints", "new --workdir"),
        unchanged="{damaged_run}/checkpoints",
    ),
    "unknown protocol": Case(
        (*QUICK, "--config.protocol=C", "--workdir={fresh}"), ("Unknown protocol 'C'",)
    ),
    "unknown pooling": Case(
        (*QUICK, "--config.model.pooling=min", "--workdir={fresh}"),
        ("Unknown model.pooling 'min'", "'max', 'avg'"),
    ),
    "unknown neuron": Case(
        (*QUICK, "--config.neuron.kind=izhikevich", "--workdir={fresh}"),
        ("Unknown neuron.kind 'izhikevich'",),
    ),
    "unknown surrogate": Case(
        (*QUICK, "--config.neuron.surrogate=relu", "--workdir={fresh}"),
        ("Unknown neuron.surrogate 'relu'",),
    ),
    "unknown split_by": Case(
        (*QUICK, "--config.data.split_by=count", "--workdir={fresh}"),
        ("Unknown data.split_by 'count'",),
    ),
    "num_epochs 0": Case(
        (*QUICK, "--config.num_epochs=0", "--workdir={fresh}"),
        ("config.num_epochs must be > 0, got 0",),
    ),
    "eval batch 0": Case(
        (*QUICK, "--config.eval_batch_size=0", "--workdir={fresh}"),
        ("config.eval_batch_size must be > 0, got 0",),
    ),
    "dropout 1": Case(
        (*QUICK, "--config.model.dropout=1.0", "--workdir={fresh}"),
        ("config.model.dropout must be in [0, 1), got 1.0",),
    ),
    "more devices than exist": Case(
        (*QUICK, "--config.num_devices=64", "--workdir={fresh}"),
        ("config.num_devices=64 but only 1 devices are visible",),
    ),
    "unknown flag": Case((*QUICK, "--wrokdir=x"), ("Unknown command line flag 'wrokdir'",)),
    "no --config": Case((), ("Flag --config must have a value other than None",)),
    "stray argument": Case((*QUICK, "quickstart"), ("Unexpected arguments: ['quickstart']",)),
    "prepare_data from a folder without datasets": Case(
        ("--dataset=mnist", "--from_dir={empty}", "--data_dir={fresh}"),
        ("{empty}",),
        script="prepare_data",
    ),
}


# One case per family that also runs in a fresh interpreter.
FRESH_PROCESS = {
    "config value": "unknown dataset",
    "command line": "override of a field that does not exist",
    "data": "missing event data",
    "workdir": "workdir that is a file",
    "checkpoint": "workdir whose checkpoints are all damaged",
    "prepare_data": "prepare_data from a folder without datasets",
}


def write_nmnist(root: str) -> None:
    """tonic's N-MNIST layout: placeholder archives and one tiny training .bin file per digit
    (tonic's file-count check is relaxed to 1 by the ``tonic_few_files`` fixture; no test files:
    the conversion fails before it needs them).

    The first training file in sorted order is cut to 7 bytes (not a multiple of the 5-byte
    event record), so the conversion meets it first.
    """
    base = os.path.join(root, "NMNIST")
    rng = np.random.default_rng(0)
    for digit in range(10):
        d = os.path.join(base, "Train", str(digit))
        os.makedirs(d, exist_ok=True)
        events = np.zeros((3, 5), np.uint8)
        events[:, 0] = rng.integers(0, 34, 3)  # x
        events[:, 1] = rng.integers(0, 34, 3)  # y
        events[:, 4] = np.arange(3)  # timestamp (low byte)
        with open(os.path.join(d, "00000.bin"), "wb") as f:
            f.write(events.tobytes())
    for archive in ("train.zip", "test.zip"):
        open(os.path.join(base, archive), "wb").close()
    os.truncate(os.path.join(base, "Train", "0", "00000.bin"), 7)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, baseline) -> dict[str, str]:
    """The files the cases name: ``{name: path}`` (``{fresh}`` is filled per case)."""
    base = tmp_path_factory.mktemp("errors_cli")
    paths = {"base": str(base), "empty": str(base / "empty"), "a_file": str(base / "a_file")}
    os.makedirs(paths["empty"])
    open(paths["a_file"], "w").close()
    paths["nmnist"] = str(base / "nmnist")
    write_nmnist(paths["nmnist"])
    paths["cache"] = str(base / "frames")
    src, _ = baseline
    paths["run"] = str(base / "run")
    shutil.copytree(src, paths["run"])
    paths["damaged_run"] = str(base / "damaged_run")
    shutil.copytree(src, paths["damaged_run"])
    for which in ("latest", "best"):
        for step in os.listdir(os.path.join(paths["damaged_run"], "checkpoints", which)):
            truncate_arrays(step_dir(paths["damaged_run"], which, int(step)))
    # Not finished (a finished run is left as it is, checkpoints unread): as if killed.
    os.remove(os.path.join(paths["damaged_run"], "summary.json"))
    paths["saved_config"] = str(base / "saved_config.py")
    with open(paths["saved_config"], "w") as f:
        f.write(SAVED_CONFIG.format(path=os.path.join(src, "checkpoints", "config.json")))
    return paths


def prepared(name: str, paths: dict[str, str], where: str):
    """The case's arguments, its paths, the watched path and its snapshot before the run."""
    case = CASES[name]
    fresh = os.path.join(paths["base"], "fresh", where, name.replace(" ", "_"))
    fill = {**paths, "fresh": fresh}
    args = [a.format(**fill) for a in case.args]
    watched = case.unchanged.format(**fill) if case.unchanged else None
    return args, fill, watched, snapshot(watched) if watched else None


def check(name: str, run: Run, fill: dict[str, str], watched: str | None, before) -> str:
    """The checks every case passes; returns the error line."""
    stderr = run.stderr
    assert run.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr[-3000:]
    for text in CASES[name].expect:
        assert text.format(**fill) in last, last
    assert sum(line.startswith("error: ") for line in stderr.splitlines()) == 1
    if watched:
        assert snapshot(watched) == before, f"{watched} changed"
    return last


@pytest.fixture(scope="module")
def fresh_process_results(paths, jax_cache_dir):
    """Runs the ``FRESH_PROCESS`` cases as subprocesses, two at a time."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **cache_env(jax_cache_dir))

    def run(name: str):
        args, fill, watched, before = prepared(name, paths, "subprocess")
        log = os.path.join(paths["base"], "logs", name.replace(" ", "_"))
        return run_subprocess(CASES[name].script, args, env, log), fill, watched, before

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, name) for name in FRESH_PROCESS.values()}
        return {name: f.result() for name, f in futures.items()}


def test_at_least_twenty_distinct_cases_and_one_fresh_process_per_family():
    assert len(CASES) >= 20
    assert len({c.args for c in CASES.values()}) == len(CASES)
    assert set(FRESH_PROCESS.values()) <= set(CASES)
    assert {CASES[name].script for name in FRESH_PROCESS.values()} == {"train", "prepare_data"}


@pytest.mark.usefixtures("fast", "tonic_few_files")
# ml_collections loads a config file with importlib's load_module (its own warning, not ours).
@pytest.mark.filterwarnings("ignore:the load_module\\(\\) method is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_a_user_error_is_one_line_exit_2_no_traceback(name, paths, monkeypatch, capsys):
    args, fill, watched, before = prepared(name, paths, "in_process")
    run = run_in_process(CASES[name].script, args, monkeypatch, capsys)
    print(f"{name}: {check(name, run, fill, watched, before)}")


@pytest.mark.e2e
@pytest.mark.parametrize("family", list(FRESH_PROCESS))
def test_in_a_fresh_process_too(family, fresh_process_results):
    name = FRESH_PROCESS[family]
    run, fill, watched, before = fresh_process_results[name]
    last = check(name, run, fill, watched, before)
    # CPU seconds do not depend on the machine's load.
    print(f"{name} ({run.cpu_seconds:.1f} s CPU, {run.wall_seconds:.1f} s wall): {last}")


@pytest.mark.e2e
def test_notebook_first_cell_shows_a_user_error_as_its_line(tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(ROOT, "experiments", "explore_tau.ipynb"), as_version=4)
    nb.cells = [next(c for c in nb.cells if c.cell_type == "code")]
    missing = tmp_path / "no_run_here"
    monkeypatch.setenv("PLIF_WORKDIR", str(missing))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        startup_timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    with pytest.raises(CellExecutionError):
        client.execute()
    (error,) = [o for o in nb.cells[0].outputs if o.output_type == "error"]
    assert error.ename == "NoCheckpointError"
    assert error.traceback == [
        f"error: workdir {missing} does not exist: train first (python -m experiments.train "
        "--config configs/quickstart.py) or point PLIF_WORKDIR at a training workdir."
    ]


@pytest.mark.e2e
def test_a_bug_keeps_its_traceback(tmp_path):
    # The same wrapper as the entry points: an exception that is not a UserError is a bug.
    script = tmp_path / "buggy.py"
    script.write_text(
        "from plif_jax import cli\n\n\n"
        "def main(argv):\n"
        "    raise KeyError('a bug in plif_jax')\n\n\n"
        "cli.run(main)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "KeyError: 'a bug in plif_jax'" in proc.stderr
    assert "error: " not in proc.stderr
