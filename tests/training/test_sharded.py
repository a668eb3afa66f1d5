"""Batch-parallel steps (plif_jax.training.sharded): on 4 CPU devices the compiled train step
keeps the batch split (its only collectives are all-reduces of parameter-sized values), and the
result equals the one-device step on the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from plif_jax.runtime import parallel
from plif_jax.training import sharded
from tests.support.runs import session_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Paper-shaped small nets (the paper's layers and blocks, 4 channels, small inputs): the DVS128
# Gesture net (event frames [T, B, ...]: dropout, per-step BatchNorm, max pooling), and the
# Fashion-MNIST net (static images: random affine augmentation, the encoder once, dropout) as
# k = 2 members in the vmap layout.
SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from configs import dvsgesture, fashion_mnist
    from plif_jax import models
    from plif_jax.data import static
    from plif_jax.data.datasets import events_preprocess
    from plif_jax.runtime import parallel
    from plif_jax.training import member_steps, steps

    KINDS = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")

    def collectives(text):
        out = {k: [] for k in KINDS}
        for line in text.splitlines():
            m = re.search(r"= (\\S+) (" + "|".join(KINDS) + r")(?:-start)?\\(", line)
            if m:
                out[m.group(2)].append(m.group(1))
        return out

    def net(cfg_module, T, size, channels, classes, static_net):
        config = cfg_module.get_config()
        config.data.T = T
        shape = (size, size, channels) if static_net else (T, 2, size, size)
        info = type("Info", (), dict(
            model_name=config.dataset, input_layout="NHWC" if static_net else "TBCHW",
            sample_shape=shape, num_classes=classes, time_steps=T))
        name, options = models.spec_from_config(config, info)
        options.update(channels=4, hidden=16 if static_net else None)
        return config, name, options

    def run(which, n_devices, k, layout):
        rng = np.random.default_rng(0)
        B = 8
        if which == "dvs":
            config, name, options = net(dvsgesture, 4, 32, 2, 11, False)
            pre, classes = events_preprocess, 11
            x = rng.integers(0, 3, (B, 4, 2, 32, 32)).astype(np.float32)
        else:
            config, name, options = net(fashion_mnist, 2, 28, 1, 10, True)
            pre, classes = static.make_preprocess("fashion_mnist"), 10
            x = rng.integers(0, 255, (B, 28, 28, 1)).astype(np.uint8)
        mesh = parallel.create_mesh(n_devices)
        model = models.build_model(name, options, seed=0)
        state = steps.init_train_state(model, config)
        common = dict(tx=steps.make_optimizer(config), preprocess=pre, num_classes=classes,
                      time_steps=int(config.data.T), mesh=mesh)
        if k == 1:
            fns, lr = steps.jit_steps(model, seed=0, **common), np.float32(0.05)
        else:
            fns = member_steps.jit_member_steps(model, k=k, data_seeds=[0, 1],
                                                per_member_data=False, layout=layout, **common)
            state, lr = member_steps.stack([state] * k), np.full(k, 0.05, np.float32)
        state = parallel.put_replicated(state, mesh)
        batch = parallel.put_batch({"x": x, "y": rng.integers(0, classes, B).astype(np.int32),
                                    "mask": np.ones(B, np.float32)}, mesh)
        args = (state, batch, lr, jnp.int32(0), jnp.int32(0))
        # Each program compiled once: its text is checked and the same executable runs.
        train = fns.train.lower(*args).compile()
        evaluate = fns.eval.lower(state.params, state.rest, batch).compile()
        train_hlo, eval_hlo = collectives(train.as_text()), collectives(evaluate.as_text())
        state, m0 = train(*args)
        state, m1 = train(state, batch, lr, jnp.int32(0), jnp.int32(1))
        ev = evaluate(state.params, state.rest, batch)
        leaves = [jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
                  else a for a in jax.tree.leaves((state.params, state.rest, m0, m1, ev))]
        return {"train": train_hlo, "eval": eval_hlo,
                "values": [np.asarray(a, np.float64).ravel().tolist() for a in leaves]}

    out = {"devices": jax.device_count()}
    for which, k, layout in (("dvs", 1, "loop"), ("static", 2, "vmap")):
        out[which] = {n: run(which, n, k, layout) for n in (1, 4)}
        # NVIDIA GPUs' program: BatchNorm + PLIF as one op (plif_jax.ops.bn_lif), its kernels in
        # Pallas's interpreter (one device: the interpreter's slicing does not type-check inside
        # shard_map; tests/core/test_bn_lif.py splits the batch with a vmap axis instead).
        from plif_jax.ops import platform
        with platform.formulation("gpu"):
            out[which + "_gpu"] = {1: run(which, 1, k, layout)}
    print(json.dumps(out))
    """
)


# Parameters after two Adam steps at lr 0.05 (|w| ~ 0.02-0.3): Adam divides each gradient by its
# own root mean square, so a gradient summed in another order (over 4 devices, or in the kernels'
# blocks) moves a parameter whose gradient is near 0 by up to ~2e-5 (measured on an AMD EPYC,
# 2026-12-03: 2.1e-5 for 4 devices, 1.5e-5 for the kernels, first conv kernel); a spike that
# flips moves them by ~1e-3 (other seeds).
ATOL = 1e-4


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        XLA_FLAGS=session_xla_flags("--xla_force_host_platform_device_count=4"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["dvs", "static"])
def test_compiled_steps_keep_the_batch_split(four_devices, which):
    assert four_devices["devices"] == 4
    one, four = four_devices[which]["1"], four_devices[which]["4"]
    assert all(not v for v in one["train"].values()), one["train"]  # one device: no collective
    train = four["train"]
    # Only all-reduces (BatchNorm statistics, loss, gradients, metrics): no activation is
    # gathered, exchanged or re-sharded, and XLA needs no involuntary rematerialisation.
    assert train["all-reduce"], train
    assert not any(train[k] for k in ("all-gather", "all-to-all", "collective-permute")), train
    # Eval: the sums are all-reduced; the only gathers are the per-sample outputs (pred, silent,
    # y, mask: [B] or [k, B], B = 8) that the host reads replicated.
    gathered = four["eval"]["all-gather"]
    sizes = [
        np.prod([int(d) for d in t[t.index("[") + 1 : t.index("]")].split(",")]) for t in gathered
    ]
    assert len(gathered) <= 4 and all(size <= 2 * 8 for size in sizes), gathered
    assert not any(four["eval"][k] for k in ("all-to-all", "collective-permute")), four["eval"]


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["dvs", "static"])
def test_four_devices_compute_the_one_device_step(four_devices, which):
    one, four = four_devices[which]["1"]["values"], four_devices[which]["4"]["values"]
    assert len(one) == len(four)
    for i, (a, b) in enumerate(zip(one, four, strict=True)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=ATOL, err_msg=f"leaf {i}")


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["dvs", "static"])
def test_the_gpu_kernels_compute_the_cpu_step(four_devices, which):
    # Two train steps, then eval: the kernels' program against XLA:CPU's (k = 2 members in the
    # vmap layout for the static net: the kernels under vmap).
    cpu, gpu = four_devices[which]["1"]["values"], four_devices[which + "_gpu"]["1"]["values"]
    assert len(cpu) == len(gpu)
    for i, (a, b) in enumerate(zip(cpu, gpu, strict=True)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=ATOL, err_msg=f"leaf {i}")


def test_one_device_keeps_the_plain_program():
    mesh = parallel.create_mesh(1)
    assert sharded.for_mesh(mesh, object()) is None


def test_input_batch_axis():
    events = type("Net", (), {"is_static": False})()
    assert sharded.input_batch_axis(events) == 1
    assert sharded.input_batch_axis(type("Net", (), {"is_static": True})()) == 0
    assert sharded.Shard(jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)), 1).x_spec == (
        jax.sharding.PartitionSpec(None, "data")
    )
