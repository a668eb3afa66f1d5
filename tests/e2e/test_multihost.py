"""Multi-host for real: 2 processes on 127.0.0.1 joined by ``jax.distributed`` train like 1.

Each process runs the real CLI (``python -m experiments.train --config.distributed=True``) with
2 CPU devices of its own (a global mesh of 4), its coordinator on a free loopback port given by
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, and gloo collectives.
The run is the tiny ``digits_static`` run of ``tests/support/runs.py`` (3 epochs x 4 steps); its
single-process, single-device result is the session's ``baseline`` (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from plif_jax.data.loader import BatchSource
from plif_jax.training import metrics as metrics_lib
from tests.support.runs import (
    EPOCHS,
    ROOT,
    STEPS,
    SUBPROCESS_PRELUDE,
    jsonl_without_timing,
    model_arrays,
    subprocess_env,
    tiny_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("fast")]

PROCESSES = 2
DEVICES_PER_PROCESS = 2
TIMEOUT_S = 300  # per launch; a process that hangs (a lost peer) is killed, the test fails

# The training subprocess: the real CLI, with three test hooks. The digits come from the
# session's .npz (tests.support.runs' prelude), every sample read is logged with the reading
# process's index, and PLIF_TEST_STOP_AFTER stops both processes after the same number of
# steps through train_and_evaluate's preemption path (checkpoint, then exit).
WORKER = """
import functools, json, os, runpy, sys
import jax
import plif_jax.data as _data
from plif_jax.training import run as _train

_real_get_datasets = _data.get_datasets

def _recording_get_datasets(config):
    bundle = _real_get_datasets(config)
    for src in (bundle.train, bundle.val, bundle.test):
        if src is None:
            continue
        def fetch(idx, _fetch=src.fetch, _name=src.name):
            log = os.path.join(os.environ["PLIF_TEST_READS"], f"{jax.process_index()}.jsonl")
            with open(log, "a") as f:
                f.write(json.dumps([_name, [int(i) for i in idx]]) + "\\n")
            return _fetch(idx)
        src.fetch = fetch
    return bundle

_data.get_datasets = _recording_get_datasets
if os.environ.get("PLIF_TEST_SIGTERM_AT"):  # a SIGTERM to this process alone, after that step
    import signal
    from plif_jax.training.preemption import StopRequest as _Stop

    _real_count = _Stop.count_step

    def _count_and_sigterm(self):
        if self.steps + 1 == int(os.environ["PLIF_TEST_SIGTERM_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)
        _real_count(self)

    _Stop.count_step = _count_and_sigterm
if os.environ.get("PLIF_TEST_STOP_AFTER"):
    _train.train_and_evaluate = functools.partial(
        _train.train_and_evaluate, stop_after_steps=int(os.environ["PLIF_TEST_STOP_AFTER"])
    )
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


def cli_overrides(config) -> list[str]:
    """``--config.a.b=value`` for every field of ``config`` that differs from configs/mnist.py."""
    from configs import mnist

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    base = dict(flat(json.loads(mnist.get_config().to_json())))
    return [
        f"--config.{k}={v}"
        for k, v in flat(json.loads(config.to_json()))
        if base.get(k, object()) != v
    ]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    workdir, reads, jax_cache_dir, digits_npz, stop_after=None, sigterm_at=None
) -> list[str]:
    """Runs the CLI in 2 processes; returns their logs. Fails on a non-zero exit or a hang.

    ``sigterm_at``: process 1 alone gets a SIGTERM at that step (process 0 none).
    """
    os.makedirs(reads, exist_ok=True)
    address = f"127.0.0.1:{free_loopback_port()}"
    args = [
        sys.executable,
        "-c",
        SUBPROCESS_PRELUDE + WORKER,
        "--config=configs/mnist.py",
        *cli_overrides(tiny_config(distributed=True)),
        f"--workdir={workdir}",
        "--noxla_cpu_ynn",  # XLA's default kernels, as in the in-process baseline
    ]
    procs = []
    for pid in range(PROCESSES):
        env = subprocess_env(
            jax_cache_dir,
            digits_npz,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES=str(PROCESSES),
            JAX_PROCESS_ID=str(pid),
            PLIF_TEST_READS=reads,
            PLIF_TEST_STOP_AFTER="" if stop_after is None else str(stop_after),
            PLIF_TEST_SIGTERM_AT="" if sigterm_at is None or pid != 1 else str(sigterm_at),
        )
        env.pop("http_proxy", None), env.pop("https_proxy", None)  # loopback only
        # No persistent compilation cache: a process served from it reaches the first
        # collective long before a peer that compiles, and gloo gives up after 30 s.
        for name in [k for k in env if k.startswith("JAX_") and "CACHE" in k]:
            del env[name]
        procs.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for pid, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {pid} exited {p.returncode}:\n{log[-4000:]}"
    return logs


def read_log(reads: str, pid: int) -> list[tuple[str, list[int]]]:
    with open(os.path.join(reads, f"{pid}.jsonl")) as f:
        return [tuple(json.loads(line)) for line in f]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, jax_cache_dir, digits_npz):
    """An uninterrupted 2-process run, and one preempted mid-epoch 1 (a SIGTERM to one process)
    and resumed (2 + 2 processes)."""
    root = tmp_path_factory.mktemp("multihost")
    out = {}
    t0 = time.monotonic()
    launch(str(root / "full"), str(root / "reads_full"), jax_cache_dir, digits_npz)
    out["full_seconds"] = time.monotonic() - t0
    t0 = time.monotonic()
    # Preempted mid-epoch 1: a SIGTERM reaches process 1 alone after step 5; both processes
    # agree at the next step boundary where they read their metrics (log_every_steps 2): step 6.
    out["stop_logs"] = launch(
        str(root / "resumed"), str(root / "reads_1"), jax_cache_dir, digits_npz,
        sigterm_at=STEPS + 1,
    )  # fmt: skip
    with open(root / "resumed" / "summary.json") as f:
        out["first_half"] = json.load(f)
    out["first_half_steps"] = sorted(os.listdir(root / "resumed" / "checkpoints" / "latest"))
    launch(str(root / "resumed"), str(root / "reads_2"), jax_cache_dir, digits_npz)
    out["resume_seconds"] = time.monotonic() - t0
    out["root"] = root
    return out


def test_two_processes_train_like_one_device(baseline, two_process_runs):
    ref_dir, ref_summary = baseline
    workdir = str(two_process_runs["root"] / "full")
    with open(os.path.join(workdir, "run_info.txt")) as f:
        info = f.read()
    assert "processes: 2, devices: 4" in info and "mesh: {'data': 4}" in info
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(tiny_config(distributed=True).to_json())

    # Same init, same global batches; BatchNorm statistics and gradients are reduced over the
    # 4 devices instead of computed on 1: equal up to float reassociation. Tolerance: rtol 1e-4,
    # atol 1e-5 per array (test_parallel's 4-device bound); measured on this project's 2-core
    # machine: at most 4.0e-5 of max(|value|, 1e-3) (the figure is printed).
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    assert sorted(got) == sorted(ref) and len(ref) > 10
    worst = 0.0
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
        scale = np.maximum(np.abs(ref[key]), 1e-3)
        worst = max(worst, float(np.max(np.abs(got[key] - ref[key]) / scale)))
    print(f"2 processes vs 1 device: largest relative parameter difference {worst:.2e}")
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "completed" and summary["global_step"] == EPOCHS * STEPS
    assert abs(summary["best_test_accuracy"] - ref_summary["best_test_accuracy"]) <= 0.002
    np.testing.assert_allclose(
        list(summary["tau"].values()), list(ref_summary["tau"].values()), rtol=1e-5
    )
    print(
        f"2-process runs: uninterrupted {two_process_runs['full_seconds']:.1f} s, "
        f"stopped + resumed {two_process_runs['resume_seconds']:.1f} s (wall, this machine)"
    )


def test_checkpoints_and_logs_are_written_once(baseline, two_process_runs):
    ref_dir, _ = baseline
    workdir = str(two_process_runs["root"] / "full")
    ckpt = os.path.join(workdir, "checkpoints")
    # One directory per save, no leftover temporary directory of either process.
    assert sorted(os.listdir(os.path.join(ckpt, "latest")), key=int) == ["4", "8", "12"]
    assert sorted(os.listdir(os.path.join(ckpt, "best"))) == sorted(
        os.listdir(os.path.join(ref_dir, "checkpoints", "best"))
    )
    for step in ("4", "8", "12"):
        with open(os.path.join(ckpt, "latest", step, "meta", "metadata")) as f:
            meta = json.load(f)
        assert meta["global_step"] == int(step) and meta["epoch"] == int(step) // STEPS
    # Process 1 writes no logs: one event file, each metrics record once, as one process.
    assert len([f for f in os.listdir(workdir) if "tfevents" in f]) == 1
    got = jsonl_without_timing(workdir)
    want = jsonl_without_timing(ref_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    with open(os.path.join(workdir, "run_info.txt")) as f:
        assert f.read().count("processes: 2") == 1


def test_each_process_reads_only_its_own_rows_of_every_batch(two_process_runs):
    reads = str(two_process_runs["root"] / "reads_full")
    train_src = BatchSource(
        name="digits_static/train",
        labels=np.zeros(4000),
        fetch=None,
        batch_size=16,
        train=True,
        seed=int(tiny_config().seed),
    )
    for pid in range(PROCESSES):
        lo, hi = pid * 8, (pid + 1) * 8  # 16 rows over 2 processes
        parts = {
            tuple(train_src.batch_indices(e)[b, lo:hi]) for e in range(EPOCHS) for b in range(10)
        }
        log = read_log(reads, pid)
        train_reads = [tuple(idx) for name, idx in log if name.endswith("/train")]
        test_reads = [idx for name, idx in log if name.endswith("/test")]
        # Every read is this process's half of a batch; every step's half was read.
        assert train_reads and all(r in parts for r in train_reads)
        needed = {
            tuple(train_src.batch_indices(e)[b, lo:hi]) for e in range(EPOCHS) for b in range(STEPS)
        }
        assert needed <= set(train_reads)
        # Evaluation: 1,000 test digits in batches of 100, 50 rows each, in order.
        want = [list(range(b * 100 + pid * 50, b * 100 + pid * 50 + 50)) for b in range(10)]
        assert test_reads == want * EPOCHS


def test_two_process_resume_continues_exactly(two_process_runs):
    root = two_process_runs["root"]
    first = two_process_runs["first_half"]
    assert first["status"] == "interrupted" and first["global_step"] == STEPS + 2
    # One SIGTERM, to process 1 only: both stopped at step 6, one checkpoint written there.
    assert two_process_runs["first_half_steps"] == [str(STEPS), str(STEPS + 2)]
    log0, log1 = two_process_runs["stop_logs"]
    assert "Received signal 15" in log1 and "Received signal 15" not in log0
    assert "Another process asked to stop: checkpointing at this step." in log0
    full, resumed = model_arrays(str(root / "full")), model_arrays(str(root / "resumed"))
    assert sorted(full) == sorted(resumed)
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    assert jsonl_without_timing(str(root / "resumed")) == (jsonl_without_timing(str(root / "full")))
    with open(root / "resumed" / "summary.json") as f:
        summary = json.load(f)
    with open(root / "full" / "summary.json") as f:
        want = json.load(f)
    for key in ("status", "global_step", "best_test_accuracy", "best_test_epoch", "tau"):
        assert summary[key] == want[key], key
    # The resumed processes read no batch of the 6 steps done before the stop.
    train_src = BatchSource(
        name="t", labels=np.zeros(4000), fetch=None, batch_size=16, train=True, seed=2020
    )
    done = {tuple(train_src.batch_indices(0)[b, :8]) for b in range(STEPS)}
    done |= {tuple(train_src.batch_indices(1)[b, :8]) for b in range(2)}
    again = [tuple(i) for n, i in read_log(str(root / "reads_2"), 0) if n.endswith("/train")]
    assert again and not done & set(again)
    assert metrics_lib.read_metrics(root / "resumed")
