"""Leaky integrate-and-fire dynamics: pure multi-step functions and thin Flax NNX modules.

Time-major convention: ``x_seq`` is ``[T, B, ...]``. One step (the paper's charge-fire-reset
equations, as SpikingJelly's ``spikingjelly/clock_driven/neuron.py`` at
``fangwei123456/spikingjelly@73f94ab`` computes them for the original repository's
``codes/models.py``)::

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * k        # charge, k = 1/tau
    S[t] = Heaviside(H[t] - V_th)                          # fire (surrogate gradient)
    V[t] = H[t] * (1 - S_d[t]) + V_reset * S_d[t]          # hard reset

with ``S_d = stop_gradient(S)`` when ``detach_reset`` (the paper's setting) so that no gradient
flows through the spike in the reset. The membrane starts at ``V_reset`` at every call.
PLIF learns one scalar ``w`` per layer with ``k = sigmoid(w)``, i.e. ``tau = 1 + exp(-w)``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax import surrogate as surrogate_lib

Array = jax.Array


class MembraneTrace(NamedTuple):
    """Membrane potentials over time, each ``[T, B, ...]``.

    ``h``: after charging, before firing (compare with the threshold). ``v``: after the reset
    (SpikingJelly's ``v_seq``).
    """

    h: Array
    v: Array


def lif_step(
    v: Array,
    x: Array,
    decay: Array,
    *,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    detach_reset: bool = True,
    surrogate: surrogate_lib.Surrogate = surrogate_lib.ATAN,
    alpha: Array | None = None,
) -> tuple[Array, Array, Array]:
    """One time step. Returns ``(v_next, spike, h)``."""
    h = v + (x - (v - v_reset)) * decay
    s = surrogate(h - v_threshold, alpha)
    s_reset = jax.lax.stop_gradient(s) if detach_reset else s
    v_next = h * (1.0 - s_reset) + v_reset * s_reset
    return v_next, s, h


def lif_multistep(
    x_seq: Array,
    decay: Array | float,
    *,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    detach_reset: bool = True,
    surrogate: surrogate_lib.Surrogate = surrogate_lib.ATAN,
    alpha: Array | None = None,
    return_membrane: bool = False,
    unroll: int = 1,
    v_init: Array | None = None,
    return_final: bool = False,
) -> Array | tuple:
    """Runs LIF dynamics over time.

    Args:
      x_seq: input current ``[T, B, ...]``.
      decay: ``k = 1/tau``, a (differentiable) scalar.
      v_threshold: firing threshold ``V_th``.
      v_reset: reset potential, and the initial membrane potential when ``v_init`` is None.
      detach_reset: cut the gradient through the spike in the reset path.
      surrogate: spike function (forward Heaviside, surrogate backward).
      alpha: learnable surrogate alpha; ``None`` uses ``surrogate.alpha``.
      return_membrane: also return the :class:`MembraneTrace`.
      unroll: loop unroll factor over time (a speed knob; results are identical).
      v_init: membrane before the first step, ``[B, ...]`` (differentiable); None starts at
        ``v_reset``. With ``return_final`` this continues a sequence in chunks exactly.
      return_final: also return the membrane after the last step's reset, ``[B, ...]``
        (differentiable), to carry into the next chunk.

    Returns:
      Spikes ``[T, B, ...]`` in ``x_seq.dtype`` (0/1); ``(spikes, MembraneTrace)`` with
      ``return_membrane``; ``(spikes, v_final)`` with ``return_final``; ``(spikes,
      MembraneTrace, v_final)`` with both.
    """
    if x_seq.ndim < 1 or x_seq.shape[0] == 0:
        raise ValueError(
            f"x_seq must be time-major [T, B, ...] with T >= 1, got shape {tuple(x_seq.shape)}; "
            "pass at least one time step along axis 0 (e.g. x[None] for a single step)"
        )
    if not jnp.issubdtype(x_seq.dtype, jnp.floating):
        # An integer membrane would truncate k = 1/tau to 0 (scan then fails on mixed dtypes).
        raise ValueError(
            f"x_seq must be a floating-point input current, got dtype {x_seq.dtype}; "
            "cast it first, e.g. x_seq.astype(jnp.float32)"
        )
    if v_init is not None and tuple(v_init.shape) != tuple(x_seq.shape[1:]):
        raise ValueError(
            f"v_init must have the shape of one time step of x_seq, {tuple(x_seq.shape[1:])}, "
            f"got {tuple(v_init.shape)}; pass the v_final of the previous chunk (or None)"
        )
    decay = jnp.asarray(decay, dtype=x_seq.dtype)
    v0 = (
        jnp.full(x_seq.shape[1:], v_reset, dtype=x_seq.dtype)
        if v_init is None
        else jnp.asarray(v_init, x_seq.dtype)
    )
    if not return_membrane:
        # Fast path: one in-place loop forward, one hand-written reverse loop backward.
        a = surrogate.alpha if alpha is None else alpha
        spikes, v_final = _lif_loop(
            x_seq,
            v0,
            decay,
            jnp.asarray(a, dtype=x_seq.dtype),
            float(v_threshold),
            float(v_reset),
            bool(detach_reset),
            surrogate.kind,
            int(unroll),
        )
        return (spikes, v_final) if return_final else spikes

    def step(v, x):
        v_next, s, h = lif_step(
            v,
            x,
            decay,
            v_threshold=v_threshold,
            v_reset=v_reset,
            detach_reset=detach_reset,
            surrogate=surrogate,
            alpha=alpha,
        )
        return v_next, (s, h, v_next)

    v_final, (s, h, v) = jax.lax.scan(step, v0, x_seq, unroll=unroll)
    trace = MembraneTrace(h=h, v=v)
    return (s, trace, v_final) if return_final else (s, trace)


# -----------------------------------------------------------------------------------------------
# The fast path: the whole time loop with a hand-written backward (custom_vjp).
#
# XLA:CPU runs a `lax.scan` body as separate kernels (one per output: the carry and each stacked
# output recompute the step), each reading and writing through the loop state. The formulation
# below keeps ONE buffer in the loop: the forward loop reads H[t-1] and X[t] and writes H[t] into
# the same [T, ...] buffer in place (one fused kernel per step, minimal traffic); the spikes
# S = H >= V_th are then computed by one vectorised (multi-threaded) kernel, and V[t] is a function
# of H[t]. The backward loop likewise carries only dL/dH in a [T, ...] buffer; the gradients of
# k and alpha and dL/dX = k dL/dH are vectorised reductions/maps outside the loop. Forward
# numerics are those of `lif_step` exactly: the same H formula and comparison, and
# where(S, V_reset, H) equals H * (1 - S) + V_reset * S for S in {0, 1}.
#
# Backward (t = T-1 .. 0; dL/dV[T-1] = the cotangent of v_final; S_d = S when detach_reset):
#   dL/dV[t]  = (1 - k) * gH[t+1]                               (t < T-1)
#   dL/dS[t] += dL/dV[t] * (V_reset - H[t])                     (only without detach_reset)
#   gH[t]     = dL/dS[t] * sg'(H[t] - V_th) + dL/dV[t] * (1 - S_d[t])
#   dL/dX[t]  = k * gH[t];   dL/dv_init = (1 - k) * gH[0]
#   dL/dk     = sum_t gH[t] * (X[t] - V[t-1] + V_reset)        (V[-1] = v_init)
#   dL/dalpha = sum_t dL/dS[t] * dsg/dalpha(H[t] - V_th)
# -----------------------------------------------------------------------------------------------
def _reset(h, v_threshold, v_reset):
    """``V[t]`` from ``H[t]``: the hard reset."""
    return jnp.where(h - v_threshold >= 0, jnp.asarray(v_reset, h.dtype), h)


def _lif_forward_loop(x_seq, v0, decay, v_threshold, v_reset, unroll):
    """``H[t]`` for every step, ``[T, ...]`` (the only quantity the loop has to produce)."""

    def charge(v, x):
        return v + (x - (v - v_reset)) * decay

    def body(t, h_buf):
        v = _reset(jax.lax.dynamic_index_in_dim(h_buf, t - 1, keepdims=False), v_threshold, v_reset)
        x = jax.lax.dynamic_index_in_dim(h_buf, t, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(h_buf, charge(v, x), t, 0)

    # The buffer starts as X itself: step t reads X[t] before overwriting it with H[t], so XLA can
    # run the loop in place in X's buffer when X is not needed afterwards.
    h_buf = x_seq.at[0].set(charge(v0, x_seq[0]))
    return jax.lax.fori_loop(1, x_seq.shape[0], body, h_buf, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _lif_loop(x_seq, v0, decay, alpha, v_threshold, v_reset, detach_reset, kind, unroll):
    """``(spikes, v_final)`` of the LIF dynamics (``decay``, ``alpha``: x_seq-dtype scalars)."""
    args = (x_seq, v0, decay, alpha, v_threshold, v_reset, detach_reset, kind, unroll)
    return _lif_loop_fwd(*args)[0]


def _lif_loop_fwd(x_seq, v0, decay, alpha, v_threshold, v_reset, detach_reset, kind, unroll):
    del detach_reset, kind  # the forward only needs the dynamics
    h = _lif_forward_loop(x_seq, v0, decay, v_threshold, v_reset, unroll)
    out = ((h - v_threshold >= 0).astype(x_seq.dtype), _reset(h[-1], v_threshold, v_reset))
    # X is not kept: the backward needs X[t] - V[t-1] + V_reset only, which is (H[t] - V[t-1]) / k.
    return out, (v0, h, decay, alpha)


def _lif_loop_bwd(v_threshold, v_reset, detach_reset, kind, unroll, res, cotangents):
    v0, h_seq, decay, alpha = res
    gs_seq, gv_final = cotangents
    partials = surrogate_lib._PARTIALS[kind]
    one_minus_k = 1.0 - decay
    acc_dtype = jnp.promote_types(h_seq.dtype, jnp.float32)
    T = h_seq.shape[0]

    def grad_h(gs, h, gv):
        z = h - v_threshold
        fire = z >= 0
        if not detach_reset:
            gs = gs + gv * (v_reset - h)
        return gs * partials(z, alpha)[0] + jnp.where(fire, jnp.zeros_like(gv), gv)

    def body(i, gh_buf):
        t = T - 2 - i  # t = T-2 .. 0
        gh_next = jax.lax.dynamic_index_in_dim(gh_buf, t + 1, keepdims=False)
        gs = jax.lax.dynamic_index_in_dim(gh_buf, t, keepdims=False)  # still dL/dS[t]
        h = jax.lax.dynamic_index_in_dim(h_seq, t, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(
            gh_buf, grad_h(gs, h, one_minus_k * gh_next), t, 0
        )

    gh_last = grad_h(gs_seq[-1], h_seq[-1], gv_final.astype(h_seq.dtype))
    # The buffer starts as dL/dS (in place when the cotangent is dead afterwards): step t reads
    # dL/dS[t] before overwriting it with gH[t].
    gh = gs_seq.at[-1].set(gh_last)
    gh = jax.lax.fori_loop(0, T - 1, body, gh, unroll=unroll)

    # Everything below is vectorised over time (outside the loop).
    v_prev = jnp.concatenate([v0[None], _reset(h_seq[:-1], v_threshold, v_reset)])
    # dL/dk = sum gH[t] (X[t] - V[t-1] + V_reset) = sum gH[t] (H[t] - V[t-1]) / k.
    g_decay = jnp.sum((gh * (h_seq - v_prev)).astype(acc_dtype), dtype=acc_dtype) / decay.astype(
        acc_dtype
    )
    gs_eff = gs_seq
    if not detach_reset:
        gv_seq = jnp.concatenate([one_minus_k * gh[1:], gv_final[None].astype(h_seq.dtype)])
        gs_eff = gs_seq + gv_seq * (v_reset - h_seq)
    g_alpha = jnp.sum(
        (gs_eff * partials(h_seq - v_threshold, alpha)[1]).astype(acc_dtype), dtype=acc_dtype
    )
    return (
        gh * decay,
        (one_minus_k * gh[0]).astype(v0.dtype),
        g_decay.astype(decay.dtype),
        g_alpha.astype(alpha.dtype),
    )


_lif_loop.defvjp(_lif_loop_fwd, _lif_loop_bwd)


def w_from_tau(tau: float) -> float:
    """``w = -ln(tau - 1)`` so that ``sigmoid(w) = 1/tau``."""
    return -math.log(tau - 1.0)


def _check_tau(name: str, tau: float) -> float:
    tau = float(tau)
    # `not tau > 1` also rejects NaN; an infinite tau would give w = -inf (a neuron that never
    # charges), so it is rejected as well.
    if not (tau > 1.0 and math.isfinite(tau)):
        raise ValueError(
            f"{name} must be finite and > 1 (tau = 1 + exp(-w) > 1 for every finite w; tau <= 1 "
            f"has no leak/decay interpretation), got {tau}. Use e.g. {name}=2.0 (the paper's "
            "value)."
        )
    return tau


def firing_rate(spikes: Array) -> Array:
    """Fraction of neurons firing at each step of ``spikes`` ``[T, ...]``: ``[T]`` float32, no
    gradient (what a neuron sows as ``firing_rate``)."""
    flat = jax.lax.stop_gradient(spikes).reshape(spikes.shape[0], -1)
    return jnp.mean(flat.astype(jnp.float32), axis=1)


class TauParam(nnx.Param):
    """The PLIF parameter ``w`` (one scalar per layer); ``tau = 1 + exp(-w)``.

    ``nnx.state(model, TauParam)`` selects every time constant of a model.
    """


class SurrogateAlpha(nnx.Param):
    """A learnable surrogate sharpness ``alpha`` (one scalar per layer)."""


class _SpikingNeuron(nnx.Module):
    """Shared parts of LIF and PLIF: threshold, reset, surrogate, recording."""

    def __init__(
        self,
        *,
        v_threshold: float,
        v_reset: float,
        detach_reset: bool,
        surrogate: surrogate_lib.Surrogate,
        alpha_learnable: bool,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.v_threshold = float(v_threshold)
        self.v_reset = float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate
        self.param_dtype = jnp.dtype(param_dtype)
        self.alpha = (
            SurrogateAlpha(jnp.asarray(surrogate.alpha, self.param_dtype))
            if alpha_learnable
            else None
        )
        self.unroll = 1

    def decay(self) -> Array:
        raise NotImplementedError

    def dynamics(self, x_seq: Array, **options) -> Array | tuple:
        """:func:`lif_multistep` with this neuron's settings; ``options`` are its keyword options
        (``return_membrane``, ``v_init``, ``return_final``). Records nothing (safe in a scan body).
        """
        return lif_multistep(
            x_seq,
            self.decay(),
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            detach_reset=self.detach_reset,
            surrogate=self.surrogate,
            alpha=None if self.alpha is None else self.alpha[...],
            unroll=self.unroll,
            **options,
        )

    def __call__(
        self,
        x_seq: Array,
        *,
        return_membrane: bool = False,
        v_init: Array | None = None,
        return_final: bool = False,
    ) -> Array | tuple:
        """Spikes ``[T, B, ...]`` for input current ``x_seq`` ``[T, B, ...]``.

        ``v_init`` / ``return_final`` continue a sequence in time chunks (see
        :func:`lif_multistep` for the return forms).

        Under ``nnx.capture(model, nnx.Intermediate)`` it also sows the firing rate per time
        step (``[T]``, float32) as ``firing_rate``. Outside a capture nothing is stored, so a plain
        call never grows the module's state (and never retraces a jitted caller).
        """
        out = self.dynamics(
            x_seq, return_membrane=return_membrane, v_init=v_init, return_final=return_final
        )
        if not hasattr(self, "__captures__"):  # set on every submodule by nnx.capture
            return out
        spikes = out[0] if (return_membrane or return_final) else out
        self.sow(nnx.Intermediate, "firing_rate", firing_rate(spikes))
        return out


class PLIF(_SpikingNeuron):
    """Parametric LIF: one learnable ``w`` per layer, ``k = sigmoid(w)``, ``tau = 1 + exp(-w)``.

    Args:
      init_tau: initial time constant ``tau0 > 1``; ``w`` starts at ``-ln(tau0 - 1)``.
      v_threshold: firing threshold ``V_th``.
      v_reset: reset potential, also the initial membrane potential of every call.
      detach_reset: cut the gradient through the spike in the reset (the paper's setting).
      surrogate: spike function (forward Heaviside, surrogate backward).
      alpha_learnable: make the surrogate's alpha a learnable :class:`SurrogateAlpha`.
      param_dtype: dtype of ``w`` (and of a learnable alpha). ``jnp.float64`` needs
        ``jax_enable_x64``; it exists for float64 parity checks against a reference.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        *,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        detach_reset: bool = True,
        surrogate: surrogate_lib.Surrogate = surrogate_lib.ATAN,
        alpha_learnable: bool = False,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        init_tau = _check_tau("init_tau", init_tau)
        super().__init__(
            v_threshold=v_threshold,
            v_reset=v_reset,
            detach_reset=detach_reset,
            surrogate=surrogate,
            alpha_learnable=alpha_learnable,
            param_dtype=param_dtype,
        )
        self.w = TauParam(jnp.asarray(w_from_tau(init_tau), self.param_dtype))

    def decay(self) -> Array:
        return jax.nn.sigmoid(self.w[...])

    @property
    def tau(self) -> Array:
        """The current time constant ``1 / sigmoid(w)``."""
        return 1.0 / jax.nn.sigmoid(self.w[...])


class LIF(_SpikingNeuron):
    """LIF with a fixed time constant ``tau`` (no learnable ``w``).

    Args:
      tau: the time constant, ``> 1``; the charge uses ``k = 1 / tau``.
      v_threshold: firing threshold ``V_th``.
      v_reset: reset potential, also the initial membrane potential of every call.
      detach_reset: cut the gradient through the spike in the reset (the paper's setting).
      surrogate: spike function (forward Heaviside, surrogate backward).
      alpha_learnable: make the surrogate's alpha a learnable :class:`SurrogateAlpha`.
      param_dtype: dtype of ``k`` (and of a learnable alpha). ``jnp.float64`` needs
        ``jax_enable_x64``; it exists for float64 parity checks against a reference.
    """

    def __init__(
        self,
        tau: float = 2.0,
        *,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        detach_reset: bool = True,
        surrogate: surrogate_lib.Surrogate = surrogate_lib.ATAN,
        alpha_learnable: bool = False,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.tau_value = _check_tau("tau", tau)
        super().__init__(
            v_threshold=v_threshold,
            v_reset=v_reset,
            detach_reset=detach_reset,
            surrogate=surrogate,
            alpha_learnable=alpha_learnable,
            param_dtype=param_dtype,
        )

    def decay(self) -> Array:
        return jnp.asarray(1.0 / self.tau_value, self.param_dtype)

    @property
    def tau(self) -> Array:
        """The (fixed) time constant."""
        return jnp.asarray(self.tau_value, self.param_dtype)
