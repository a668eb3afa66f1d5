"""Data parallelism: 4 forced CPU devices train like 1 device; bf16 compute keeps f32 params."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import models
from plif_jax.runtime import parallel
from plif_jax.training import metrics as metrics_lib
from plif_jax.training import run as train
from tests.support.runs import SUBPROCESS_PRELUDE, model_arrays, subprocess_env, tiny_config

pytestmark = pytest.mark.usefixtures("fast")

FOUR_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from plif_jax.runtime import parallel
    from plif_jax.training import run as train
    from tests.support.runs import tiny_config

    summary = train.train_and_evaluate(tiny_config(), sys.argv[1])
    mesh = parallel.create_mesh(0)
    batch = parallel.put_batch({"x": np.zeros((16, 3), np.float32)}, mesh)
    print(json.dumps({
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "shard_shape": list(batch["x"].sharding.shard_shape((16, 3))),
        "compilations": summary["compilations"],
    }))
    """
)


@pytest.mark.e2e
def test_four_cpu_devices_match_one_device(baseline, tmp_path, jax_cache_dir, digits_npz):
    ref_dir, _ = baseline
    workdir = str(tmp_path / "four")
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_PRELUDE + FOUR_DEVICES, workdir],
        env=subprocess_env(
            jax_cache_dir, digits_npz, XLA_FLAGS="--xla_force_host_platform_device_count=4"
        ),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["devices"] == 4 and info["mesh"] == {"data": 4}
    assert info["shard_shape"] == [4, 3]  # the batch is split, 4 samples per device
    assert info["compilations"] == {"train_step": 1, "eval_step": 1}
    with open(os.path.join(workdir, "run_info.txt")) as f:
        assert "mesh: {'data': 4}" in f.read()

    # Same batches, same init, BatchNorm over the global batch: equal up to float reordering.
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    assert sorted(ref) == sorted(got)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
    ref_rec = metrics_lib.read_metrics(ref_dir)
    got_rec = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in got_rec] == [r["step"] for r in ref_rec]
    for a, b in zip(got_rec, ref_rec, strict=True):
        for key in ("train/loss", "train/epoch_loss", "test/loss"):
            if key in b:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
        if "test/accuracy" in b:
            assert abs(a["test/accuracy"] - b["test/accuracy"]) <= 0.002  # <= 2 of 1000 digits


def test_bfloat16_compute_keeps_float32_params_and_state():
    config = tiny_config(dtype="bfloat16")
    info = type(
        "Info",
        (),
        dict(
            model_name="mnist",
            input_layout="NHWC",
            sample_shape=(28, 28, 1),
            num_classes=10,
            time_steps=None,
        ),
    )
    name, options = models.spec_from_config(config, info)
    assert options["dtype"] == "bfloat16"
    model = models.build_model(name, options, seed=0)
    state = train.init_train_state(model, config)
    assert {p.dtype for p in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    model.train()
    step = functools.partial(
        train.train_step,
        graphdef=nnx.graphdef(model),
        tx=train.make_optimizer(config),
        preprocess=lambda x, train, rng: x.astype(jnp.float32) / 255.0,
        base_key=jax.random.key(0),
        num_classes=10,
        time_steps=2,
    )
    batch = {
        "x": jax.ShapeDtypeStruct((16, 28, 28, 1), jnp.uint8),
        "y": jax.ShapeDtypeStruct((16,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((16,), jnp.float32),
    }
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    index = jax.ShapeDtypeStruct((), jnp.int32)
    # Abstract evaluation traces the whole bf16 step without compiling it.
    new_state, metrics = jax.eval_shape(step, state, batch, scalar, index, index)
    assert {p.dtype for p in jax.tree.leaves(new_state.params)} == {jnp.dtype("float32")}
    assert metrics["loss"].dtype == jnp.float32
    stats = jax.tree.leaves(nnx.filter_state(new_state.rest, nnx.BatchStat))
    assert {s.dtype for s in stats} == {jnp.dtype("float32")}


def test_replicated_and_batch_shardings_on_one_device():
    mesh = parallel.create_mesh(1)
    batch = parallel.put_batch({"x": np.arange(8.0).reshape(4, 2)}, mesh)
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    tree = parallel.put_replicated({"w": np.ones(3)}, mesh)
    assert tree["w"].sharding.spec == jax.sharding.PartitionSpec()
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(8.0).reshape(4, 2))
