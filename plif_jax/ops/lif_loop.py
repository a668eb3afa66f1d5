"""The LIF time loop's fast path: :func:`lif_loop` with a hand-written backward (custom_vjp).

XLA:CPU runs a `lax.scan` body as separate kernels (one per output: the carry and each stacked
output recompute the step), each reading and writing through the loop state. The formulation
below keeps ONE buffer in the loop: the forward loop reads H[t-1] and X[t] and writes H[t] into
the same [T, ...] buffer in place (one fused kernel per step, minimal traffic); the spikes
S = H >= V_th are then computed by one vectorised (multi-threaded) kernel, and V[t] is a function
of H[t]. The backward loop writes dL/dX[t] = k dL/dH[t] into the cotangent's own [T, ...] buffer
(in place) and carries dL/dH[t+1] and the per-neuron sums over time of dL/dk's and dL/dalpha's
terms, so the backward is one pass over H and dL/dS (no dL/dH or V[t-1] buffer, no reductions
or scaling after the loop; the neuron-alone workload of the peers benchmark ~25 % faster). Forward
numerics are those of `lif_step` exactly: the same H formula and comparison, and
where(S, V_reset, H) equals H * (1 - S) + V_reset * S for S in {0, 1}.

Backward (t = T-1 .. 0; dL/dV[T-1] = the cotangent of v_final; S_d = S when detach_reset)::

  dL/dV[t]  = (1 - k) * gH[t+1]                               (t < T-1)
  dL/dS[t] += dL/dV[t] * (V_reset - H[t])                     (only without detach_reset)
  gH[t]     = dL/dS[t] * sg'(H[t] - V_th) + dL/dV[t] * (1 - S_d[t])
  dL/dX[t]  = k * gH[t];   dL/dv_init = (1 - k) * gH[0]
  dL/dk     = sum_t gH[t] * (X[t] - V[t-1] + V_reset)        (V[-1] = v_init)
  dL/dalpha = sum_t dL/dS[t] * dsg/dalpha(H[t] - V_th)

On GPUs and TPUs the two time loops are :mod:`plif_jax.ops.lif_scan`'s unrolled scans instead
(same residuals, same formulas; chosen when the step is lowered for its platform): the in-place
loop above is what XLA:CPU runs best, and costs XLA:GPU 3-4 kernels per step with copies.

Where :mod:`plif_jax.ops.lif_native` can build its kernel (a C++ compiler on Linux; float32,
scalar decay and alpha; the ATan surrogate for the backward), XLA:CPU runs that kernel instead of
the two loops below: same spikes, gradients equal up to float rounding, the neuron alone
1.3-1.5x faster (docs/explanation/performance.md, "A native kernel for the CPU loops").

:func:`plif_jax.neurons.lif_multistep` calls it when no membrane trace is asked for.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from plif_jax.ops import lif_native, lif_scan
from plif_jax.ops.platform import by_platform


def _reset(h, v_threshold, v_reset):
    """``V[t]`` from ``H[t]``: the hard reset."""
    return jnp.where(h - v_threshold >= 0, jnp.asarray(v_reset, h.dtype), h)


def _charge(v, x, decay, v_reset):
    """``H[t]`` from ``V[t-1]`` and ``X[t]``: the charge."""
    return v + (x - (v - v_reset)) * decay


def _lif_forward_loop(x_seq, v0, decay, v_threshold, v_reset, unroll):
    """``H[t]`` for every step, ``[T, ...]`` (the only quantity the loop has to produce)."""
    charge = functools.partial(_charge, decay=decay, v_reset=v_reset)

    def body(t, h_buf):
        h_prev = jax.lax.dynamic_index_in_dim(h_buf, jnp.maximum(t - 1, 0), keepdims=False)
        v = jnp.where(t == 0, v0, _reset(h_prev, v_threshold, v_reset))
        x = jax.lax.dynamic_index_in_dim(h_buf, t, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(h_buf, charge(v, x), t, 0)

    # The buffer is X itself: step t reads X[t] before overwriting it with H[t], so XLA runs the
    # loop in place in X's buffer when X is not needed afterwards (a Linear's output). Step 0
    # is in the loop (v0 selected): setting H[0] before it made XLA copy X and rewrite it whole
    # first, two extra passes over [T, ...] (BENCHMARKS.md, "The peers").
    return jax.lax.fori_loop(0, x_seq.shape[0], body, x_seq, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9))
def lif_loop(
    x_seq, v0, decay, alpha, v_threshold, v_reset, detach_reset, surrogate, unroll, learn_alpha
):
    """``(spikes, v_final)`` of the LIF dynamics (``decay``, ``alpha``: x_seq-dtype scalars).

    ``surrogate``: the :class:`plif_jax.surrogate.Surrogate` (frozen, hashable) whose
    :meth:`~plif_jax.surrogate.Surrogate.partials` the backward uses; its own ``alpha`` is not
    read (the ``alpha`` argument is). ``learn_alpha``: whether ``alpha``'s gradient is used (a
    learnable surrogate alpha); it selects the CPU backward loop's buffers, the gradient is
    computed either way.
    """
    args = (x_seq, v0, decay, alpha, v_threshold, v_reset, detach_reset, surrogate, unroll)
    return _lif_loop_fwd(*args, learn_alpha)[0]


def _lif_loop_fwd(
    x_seq, v0, decay, alpha, v_threshold, v_reset, detach_reset, surrogate, unroll, learn_alpha
):
    del detach_reset, surrogate, learn_alpha  # the forward only needs the dynamics

    def cpu(x, v):
        if lif_native.usable(x.dtype, None, decay):
            return lif_native.forward(x, v, decay, v_threshold, v_reset)
        return _lif_forward_loop(x, v, decay, v_threshold, v_reset, unroll)

    def accelerator(x, v):
        charge = functools.partial(_charge, decay=decay, v_reset=v_reset)
        return lif_scan.forward_h(x, v, charge, lambda h_t: _reset(h_t, v_threshold, v_reset))

    h = by_platform(cpu, accelerator, x_seq, v0)
    # The spikes outside the loops: XLA fuses the comparison into their consumer (a pooling,
    # the next layer's input), so a [T, ...] spike tensor is often never written.
    out = ((h - v_threshold >= 0).astype(x_seq.dtype), _reset(h[-1], v_threshold, v_reset))
    # X is not kept: the backward needs X[t] - V[t-1] + V_reset only, which is (H[t] - V[t-1]) / k.
    return out, (v0, h, decay, alpha)


def _lif_loop_bwd(
    v_threshold, v_reset, detach_reset, surrogate, unroll, learn_alpha, res, cotangents
):
    v0, h_seq, decay, alpha = res
    gs_seq, gv_final = cotangents
    partials = surrogate.partials
    one_minus_k = 1.0 - decay
    acc_dtype = jnp.promote_types(h_seq.dtype, jnp.float32)
    T = h_seq.shape[0]

    def step(gs, h, v_prev, gv, acc_k, acc_alpha):
        """One step back in time: ``(dL/dH[t], acc_k, acc_alpha)`` from dL/dS[t], H[t],
        V[t-1], dL/dV[t] and the per-neuron sums over time of dL/dk's and dL/dalpha's terms so
        far (summed in the loop: no V[t-1] buffer and no reductions after it)."""
        z = h - v_threshold
        if not detach_reset:
            gs = gs + gv * (v_reset - h)
        gh = gs * partials(z, alpha)[0] + jnp.where(z >= 0, jnp.zeros_like(gv), gv)
        # dL/dk = sum gH[t] (X[t] - V[t-1] + V_reset) = sum gH[t] (H[t] - V[t-1]) / k.
        acc_k = acc_k + (gh * (h - v_prev)).astype(acc_dtype)
        acc_alpha = acc_alpha + (gs * partials(z, alpha)[1]).astype(acc_dtype)
        return gh, acc_k, acc_alpha

    zeros = jnp.zeros_like(v0, acc_dtype)
    gv_last = gv_final.astype(h_seq.dtype)

    def body(i, carry):
        # Carry: dL/dX's buffer (dL/dS until step t overwrites it), gH[t+1] and the sums.
        # Every read of the buffer stays in the fusion that updates it in place: carrying
        # dL/dV[t] = (1 - k) gH[t+1] instead made XLA:CPU copy the whole buffer twice per step
        # (the Linear + PLIF workload 2.8x slower, 2026-12-03).
        gx_buf, gh_next, acc_k, acc_alpha = carry
        t = T - 1 - i  # t = T-1 .. 0
        # dL/dS[t]: still in the buffer, or in its own (read-only) one with a learnable alpha.
        gs = jax.lax.dynamic_index_in_dim(gs_seq if learn_alpha else gx_buf, t, keepdims=False)
        h = jax.lax.dynamic_index_in_dim(h_seq, t, keepdims=False)
        h_prev = jax.lax.dynamic_index_in_dim(h_seq, jnp.maximum(t - 1, 0), keepdims=False)
        v_prev = jnp.where(t == 0, v0, _reset(h_prev, v_threshold, v_reset))
        gv = jnp.where(t == T - 1, gv_last, one_minus_k * gh_next)
        gh, acc_k, acc_alpha = step(gs, h, v_prev, gv, acc_k, acc_alpha)
        return jax.lax.dynamic_update_index_in_dim(gx_buf, gh * decay, t, 0), gh, acc_k, acc_alpha

    def cpu_loop(gs_seq, h_seq):
        if lif_native.usable(h_seq.dtype, surrogate.kind, decay, alpha):
            return lif_native.backward(
                gs_seq,
                h_seq,
                v0,
                decay,
                alpha,
                gv_last,
                v_threshold=v_threshold,
                v_reset=v_reset,
                detach_reset=detach_reset,
            )
        # The body reads h_seq from the enclosing scope.
        # The buffer is dL/dS itself (in place when the cotangent is dead afterwards): step t
        # reads dL/dS[t] before overwriting it with dL/dX[t]; the last step is in the loop, as
        # in the forward. An unused dL/dalpha sum is dropped from the loop by XLA. Not
        # unrolled: unrolling this loop made XLA:CPU copy the buffer, 10-15x slower (unroll
        # 2-10, n=1024, T=100, 2026-12-03). With a learnable alpha, dL/dalpha's term reads
        # dL/dS[t] in a fusion of its own, which made XLA copy the buffer twice per step (the
        # neuron's backward 30-50x slower); then dL/dX gets a buffer of its own (one more write
        # of [T, ...], no copies; `tests/core/test_lif_formulations.py`).
        gx_init = jnp.zeros_like(gs_seq) if learn_alpha else gs_seq
        return jax.lax.fori_loop(0, T, body, (gx_init, jnp.zeros_like(v0), zeros, zeros))

    def scan(gs_seq, h_seq):
        def scan_step(gs, h, v_prev, gv, acc_k, acc_alpha):
            gh, acc_k, acc_alpha = step(gs, h, v_prev, gv, acc_k, acc_alpha)
            return gh, one_minus_k * gh, acc_k, acc_alpha

        v_prev = jnp.concatenate([v0[None], _reset(h_seq[:-1], v_threshold, v_reset)])
        gh, _, acc_k, acc_alpha = lif_scan.backward(
            scan_step, (gv_last, zeros, zeros), (gs_seq, h_seq, v_prev)
        )
        # dL/dX outside the scan: XLA:GPU fuses the scaling into its consumers (the conv and
        # BatchNorm backward); as the scan's output it split their reductions per time step
        # (H200 plan of DVS128 Gesture: 404 launches instead of 261).
        return gh * decay, gh[0], acc_k, acc_alpha

    gx, gh0, acc_k, acc_alpha = by_platform(cpu_loop, scan, gs_seq, h_seq)
    g_k = jnp.sum(acc_k, dtype=acc_dtype) / decay.astype(acc_dtype)
    return (
        gx,
        (one_minus_k * gh0).astype(v0.dtype),
        g_k.astype(decay.dtype),
        jnp.sum(acc_alpha, dtype=acc_dtype).astype(alpha.dtype),
    )


lif_loop.defvjp(_lif_loop_fwd, _lif_loop_bwd)
