"""Checkpoints: restore for inference, kill -9 during a save, leftover temporary directories."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import data as data_lib
from plif_jax import models
from plif_jax.runtime import parallel
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import metrics as metrics_lib
from plif_jax.training import run as train
from tests.support.runs import (
    EPOCHS,
    STEPS,
    SUBPROCESS_PRELUDE,
    model_arrays,
    subprocess_env,
    tiny_config,
)

# The tiny 3-epoch run (tests/conftest.py's baseline) and the shared compilation cache.
pytestmark = pytest.mark.usefixtures("fast")


def test_nested_round_trip_keeps_prng_keys_and_structure():
    tree = {
        "w": jnp.arange(6.0).reshape(2, 3),
        "layers": [jnp.ones(2), (jnp.int32(3), jax.random.key(7))],
    }
    nested = checkpoint_lib.to_nested(tree)
    assert nested["layers"]["1"]["1"].dtype == jnp.uint32  # key data, storable
    back = checkpoint_lib.from_nested(nested, tree)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    np.testing.assert_array_equal(
        jax.random.key_data(back["layers"][1][1]), jax.random.key_data(tree["layers"][1][1])
    )
    np.testing.assert_array_equal(back["w"], tree["w"])


def test_restore_best_rebuilds_the_model_with_its_test_accuracy(baseline):
    workdir, summary = baseline
    model, config = checkpoint_lib.restore(workdir, which="best")
    assert config.dataset == "digits_static" and config.model.channels == 4
    assert isinstance(model, nnx.Module)
    # The restored model reproduces the best epoch's logged test accuracy exactly.
    bundle = data_lib.get_datasets(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    eval_fn = jax.jit(
        functools.partial(
            train.eval_step,
            graphdef=graphdef,
            preprocess=bundle.preprocess,
            num_classes=10,
            time_steps=config.data.T,
        )
    )
    mesh = parallel.create_mesh(1)
    state = train.TrainState(params, rest, None)
    result = train.evaluate(eval_fn, state, bundle.test.batches(), mesh, predictions=True)
    assert result["accuracy"] == summary["best_test_accuracy"]
    # Per-sample predictions of the unpadded samples, in order (what a confusion matrix needs).
    assert len(result["pred"]) == len(result["y"]) == result["count"] == len(bundle.test)
    np.testing.assert_array_equal(result["y"], bundle.test.labels)
    assert np.mean(result["pred"] == result["y"]) == pytest.approx(result["accuracy"])
    assert result["silent"].dtype == bool
    latest, _ = checkpoint_lib.restore(workdir, which="latest")
    assert models.layer_taus(latest, learnable_only=True) == pytest.approx(summary["tau"])


def test_restore_of_a_directory_without_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a plif_jax run directory"):
        checkpoint_lib.restore(str(tmp_path), which="best")


def test_leftover_temporary_checkpoint_is_ignored_and_removed(baseline, tmp_path):
    src, _ = baseline
    workdir = str(tmp_path / "copy")
    shutil.copytree(src, workdir)
    # What a kill -9 in the middle of writing step 16 leaves behind: an unfinished tmp dir.
    tmp = os.path.join(workdir, "checkpoints", "latest", "16.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(tmp, "state"))
    with open(os.path.join(tmp, "state", "_METADATA"), "w") as f:
        f.write('{"truncated": ')
    summary = train.train_and_evaluate(tiny_config(num_epochs=EPOCHS + 1), workdir)
    assert summary["global_step"] == (EPOCHS + 1) * STEPS  # resumed from 12, not from 16
    records = metrics_lib.read_metrics(workdir)
    assert [r["epoch"] for r in records if "test/accuracy" in r] == [0, 1, 2, 3]
    latest = os.listdir(os.path.join(workdir, "checkpoints", "latest"))
    assert sorted(latest) == ["12", "16", "8"]  # the tmp dir is gone, 16 is a real one


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from plif_jax.training import checkpoint
    from plif_jax.training import run as train
    from tests.support.runs import tiny_config

    original = checkpoint.CheckpointStore.save
    calls = []

    def save_then_die(self, step, tree, meta, *, best=False):
        original(self, step, tree, meta, best=best)  # async: returns while writing
        calls.append(step)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.CheckpointStore.save = save_then_die
    train.train_and_evaluate(tiny_config(), sys.argv[1])
    """
)


@pytest.mark.e2e
def test_kill_9_during_save_resumes_from_last_complete_checkpoint(
    baseline, tmp_path, jax_cache_dir, digits_npz
):
    ref_dir, ref_summary = baseline
    workdir = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_PRELUDE + KILL_DURING_SAVE, workdir],
        env=subprocess_env(jax_cache_dir, digits_npz),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    latest_dir = os.path.join(workdir, "checkpoints", "latest")
    assert "4" in os.listdir(latest_dir)  # epoch 0's checkpoint completed before the kill
    summary = train.train_and_evaluate(tiny_config(), workdir)
    assert summary["status"] == "completed"
    assert not [d for d in os.listdir(latest_dir) if "tmp" in d]
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert summary["best_test_accuracy"] == ref_summary["best_test_accuracy"]
