"""One writer per workdir (plif_jax.training.workdir_lock): a second run is refused, a dead one's
lock never blocks, and the run that holds it ends exactly as an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from plif_jax.training import epochs as epochs_lib
from plif_jax.training import run as train
from plif_jax.training import workdir_lock
from tests.support.damage import snapshot
from tests.support.runs import ROOT, jsonl_without_timing, model_arrays, tiny_config

pytestmark = pytest.mark.usefixtures("fast")


def test_second_lock_is_refused_naming_pid_and_host(tmp_path):
    with workdir_lock.WorkdirLock(str(tmp_path)):
        with pytest.raises(workdir_lock.WorkdirBusyError) as err:
            workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    msg = str(err.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
    assert f"--workdir {tmp_path} is in use by another training run" in msg
    assert "choose another --workdir" in msg
    # Released: the file is emptied and the lock can be taken again.
    assert (tmp_path / workdir_lock.LOCK_NAME).read_text() == ""
    workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()


@pytest.mark.e2e
@pytest.mark.e2e  # a process killed with the lock held
def test_lock_of_a_killed_process_does_not_block(tmp_path):
    # A process takes the lock, then dies by SIGKILL: its record stays in the file, the lock not.
    code = (
        "import os, signal, sys\n"
        "from plif_jax.training.workdir_lock import WorkdirLock\n"
        "WorkdirLock(sys.argv[1]).acquire()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / ".lock").read_text().startswith("pid ")  # the dead holder's record
    lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()
    lock.release()


def test_run_on_a_locked_workdir_is_refused_and_writes_nothing(baseline, tmp_path):
    src, _ = baseline
    workdir = tmp_path / "run"
    shutil.copytree(src, workdir)
    with workdir_lock.WorkdirLock(str(workdir)):
        before = snapshot(str(workdir))
        with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()}"):
            train.train_and_evaluate(tiny_config(), str(workdir))
        assert snapshot(str(workdir)) == before


def test_two_launches_one_trains_the_other_is_refused(baseline, tmp_path, monkeypatch):
    # The second launch starts while the first is in its second epoch (same workdir).
    ref_dir, ref_summary = baseline
    workdir = str(tmp_path / "run")
    real_lr = epochs_lib.Epochs.learning_rates
    refused = []

    def learning_rate_and_second_launch(self, epoch):
        if epoch == 1 and not refused:
            with pytest.raises(workdir_lock.WorkdirBusyError) as err:
                train.train_and_evaluate(tiny_config(), workdir)
            refused.append(str(err.value))
        return real_lr(self, epoch)

    monkeypatch.setattr(epochs_lib.Epochs, "learning_rates", learning_rate_and_second_launch)
    summary = train.train_and_evaluate(tiny_config(), workdir)
    assert refused and f"pid {os.getpid()} on host {socket.gethostname()}" in refused[0]
    assert summary["status"] == "completed"
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert jsonl_without_timing(workdir) == jsonl_without_timing(ref_dir)
    assert summary["best_test_accuracy"] == ref_summary["best_test_accuracy"]
    with open(os.path.join(workdir, ".lock")) as f:
        assert f.read() == ""  # released
