"""A run's faults (plif_jax.training.faults): a full disk at each kind of write, a diverging update,
a network that stops spiking, and a rerun of a finished run. In-process, on the tiny run of
tests/support/runs.py, with the writes patched to fail as a full disk makes them fail."""

from __future__ import annotations

import errno
import logging
import os
import shutil

import numpy as np
import pytest

from plif_jax.errors import DiskError, NonFiniteError
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import checkpoint_files
from plif_jax.training import epochs as epochs_lib
from plif_jax.training import metrics as metrics_lib
from plif_jax.training import run as train
from plif_jax.training.progress import Accumulator
from tests.support.damage import snapshot
from tests.support.runs import STEPS, jsonl_without_timing, model_arrays, tiny_config

pytestmark = pytest.mark.usefixtures("fast")


def _latest_steps(workdir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest")), key=int)


def test_full_disk_at_a_checkpoint_keeps_the_last_and_the_rerun_resumes_exactly(
    baseline, tmp_path, monkeypatch
):
    ref_dir, ref_summary = baseline
    workdir = str(tmp_path / "run")
    real_save = checkpoint_lib.CheckpointStore.save

    def save(self, step, tree, meta, *, best=False):
        if step == 2 * STEPS:  # Orbax's report of a write that found the disk full
            tmp = f"{self.directory}/latest/{step}.orbax-checkpoint-tmp/state/d/0a1b"
            raise ValueError(
                f'RESOURCE_EXHAUSTED: Error writing local file "{tmp}": Failed to write 2651 '
                "bytes to file 16: No space left on device [os_error_code='28']"
            )
        real_save(self, step, tree, meta, best=best)

    monkeypatch.setattr(checkpoint_lib.CheckpointStore, "save", save)
    with pytest.raises(DiskError) as err:
        train.train_and_evaluate(tiny_config(), workdir)
    msg = str(err.value)
    assert msg.startswith(f"cannot write {workdir}/checkpoints/latest/8.orbax-checkpoint-tmp/")
    assert "no space left on the device (" in msg and " free there)" in msg
    assert f"The last good checkpoint (step {STEPS}) in {workdir}/checkpoints is kept" in msg
    assert "run the same command again to resume from it" in msg
    assert _latest_steps(workdir) == [str(STEPS)]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    monkeypatch.setattr(checkpoint_lib.CheckpointStore, "save", real_save)
    summary = train.train_and_evaluate(tiny_config(), workdir)  # space freed: the rerun
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert jsonl_without_timing(workdir) == jsonl_without_timing(ref_dir)
    assert summary["best_test_accuracy"] == ref_summary["best_test_accuracy"]


def test_full_disk_writing_metrics_names_the_event_file(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    calls = []
    real = metrics_lib.EventFile.add_scalars

    def add_scalars(self, step, scalars):
        calls.append(step)
        if step > STEPS:  # after the first checkpoint; a write on an open file names no path
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, step, scalars)

    monkeypatch.setattr(metrics_lib.EventFile, "add_scalars", add_scalars)
    with pytest.raises(DiskError) as err:
        train.train_and_evaluate(tiny_config(), workdir)
    events = [f for f in os.listdir(workdir) if "tfevents" in f]
    assert str(err.value).startswith(f"cannot write {os.path.join(workdir, events[0])}: no space")
    assert f"The last good checkpoint (step {STEPS})" in str(err.value)
    assert _latest_steps(workdir) == [str(STEPS)]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_disk_fault_writing_the_summary_leaves_no_partial_file(
    baseline, tmp_path, monkeypatch, code
):
    src, _ = baseline
    workdir = str(tmp_path / "run")
    shutil.copytree(src, workdir)
    os.remove(os.path.join(workdir, "summary.json"))  # as if killed before writing it
    real_dump = checkpoint_files.json.dump

    def dump(obj, f, **kwargs):
        if "summary.json" in getattr(f, "name", ""):
            f.write('{"dataset": ')
            raise OSError(code, os.strerror(code))
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(checkpoint_files.json, "dump", dump)
    with pytest.raises(DiskError) as err:
        train.train_and_evaluate(tiny_config(), workdir)
    assert str(err.value).startswith(f"cannot write {workdir}/summary.json: ")
    assert not [f for f in os.listdir(workdir) if f.startswith("summary.json")]
    assert f"The last good checkpoint (step {3 * STEPS})" in str(err.value)


def test_non_finite_update_stops_before_it_is_saved(tmp_path, monkeypatch):
    # One step per epoch: epoch 1's only step overflows the parameters (loss and gradients of
    # that step are finite); without the check its end-of-epoch save would store inf.
    real_lr = train.learning_rate
    monkeypatch.setattr(
        epochs_lib,
        "learning_rate",
        lambda e, lr0, t: float("inf") if e == 1 else real_lr(e, lr0, t),
    )
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteError) as err:
        train.train_and_evaluate(tiny_config(steps_per_epoch=1), workdir)
    msg = str(err.value)
    assert "at epoch 1, step 0 of the epoch (global step 1)" in msg
    assert "Stopped before saving anything non-finite; the last good checkpoint (step 1) in " in msg
    assert "Lower the learning rate (--config.optim.lr; this epoch ran at inf)" in msg
    assert isinstance(err.value, FloatingPointError)
    assert _latest_steps(workdir) == ["1"]
    assert all(np.isfinite(a).all() for a in model_arrays(workdir).values())


def test_a_network_that_stops_spiking_warns_once_naming_the_layer(tmp_path, monkeypatch, caplog):
    real = Accumulator.mean_rates
    monkeypatch.setattr(Accumulator, "mean_rates", lambda self: dict.fromkeys(real(self), 0.0))
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
    warnings = [r.getMessage() for r in caplog.records if "stopped spiking" in r.getMessage()]
    assert len(warnings) == 1, warnings  # three silent epochs, one warning
    assert "no layer fired during epoch 0, from the first spiking layer, sn0, on" in warnings[0]
    assert "lower --config.optim.lr" in warnings[0]


def test_rerun_of_a_finished_run_changes_nothing(baseline, tmp_path, caplog):
    src, summary = baseline
    workdir = str(tmp_path / "run")
    shutil.copytree(src, workdir)
    before = snapshot(workdir)
    with caplog.at_level(logging.WARNING):
        again = train.train_and_evaluate(tiny_config(), workdir)
    assert snapshot(workdir) == before
    assert again == {**summary, "workdir": summary["workdir"]}
    assert any("holds a finished run (3 epochs, step 12): nothing was changed" in r.getMessage()
               for r in caplog.records)  # fmt: skip
