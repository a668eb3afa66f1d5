"""The Pallas (Triton) kernels of :mod:`plif_jax.ops.bn_lif`, and the op they make: BatchNorm's
one-pass statistics, then a forward kernel (BatchNorm's affine map and the LIF recurrence,
spikes as int8), a backward kernel (the reverse recurrence on recomputed ``H``, with BatchNorm's
per-step sums of ``dL/dY`` and ``dL/dY * xhat``) and an input-gradient kernel (BatchNorm's
``dL/dx``, in place). Imported only where a step can be lowered for an NVIDIA GPU (or a test
runs the kernels in Pallas's interpreter): Pallas costs every process ~0.2 s to import.
``s`` is the op's :class:`plif_jax.ops.bn_lif.Settings` (with ``rows`` set).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from plif_jax.ops import batch_norm, lif_loop

# Blocks one backward instance runs in turn (summing BatchNorm's per-step sums over them; a
# power of two).
_BLOCKS_PER_INSTANCE = 64
_COMPILER = pl_triton.CompilerParams(num_warps=4, num_stages=1)


def _membranes(x_at, mean_ref, coef_ref, bias, k, s, steps: int) -> list:
    """``H[0..T-1]`` of one block (a Python list: registers), BatchNorm's output as the input;
    ``x_at(t)``: the block's conv output at step ``t``."""
    dtype = jnp.dtype(s.out_dtype)
    v_reset = jnp.asarray(s.v_reset, dtype)
    v = None
    hs = []
    for t in range(steps):
        x = x_at(t).astype(mean_ref.dtype)  # BatchNorm in its statistics' dtype
        y = ((x - mean_ref[t : t + 1, :]) * coef_ref[t : t + 1, :] + bias).astype(dtype)
        h = lif_loop._charge(jnp.full(x.shape, s.v_reset, dtype) if v is None else v, y, k,
                             s.v_reset)  # fmt: skip
        hs.append(h)
        v = jnp.where(h - s.v_threshold >= 0, v_reset, h)
    return hs


def _partials(surrogate, z, alpha):
    """The surrogate's partials; below float32 computed in float32 and rounded (Triton has no
    bfloat16 division: XLA computes a bfloat16 division in float32 too)."""
    if jnp.finfo(z.dtype).bits >= 32:
        return surrogate.partials(z, alpha)
    d_x, d_alpha = surrogate.partials(z.astype(jnp.float32), alpha.astype(jnp.float32))
    return d_x.astype(z.dtype), d_alpha.astype(z.dtype)


def _forward_kernel(x_ref, mean_ref, coef_ref, bias_ref, k_ref, s_ref, *, s):
    steps = x_ref.shape[0]
    hs = _membranes(lambda t: x_ref[t], mean_ref, coef_ref, bias_ref[...], k_ref[...], s, steps)
    for t, h in enumerate(hs):
        s_ref[t] = (h - s.v_threshold >= 0).astype(s_ref.dtype)


def _backward_kernel(
    x_ref, mean_ref, rstd_ref, coef_ref, bias_ref, k_ref, alpha_ref, gs_ref, gy_ref,
    acc_k_ref, acc_alpha_ref, sum_gy_ref, sum_gy_xhat_ref, *, s, rows: int,
):  # fmt: skip
    """:func:`plif_jax.ops.lif_loop.lif_loop`'s reverse recurrence on recomputed ``H``, block
    by block of ``rows`` rows: writes ``dL/dY[t] = k gH[t]``, and this instance's per-channel
    sums of the dL/dk and dL/dalpha terms and, per step, of ``dL/dY`` and ``dL/dY * xhat``
    (BatchNorm's backward's sums: no pass over ``dL/dY`` and ``x`` after the kernel)."""
    steps, c = x_ref.shape[0], x_ref.shape[-1]
    k, alpha, bias = k_ref[...], alpha_ref[...], bias_ref[...]
    acc = sum_gy_ref.dtype  # float32, or float64 for a float64 x

    def block(j, carry):
        acc_k, acc_alpha, sums_gy, sums_gy_xhat = carry
        at = pl.ds(pl.multiple_of(j * rows, rows), rows)
        hs = _membranes(lambda t: x_ref[t, at, :], mean_ref, coef_ref, bias, k, s, steps)
        zero = jnp.zeros(hs[0].shape, hs[0].dtype)
        sums_gy, sums_gy_xhat = list(sums_gy), list(sums_gy_xhat)
        gh_next = None
        for t in reversed(range(steps)):
            h = hs[t]
            v_prev = (
                jnp.full(h.shape, s.v_reset, h.dtype)
                if t == 0
                else lif_loop._reset(hs[t - 1], s.v_threshold, s.v_reset)
            )
            gv = zero if gh_next is None else (1.0 - k) * gh_next  # no cotangent for V[T-1]
            gs = gs_ref[t, at, :].astype(h.dtype)
            z = h - s.v_threshold
            if not s.detach_reset:
                gs = gs + gv * (s.v_reset - h)
            d_x, d_alpha = _partials(s.surrogate, z, alpha)
            gh = gs * d_x + jnp.where(z >= 0, zero, gv)
            acc_k = acc_k + (gh * (h - v_prev)).astype(acc)
            acc_alpha = acc_alpha + (gs * d_alpha).astype(acc)
            gy = (gh * k).astype(gy_ref.dtype)
            gy_ref[t, at, :] = gy
            gy = gy.astype(acc)
            x = x_ref[t, at, :].astype(acc)
            xhat = (x - mean_ref[t : t + 1, :]) * rstd_ref[t : t + 1, :]
            sums_gy[t] = sums_gy[t] + jnp.sum(gy, axis=0, keepdims=True)
            sums_gy_xhat[t] = sums_gy_xhat[t] + jnp.sum(gy * xhat, axis=0, keepdims=True)
            gh_next = gh
        return acc_k, acc_alpha, tuple(sums_gy), tuple(sums_gy_xhat)

    per_step = tuple(jnp.zeros((1, c), acc) for _ in range(steps))
    init = (jnp.zeros((rows, c), acc), jnp.zeros((rows, c), acc), per_step, per_step)
    acc_k, acc_alpha, sums_gy, sums_gy_xhat = jax.lax.fori_loop(
        0, x_ref.shape[1] // rows, block, init
    )
    acc_k_ref[...] = jnp.sum(acc_k, axis=0, keepdims=True)
    acc_alpha_ref[...] = jnp.sum(acc_alpha, axis=0, keepdims=True)
    for t in range(steps):
        sum_gy_ref[0, t : t + 1, :] = sums_gy[t]
        sum_gy_xhat_ref[0, t : t + 1, :] = sums_gy_xhat[t]


def _input_gradient_kernel(x_ref, gy_ref, *refs):
    """:func:`plif_jax.ops.batch_norm.input_gradient` on one block, written over ``dL/dY``."""
    *term_refs, gx_ref = refs
    for t in range(x_ref.shape[0]):
        terms = [r[t : t + 1, :] for r in term_refs]
        x, gy = (v.astype(terms[0].dtype) for v in (x_ref[t], gy_ref[t]))
        gx_ref[t] = batch_norm.input_gradient(x, gy, *terms).astype(gx_ref.dtype)


def _out(shape, dtype, like):
    """A kernel output's type: varying over the mesh axes ``like`` varies over (inside
    ``jax.shard_map``, whose type check asks for it; nothing elsewhere)."""
    mat = getattr(jax.typeof(like), "mat", None)
    if mat is None:
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)


def _specs(steps: int, rows: int, channels: int):
    def whole(shape):
        return pl.BlockSpec(shape, lambda i: (0,) * len(shape))

    return whole, pl.BlockSpec((steps, rows, channels), lambda i: (0, i, 0))


def _per_step(v, keep, steps):
    """A statistic shaped ``keep`` as ``[T, C]`` (``'folded'`` statistics repeated)."""
    return jnp.broadcast_to(v.reshape(keep[0], keep[-1]), (steps, keep[-1]))


def _affine(xs, scale, mean, rstd, s):
    steps, c = xs.shape[0], xs.shape[-1]
    mean_tc = _per_step(mean, s.keep, steps)
    coef_tc = _per_step(rstd.reshape(s.keep) * scale, s.keep, steps)
    return xs.reshape(steps, -1, c), mean_tc, coef_tc


def _row(v, c, dtype):
    return jnp.broadcast_to(jnp.asarray(v, dtype).reshape(1, -1), (1, c))


def _stats(xs, s):
    x = xs.astype(batch_norm.stat_dtype(xs))
    mean, var = batch_norm.stats_one_pass(x, s.axes, s.keep, s.axis_name)
    return mean, var, jax.lax.rsqrt(var + s.epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def fused(xs, scale, bias, decay, alpha, s):
    """``(spikes, mean, var)`` of :func:`plif_jax.ops.bn_lif.bn_lif` from the kernels."""
    return _fused_fwd(xs, scale, bias, decay, alpha, s)[0]


def _fused_fwd(xs, scale, bias, decay, alpha, s):
    mean, var, rstd = _stats(xs, s)
    x3, mean_tc, coef_tc = _affine(xs, scale, mean, rstd, s)
    steps, rows_total, c = x3.shape
    rows = s.rows
    whole, block = _specs(steps, rows, c)
    spikes = pl.pallas_call(
        functools.partial(_forward_kernel, s=s),
        out_shape=_out(x3.shape, jnp.int8, x3),
        grid=(rows_total // rows,),
        in_specs=[block, whole((steps, c)), whole((steps, c)), whole((1, c)), whole((1, c))],
        out_specs=block,
        compiler_params=_COMPILER,
        interpret=s.interpret,
    )(x3, mean_tc, coef_tc, _row(bias, c, mean.dtype), _row(decay, c, s.out_dtype))
    out = (spikes.astype(s.out_dtype).reshape(xs.shape), mean, var)
    return out, (xs, scale, bias, mean, rstd, decay, alpha)


def _fused_bwd(s, res, cotangents):
    xs, scale, bias, mean, rstd, decay, alpha = res
    g_spikes, g_mean, g_var = cotangents
    x3, mean_tc, coef_tc = _affine(xs, scale, mean, rstd, s)
    rstd_tc = _per_step(rstd, s.keep, x3.shape[0])
    steps, rows_total, c = x3.shape
    rows = s.rows
    blocks = rows_total // rows
    inner = math.gcd(blocks, _BLOCKS_PER_INSTANCE)  # a power of two dividing the blocks
    grid = blocks // inner
    whole, block = _specs(steps, rows * inner, c)
    per_instance = pl.BlockSpec((1, c), lambda i: (i, 0))
    per_instance_step = pl.BlockSpec((1, steps, c), lambda i: (i, 0, 0))
    gs = g_spikes.astype(s.out_dtype).reshape(x3.shape)
    acc = batch_norm.stat_dtype(xs)  # the sums' dtype
    gy, acc_k, acc_alpha, sum_gy, sum_gy_xhat = pl.pallas_call(
        functools.partial(_backward_kernel, s=s, rows=rows),
        out_shape=(
            _out(gs.shape, gs.dtype, x3),
            _out((grid, c), acc, x3),
            _out((grid, c), acc, x3),
            _out((grid, steps, c), acc, x3),
            _out((grid, steps, c), acc, x3),
        ),
        grid=(grid,),
        in_specs=[block] + [whole((steps, c))] * 3 + [whole((1, c))] * 3 + [block],
        out_specs=(block, per_instance, per_instance, per_instance_step, per_instance_step),
        input_output_aliases={7: 0},  # dL/dY over dL/dS
        compiler_params=_COMPILER,
        interpret=s.interpret,
    )(
        x3, mean_tc, rstd_tc, coef_tc, _row(bias, c, acc), _row(decay, c, s.out_dtype),
        _row(alpha, c, s.out_dtype), gs,
    )  # fmt: skip
    # BatchNorm's sums over its axes: per step [T, C], or [C] for folded statistics.
    over = (0,) if mean.ndim == 2 else (0, 1)
    sums = tuple(jnp.sum(v, axis=over) for v in (sum_gy, sum_gy_xhat))
    _, fold_block = _specs(steps, rows, c)

    def input_gradient(x, gy, *terms):  # over dL/dY (a fusion with sums would not write there)
        return pl.pallas_call(
            _input_gradient_kernel,
            out_shape=_out(x3.shape, x3.dtype, x3),
            grid=(blocks,),
            in_specs=[fold_block, fold_block] + [whole((steps, c))] * len(terms),
            out_specs=fold_block,
            input_output_aliases={1: 0} if gy.dtype == x3.dtype else {},
            compiler_params=_COMPILER,
            interpret=s.interpret,
        )(x3, gy.reshape(x3.shape), *(_per_step(v, s.keep, steps) for v in terms)).reshape(x.shape)

    gx, g_scale, g_bias = batch_norm.textbook_backward(
        s.axes, s.keep, s.axis_name, (xs, scale, mean, rstd),
        (gy.reshape(xs.shape), g_mean, g_var), dx=input_gradient, sums=sums,
    )  # fmt: skip
    g_k = jnp.sum(acc_k) / decay.astype(acc)
    return gx, g_scale, g_bias, g_k.astype(decay.dtype), jnp.sum(acc_alpha).astype(alpha.dtype)


fused.defvjp(_fused_fwd, _fused_bwd)
