"""k seeds in one compiled step (:mod:`plif_jax.training.member_steps`) against k sequential runs.

Seed-samples per second: ``k * batch / step time`` of the k-member step, beside ``batch /
step time`` of the ordinary one-member train step (k sequential runs reach exactly that rate,
whatever k). ``ratio_vs_sequential = k * t_1 / t_k`` (> 1: the k-member step is faster than k
runs one after the other). Both layouts are timed: ``vmap`` (one batched program: k members'
convolutions become one feature-grouped convolution) and ``loop`` (k copies of the step in one
jitted function).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks import timing, workloads
from plif_jax import models
from plif_jax.runtime import parallel
from plif_jax.training import member_steps, steps

# The quick start's network (configs/quickstart.py): N-MNIST's at 32 channels, hidden 256, T 8.
NETWORKS = {
    "quickstart": ("nmnist", 8, 16, dict(channels=32, number_layer=2, hidden=256)),
    # One paper network at reduced batch (N-MNIST at the paper's width, T 10).
    "nmnist": ("nmnist", 10, 4, {}),
}
QUICK = {"quickstart": ("nmnist", 4, 4, dict(channels=4, number_layer=2, hidden=16))}


def _models(name: str, T: int, options: dict, k: int) -> list[nnx.Module]:
    opts = workloads._jax_model_options(name, T, options)
    return [
        models.create_model(name, rngs=nnx.Rngs(params=s, dropout=s + 1), **opts) for s in range(k)
    ]


def _batch(name: str, T: int, batch: int, options: dict) -> tuple[dict, int]:
    data = workloads.network_inputs(name, T, batch, options)
    b = {
        "x": jnp.asarray(data["x"]),
        "y": jnp.asarray(data["y"]),
        "mask": jnp.ones((batch,), jnp.float32),
    }
    return b, int(data["num_classes"])


def _time(step_fn, state, batch, lr, repeats: int) -> dict[str, float]:
    args = (state, batch, lr, jnp.int32(0), jnp.int32(0))
    t, compiled, _ = timing.time_jax(
        step_fn, args, repeats=repeats, rebind=lambda out, a: (out[0], *a[1:])
    )
    del compiled
    return t


def seeds_workload(
    net: str, *, ks: list[int], layouts: list[str], repeats: int, quick: bool = False
) -> dict[str, Any]:
    """Times the one-member step and the k-member steps of ``net`` (a key of NETWORKS)."""
    name, T, batch, options = (QUICK.get(net) if quick else None) or NETWORKS[net]
    mesh = parallel.create_mesh(1)
    tx = optax.scale_by_adam()
    data, num_classes = _batch(name, T, batch, options)
    common = dict(
        tx=tx,
        preprocess=workloads._identity_preprocess,
        num_classes=num_classes,
        time_steps=T,
        mesh=mesh,
    )
    (single,) = _models(name, T, options, 1)
    one = steps.jit_steps(single, seed=0, **common)
    _, p, r = nnx.split(single, nnx.Param, ...)
    t1 = _time(one.train, steps.TrainState(p, r, tx.init(p)), data, jnp.float32(1e-3), repeats)
    row: dict[str, Any] = dict(
        workload=net, network=name, T=T, batch=batch, options=options, single=t1, k={}
    )
    sequential = batch / t1["median_s"]
    row["sequential_seed_samples_per_s"] = sequential
    for k in ks:
        built = _models(name, T, options, k)
        entry: dict[str, Any] = {}
        for layout in layouts:
            states = [steps.TrainState(*nnx.split(m, nnx.Param, ...)[1:], None) for m in built]
            states = [s._replace(opt_state=tx.init(s.params)) for s in states]
            fn = member_steps.jit_member_steps(
                built[0],
                k=k,
                data_seeds=[0],
                per_member_data=False,
                layout=layout,
                **common,
            )
            lr = jnp.full((k,), 1e-3, jnp.float32)
            t = _time(fn.train, member_steps.stack(states), data, lr, repeats)
            rate = k * batch / t["median_s"]
            entry[layout] = dict(
                timing=t,
                seed_samples_per_s=rate,
                ratio_vs_sequential=rate / sequential,
            )
        entry["best_layout"] = max(layouts, key=lambda lay: entry[lay]["seed_samples_per_s"])
        row["k"][str(k)] = entry
        jax.clear_caches()
    return row


def format_rows(row: dict[str, Any]) -> list[str]:
    """The table's lines: k, layout, step time, seed-samples/s, ratio vs sequential."""
    lines = [
        f"[seeds] {row['workload']} ({row['network']}, T {row['T']}, batch {row['batch']}): "
        f"one-member step {row['single']['median_s'] * 1e3:.1f} ms = "
        f"{row['sequential_seed_samples_per_s']:.1f} seed-samples/s sequential"
    ]
    for k, entry in row["k"].items():
        for layout, r in entry.items():
            if layout == "best_layout":
                continue
            lines.append(
                f"[seeds]   k={k:>2} {layout:<4}: {r['timing']['median_s'] * 1e3:8.1f} ms/step, "
                f"{r['seed_samples_per_s']:7.1f} seed-samples/s, "
                f"{r['ratio_vs_sequential']:.2f}x sequential"
            )
    return lines


def conv_probe(*, k: int = 2, repeats: int = 5, quick: bool = False) -> dict[str, Any]:
    """One 3x3 convolution's forward + backward, for k members: k calls against one vmap.

    The quick-start's second convolution (``[T*B, 17, 17, 32]`` NHWC, 32 -> 32 channels, T 8,
    batch 16): what the ``loop`` layout runs k times, against ``jax.vmap`` over the members'
    inputs and kernels, which XLA receives as one ``feature_group_count = k`` convolution.
    """
    rows, size, c = (8, 6, 4) if quick else (128, 17, 32)
    rng = jax.random.key(0)
    xs = jax.random.normal(rng, (k, rows, size, size, c), jnp.float32)
    ws = 0.1 * jax.random.normal(jax.random.fold_in(rng, 1), (k, 3, 3, c, c), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def fwd_bwd(x, w):
        y, pull = jax.vjp(conv, x, w)
        return pull(jnp.tanh(y))  # some cotangent that depends on the output

    loop = jax.jit(lambda xs, ws: [fwd_bwd(xs[i], ws[i]) for i in range(k)])
    vmapped = jax.jit(jax.vmap(fwd_bwd))
    out: dict[str, Any] = dict(k=k, shape=[rows, size, size, c], kernel=[3, 3, c, c])
    for name, fn in (("loop", loop), ("vmap", vmapped)):
        t, _, _ = timing.time_jax(fn, (xs, ws), repeats=repeats)
        hlo = fn.lower(xs, ws).as_text()
        groups = sorted({int(g) for g in _feature_groups(hlo)})
        out[name] = dict(timing=t, feature_group_counts=groups)
    out["vmap_over_loop"] = out["vmap"]["timing"]["median_s"] / out["loop"]["timing"]["median_s"]
    return out


def _feature_groups(stablehlo: str) -> list[str]:
    import re

    found = re.findall(r"feature_group_count = (\d+)", stablehlo)
    return found or ["1"] * stablehlo.count("stablehlo.convolution")


def format_probe(p: dict[str, Any]) -> str:
    lo, vm = p["loop"], p["vmap"]
    return (
        f"[seeds] conv probe, k={p['k']} x conv3x3 {p['shape']} fwd+bwd: loop "
        f"{lo['timing']['median_s'] * 1e3:.2f} ms (groups {lo['feature_group_counts']}), vmap "
        f"{vm['timing']['median_s'] * 1e3:.2f} ms (groups {vm['feature_group_counts']}): "
        f"vmap/loop {p['vmap_over_loop']:.2f}x"
    )
