"""Why BatchNorm + PLIF is not one accelerator op: the H200 plan of one DVS128 Gesture layer.

    # the GPU plan's venv (docs/explanation/performance.md, "GPU and TPU plan"): jax[cuda12]
    JAX_PLATFORMS=cpu /work/venv-gpu/bin/python -m benchmarks.studies.fused_bn_plif.measure

Compiles, for a compile-only H200 (:mod:`benchmarks.gpu_targets`), the gradient of one first
layer of the DVS128 Gesture net (the conv output ``[T, 16, 128, 128, 128]`` as input, per-step
BatchNorm, PLIF, 2x2 max pooling, a weighted sum as loss) in two formulations and prints XLA's
temporaries, kernel launches and bytes (:mod:`benchmarks.hlo_census`):

* ``today``: the accelerator formulation of :mod:`plif_jax.ops.batch_norm` and
  :mod:`plif_jax.ops.lif_loop` (H kept by the neuron, the conv output by BatchNorm);
* ``fused``: one op whose only residual is the conv output; its backward recomputes BatchNorm's
  output and H and runs the reverse recurrence twice, first for BatchNorm's per-step sums, then
  for dx, so that neither H nor dL/dH would have to be written.

A plan, not a run. The figures and the decision are in this folder's README.md.
"""

from __future__ import annotations

import functools
import os

T, B, SIZE, C = 20, 16, 128, 128
AXES, KEEP = (1, 2, 3), (T, 1, 1, 1, C)
V_TH, EPS = 1.0, 1e-5


def _formulations():
    import jax
    import jax.numpy as jnp

    from plif_jax import surrogate
    from plif_jax.ops import batch_norm, lif_loop, lif_scan, xla_cpu

    reset = functools.partial(lif_loop._reset, v_threshold=V_TH, v_reset=0.0)

    def tail(spikes, g):
        return jnp.sum(xla_cpu.max_pool2x2(spikes.reshape(T * B, SIZE, SIZE, C)) * g)

    def today(x, scale, bias, w, g):
        y, _, _ = batch_norm.normalize(x, scale, bias, axes=AXES, keep=KEEP, epsilon=EPS)
        v0 = jnp.zeros(x.shape[1:], x.dtype)
        k, alpha = jax.nn.sigmoid(w), jnp.float32(2.0)
        spikes, _ = lif_loop.lif_loop(y, v0, k, alpha, V_TH, 0.0, True, surrogate.ATAN, 1, False)
        return tail(spikes, g)

    def affine(x, mean, rstd, scale, bias):
        return (x - mean.reshape(KEEP)) * (rstd.reshape(KEEP) * scale) + bias

    def h_of(x, mean, rstd, scale, bias, decay):
        v0 = jnp.zeros(x.shape[1:], x.dtype)
        step = functools.partial(lif_loop._charge, decay=decay, v_reset=0.0)
        return lif_scan.forward_h(affine(x, mean, rstd, scale, bias), v0, step, reset)

    @jax.custom_vjp
    def bn_plif(x, scale, bias, decay):
        return fwd(x, scale, bias, decay)[0]

    def fwd(x, scale, bias, decay):
        mean, var = batch_norm.stats_one_pass(x, AXES, KEEP, None)
        rstd = jax.lax.rsqrt(var + EPS)
        h = h_of(x, mean, rstd, scale, bias, decay)
        return (h >= V_TH).astype(x.dtype), (x, mean, rstd, scale, bias, decay)

    def recurrence(res, gs, sums):
        x, mean, rstd, scale, bias, decay = res
        h = h_of(*res)
        v_prev = jnp.concatenate([jnp.zeros_like(h[:1]), reset(h[:-1])])
        xhat = (x - mean.reshape(KEEP)) * rstd.reshape(KEEP)
        n = B * SIZE * SIZE

        def step(carry, inputs):
            gv, acc_k = carry
            gs_t, h_t, vp_t, xh_t, t = inputs
            z = h_t - V_TH
            gh = gs_t * surrogate.ATAN.partials(z, jnp.float32(2.0))[0]
            gh = gh + jnp.where(z >= 0, 0.0, gv)
            gx = gh * decay
            if sums is None:  # first pass: BatchNorm's per-step sums only
                out = (jnp.sum(gx, axis=(0, 1, 2)), jnp.sum(gx * xh_t, axis=(0, 1, 2)))
            else:  # second pass: dx
                out = rstd[t] * scale * (gx - sums[0][t] / n - xh_t * sums[1][t] / n)
            return ((1 - decay) * gh, acc_k + gh * (h_t - vp_t)), out

        init = (jnp.zeros_like(h[0]), jnp.zeros_like(h[0]))
        inputs = (gs, h, v_prev, xhat, jnp.arange(T))
        (_, acc_k), ys = jax.lax.scan(step, init, inputs, reverse=True, unroll=True)
        return ys, acc_k

    def bwd(res, gs):
        (s1, s2), acc_k = recurrence(res, gs, None)
        res2, gs2 = jax.lax.optimization_barrier((res, gs))  # two passes, not CSE'd into one
        dx, _ = recurrence(res2, gs2, (s1, s2))
        return dx, jnp.sum(s2, 0), jnp.sum(s1, 0), jnp.sum(acc_k) / res[-1]

    bn_plif.defvjp(fwd, bwd)

    def fused(x, scale, bias, w, g):
        return tail(bn_plif(x, scale, bias, jax.nn.sigmoid(w)), g)

    return {"today": today, "fused": fused}


def main() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CUDA plugin's driver check otherwise
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from benchmarks import gpu_targets, hlo_census
    from plif_jax.ops import platform

    mesh = Mesh(np.asarray(gpu_targets.devices(gpu_targets.TARGETS["h200"], 1)), ("d",))
    shard = NamedSharding(mesh, PartitionSpec())
    shapes = [(T, B, SIZE, SIZE, C), (C,), (C,), (), (T * B, SIZE // 2, SIZE // 2, C)]
    args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=shard) for s in shapes]
    for name, f in _formulations().items():
        with platform.formulation("accelerator"):
            grad = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
            compiled = grad.trace(*args).lower().compile()
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
        c = hlo_census.census(compiled.as_text())
        print(f"{name}: temporaries {temp:.2f} GiB, {c.launches:.0f} launches, "
              f"{c.bytes / 1e9:.1f} GB per step")  # fmt: skip


if __name__ == "__main__":
    main()
