"""Damaged checkpoints: skipped with a warning, the newest readable one used, nothing deleted.

The store tests save a tiny pytree (no model) at steps 1, 2, 3 (best: 2) and damage files the way
a disk or copy fault does. The run tests copy the training tests' tiny 3-epoch run (latest 4, 8,
12) and resume or ``restore`` it after damaging a checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from plif_jax.errors import CheckpointError, IncompatibleRunError, NoCheckpointError
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import run as train
from tests.support.damage import array_files, snapshot, step_dir, truncate_arrays
from tests.support.runs import jsonl_without_timing, model_arrays, tiny_config


def tree(step: int) -> dict:
    return {"w": jnp.arange(300.0) + step, "bn": {"mean": jnp.full((4, 5), float(step))}}


@pytest.fixture
def store_dir(tmp_path) -> str:
    """``latest/{1,2,3}`` and ``best/2`` of :func:`tree`; meta ``{'epoch': step}``."""
    store = checkpoint_lib.CheckpointStore(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2, 3):
        store.save(step, tree(step), {"epoch": step}, best=step == 2)
    store.close()
    return str(tmp_path)


def delete_arrays(directory: str) -> None:
    for path in array_files(directory):
        os.remove(path)


def garble(path: str) -> None:
    with open(path, "w") as f:
        f.write('{"tree_metadata": {"(')


def half_written(directory: str) -> None:
    # What an interrupted copy (cp -r, rsync) leaves: the directory, not all of its content.
    shutil.rmtree(os.path.join(directory, "state"))


DAMAGE = {
    "truncated array files": truncate_arrays,
    "missing array files": delete_arrays,
    "bad array metadata": lambda d: garble(os.path.join(d, "state", "_METADATA")),
    "bad meta record": lambda d: garble(os.path.join(d, "meta", "metadata")),
    "half-written directory": half_written,
}


def restore(workdir: str, which: str = "latest", **kwargs):
    store = checkpoint_lib.CheckpointStore(workdir, keep=3, async_save=False)
    try:
        return store.restore(tree(0), which, **kwargs)
    finally:
        store.close()


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_is_skipped_with_a_warning_and_the_previous_one_used(
    kind, store_dir, caplog
):
    damaged = step_dir(store_dir, "latest", 3)
    DAMAGE[kind](damaged)
    before = snapshot(damaged)
    with caplog.at_level(logging.WARNING):
        state, meta, step = restore(store_dir)
    assert (step, meta) == (2, {"epoch": 2})
    np.testing.assert_array_equal(state["w"], tree(2)["w"])
    np.testing.assert_array_equal(state["bn"]["mean"], tree(2)["bn"]["mean"])
    log = warnings_of(caplog)
    assert "Checkpoint latest/3 cannot be read (" in log
    assert "Using checkpoint latest/2: skipped damaged latest/3" in log
    assert snapshot(damaged) == before  # a read-only restore leaves the damaged one as it was


def test_when_every_latest_is_damaged_the_best_one_is_used(store_dir, caplog):
    for step in (1, 2, 3):
        truncate_arrays(step_dir(store_dir, "latest", step))
    with caplog.at_level(logging.WARNING):
        state, meta, step = restore(store_dir)
    assert (step, meta) == (2, {"epoch": 2})
    np.testing.assert_array_equal(state["w"], tree(2)["w"])
    # Newest first: latest/3, then latest/2 before the copy of the same step in best/.
    assert "skipped damaged latest/3, latest/2" in warnings_of(caplog)


def test_every_checkpoint_damaged_is_an_error_naming_the_directory_and_the_choices(store_dir):
    for which, step in (("latest", 1), ("latest", 2), ("latest", 3), ("best", 2)):
        truncate_arrays(step_dir(store_dir, which, step))
    before = snapshot(store_dir)
    with pytest.raises(CheckpointError) as err:
        restore(store_dir, set_aside_damaged=True)
    msg = str(err.value)
    directory = os.path.join(store_dir, "checkpoints")
    assert msg.startswith(f"No readable 'latest' checkpoint in {directory} (latest/3: ")
    assert "and 1 more" in msg and "nothing was changed" in msg
    assert "a new --workdir" in msg and "move the damaged step directories out of" in msg
    assert snapshot(store_dir) == before  # nothing moved, deleted or written


def test_best_falls_back_only_to_the_same_step_in_latest(store_dir, caplog):
    truncate_arrays(step_dir(store_dir, "best", 2))
    with caplog.at_level(logging.WARNING):
        state, meta, step = restore(store_dir, "best")
    assert (step, meta) == (2, {"epoch": 2})
    assert "Using checkpoint latest/2: skipped damaged best/2" in warnings_of(caplog)
    # latest/3 and latest/1 are readable but are not the best by the protocol: an error.
    truncate_arrays(step_dir(store_dir, "latest", 2))
    with pytest.raises(CheckpointError, match=r"No readable 'best' checkpoint .*which='latest'"):
        restore(store_dir, "best")


def test_resume_sets_the_skipped_checkpoint_aside_and_deletes_nothing(store_dir, caplog):
    damaged = step_dir(store_dir, "latest", 3)
    truncate_arrays(damaged)
    before = snapshot(damaged)
    with caplog.at_level(logging.WARNING):
        _, _, step = restore(store_dir, set_aside_damaged=True)
    assert step == 2
    moved = os.path.join(store_dir, "checkpoints", "damaged", "latest-3")
    assert not os.path.exists(damaged) and snapshot(moved) == before
    with open(moved + ".reason.txt") as f:
        reason = f.read().strip()
    assert f"Checkpoint latest/3 cannot be read ({reason})" in warnings_of(caplog)
    assert "checkpoints/latest/3/state/" in reason  # TensorStore's error, naming the file
    assert "(moved to damaged/latest-3; nothing deleted)" in warnings_of(caplog)
    # The resumed run saves step 3 again: no collision, and it is read back next time.
    store = checkpoint_lib.CheckpointStore(store_dir, keep=3, async_save=False)
    store.save(3, tree(30), {"epoch": 3})
    store.close()
    state, _, step = restore(store_dir)
    assert step == 3
    np.testing.assert_array_equal(state["w"], tree(30)["w"])


def test_another_train_state_structure_is_an_error_not_damage(store_dir):
    before = snapshot(store_dir)
    other = {**tree(0), "extra": jnp.zeros(3)}
    store = checkpoint_lib.CheckpointStore(store_dir, keep=3, async_save=False)
    with pytest.raises(IncompatibleRunError, match=r"latest/3 .* another train state .*extra"):
        store.restore(other, set_aside_damaged=True)
    store.close()
    assert snapshot(store_dir) == before  # not taken for damage: nothing set aside


def test_no_checkpoint_is_a_no_checkpoint_error(tmp_path):
    with pytest.raises(NoCheckpointError, match=r"No 'latest' checkpoint in .*checkpoints"):
        restore(str(tmp_path))


@pytest.mark.usefixtures("fast")
def test_resume_after_a_damaged_latest_ends_with_the_uninterrupted_run(baseline, tmp_path, caplog):
    src, ref_summary = baseline
    workdir = str(tmp_path / "copy")
    shutil.copytree(src, workdir)
    truncate_arrays(step_dir(workdir, "latest", 12))  # the finished run's last checkpoint
    with caplog.at_level(logging.WARNING):
        summary = train.train_and_evaluate(tiny_config(), workdir)
    assert "Checkpoint latest/12 cannot be read" in warnings_of(caplog)
    # Resumed from latest/8 and redid epoch 2: the same parameters, metrics and summary.
    assert summary["global_step"] == ref_summary["global_step"] == 12
    ref, got = model_arrays(src), model_arrays(workdir)
    assert ref.keys() == got.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert jsonl_without_timing(workdir) == jsonl_without_timing(src)
    assert summary["best_test_accuracy"] == ref_summary["best_test_accuracy"]
    assert summary["tau"] == ref_summary["tau"]
    moved = os.path.join(workdir, "checkpoints", "damaged", "latest-12")
    assert snapshot(moved).keys() == snapshot(step_dir(src, "latest", 12)).keys()


@pytest.mark.usefixtures("fast")
def test_restore_skips_a_damaged_best_and_changes_nothing(baseline, tmp_path, caplog):
    src, _ = baseline
    workdir = str(tmp_path / "copy")
    shutil.copytree(src, workdir)
    (best_step,) = os.listdir(os.path.join(workdir, "checkpoints", "best"))
    truncate_arrays(step_dir(workdir, "best", int(best_step)))
    before = snapshot(workdir)
    with caplog.at_level(logging.WARNING):
        model, config = checkpoint_lib.restore(workdir, which="best")
    assert f"skipped damaged best/{best_step}" in warnings_of(caplog)
    assert config.dataset == "digits_static"
    ref = model_arrays(src, "best")
    got = model_arrays(workdir, "best")
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert snapshot(workdir) == before


def test_asyncio_reports_of_abandoned_orbax_reads_are_dropped_and_others_kept(caplog):
    import asyncio
    import gc

    from plif_jax.training import checkpoint_files

    checkpoint_files.quiet_abandoned_orbax_reads()

    async def async_deserialize():  # the name of Orbax's array read coroutine
        raise ValueError("OUT_OF_RANGE: sibling read of a damaged checkpoint")

    async def unrelated():
        raise ValueError("a real lost error")

    def abandon(coro_fn):
        loop = asyncio.new_event_loop()
        task = loop.create_task(coro_fn())
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        del task
        gc.collect()

    def abandon_future(error):  # a TensorStore read's future, never awaited
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(error)
        loop.close()
        del future
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        abandon(async_deserialize)
        abandon(unrelated)
        # TensorStore's errors end with the spec they read (seen in CI's all-damaged case).
        abandon_future(ValueError("OUT_OF_RANGE: Error reading ... [tensorstore_spec='{}']"))
        abandon_future(ValueError("a real lost error of a future"))
    never = [r for r in caplog.records if "exception was never retrieved" in str(r.msg)]
    assert len(never) == 2
    assert "unrelated" in str(never[0].msg) and "a real lost error of a future" in str(
        never[1].exc_info[1]
    )


def test_tensorstore_callbacks_on_orbaxs_closed_loop_are_dropped_and_other_errors_kept(capsys):
    # TensorStore reports a failing Python callback with PyErr_Print (sys.excepthook).
    import sys

    from plif_jax.training import checkpoint_files

    checkpoint_files.quiet_abandoned_orbax_reads()

    def call_soon_threadsafe():  # the frame asyncio's closed loop raises from
        raise RuntimeError("Event loop is closed")

    for fn in (call_soon_threadsafe, lambda: 1 / 0):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the hook as PyErr_Print would
            sys.excepthook(type(e), e, e.__traceback__)
    err = capsys.readouterr().err
    assert "Event loop is closed" not in err
    assert "ZeroDivisionError" in err and "Traceback" in err
