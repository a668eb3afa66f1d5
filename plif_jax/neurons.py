"""Leaky integrate-and-fire dynamics: pure multi-step functions and thin Flax NNX modules.

Time-major convention: ``x_seq`` is ``[T, B, ...]``. One step (``spec/plif_reference.md`` §1)::

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
) -> Array | tuple[Array, MembraneTrace]:
    """Runs LIF dynamics over time with ``jax.lax.scan``.

    Args:
      x_seq: input current ``[T, B, ...]``.
      decay: ``k = 1/tau``, a (differentiable) scalar.
      v_threshold: firing threshold ``V_th``.
      v_reset: reset potential, also the initial membrane potential.
      detach_reset: cut the gradient through the spike in the reset path.
      surrogate: spike function (forward Heaviside, surrogate backward).
      alpha: learnable surrogate alpha; ``None`` uses ``surrogate.alpha``.
      return_membrane: also return the :class:`MembraneTrace`.
      unroll: ``lax.scan`` unroll factor (a speed knob; results are identical).

    Returns:
      Spikes ``[T, B, ...]`` in ``x_seq.dtype`` (0/1), and the membrane trace when asked.
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
    decay = jnp.asarray(decay, dtype=x_seq.dtype)
    if not return_membrane:
        # Fast path: one scan forward, one hand-written reverse scan backward (same spikes).
        a = surrogate.alpha if alpha is None else alpha
        return _lif_scan(
            x_seq,
            decay,
            jnp.asarray(a, dtype=x_seq.dtype),
            float(v_threshold),
            float(v_reset),
            bool(detach_reset),
            surrogate.kind,
            int(unroll),
        )
    v0 = jnp.full(x_seq.shape[1:], v_reset, dtype=x_seq.dtype)

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

    _, (s, h, v) = jax.lax.scan(step, v0, x_seq, unroll=unroll)
    return s, MembraneTrace(h=h, v=v)


# -----------------------------------------------------------------------------------------------
# The whole scan with a hand-written backward (custom_vjp). Autodiff through the per-step
# custom_vjp of the spike saves several residuals per step and runs a long chain of small kernels
# in the backward scan; the backward below is one reverse scan that reads (grad S, H, X) once per
# step, carries dL/dH[t+1], and accumulates the gradients of k and alpha elementwise (summed once
# at the end). Forward numerics are those of `lif_step` exactly: same H formula, same comparison,
# and where(S, V_reset, H) equals H * (1 - S) + V_reset * S for S in {0, 1}.
#
# Backward recursion (t = T-1 .. 0, gH[T] = 0; S_d = S when detach_reset):
#   dL/dV[t]  = (1 - k) * gH[t+1]
#   dL/dS[t] += dL/dV[t] * (V_reset - H[t])                     (only without detach_reset)
#   gH[t]     = dL/dS[t] * sg'(H[t] - V_th) + dL/dV[t] * (1 - S_d[t])
#   dL/dX[t]  = k * gH[t]
#   dL/dk     = sum_t gH[t] * (X[t] - V[t-1] + V_reset)
#             = sum_t [gH[t] * (X[t] + V_reset) - gH[t+1] * V[t]] - V_reset * sum gH[0]
#   dL/dalpha = sum_t dL/dS[t] * dsg/dalpha(H[t] - V_th)
# -----------------------------------------------------------------------------------------------
def _lif_forward_scan(x_seq, decay, v_threshold, v_reset, unroll, keep_h):
    v_reset_arr = jnp.asarray(v_reset, x_seq.dtype)

    def step(v, x):
        h = v + (x - (v - v_reset)) * decay
        fire = h - v_threshold >= 0
        s = fire.astype(x.dtype)
        return jnp.where(fire, v_reset_arr, h), ((s, h) if keep_h else s)

    v0 = jnp.full(x_seq.shape[1:], v_reset, dtype=x_seq.dtype)
    return jax.lax.scan(step, v0, x_seq, unroll=unroll)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _lif_scan(x_seq, decay, alpha, v_threshold, v_reset, detach_reset, kind, unroll):
    """Spikes of the LIF dynamics over ``x_seq`` (``decay``, ``alpha``: x_seq-dtype scalars)."""
    del alpha, detach_reset, kind  # forward only needs the dynamics
    return _lif_forward_scan(x_seq, decay, v_threshold, v_reset, unroll, keep_h=False)


def _lif_scan_fwd(x_seq, decay, alpha, v_threshold, v_reset, detach_reset, kind, unroll):
    s, h = _lif_forward_scan(x_seq, decay, v_threshold, v_reset, unroll, keep_h=True)
    return s, (x_seq, h, decay, alpha)


def _lif_scan_bwd(v_threshold, v_reset, detach_reset, kind, unroll, res, gs_seq):
    x_seq, h_seq, decay, alpha = res
    partials = surrogate_lib._PARTIALS[kind]
    one_minus_k = 1.0 - decay
    v_reset_arr = jnp.asarray(v_reset, h_seq.dtype)
    acc_dtype = jnp.promote_types(h_seq.dtype, jnp.float32)

    def step(carry, inputs):
        gh_next, acc_k, acc_a = carry
        gs, h, x = inputs
        z = h - v_threshold
        fire = z >= 0
        dsdz, dsda = partials(z, alpha)
        gv = one_minus_k * gh_next
        v = jnp.where(fire, v_reset_arr, h)
        if not detach_reset:
            gs = gs + gv * (v_reset - h)
        gh = gs * dsdz + jnp.where(fire, jnp.zeros_like(gv), gv)
        acc_k = acc_k + (gh * (x + v_reset) - gh_next * v).astype(acc_dtype)
        acc_a = acc_a + (gs * dsda).astype(acc_dtype)
        return (gh, acc_k, acc_a), gh * decay

    zeros = jnp.zeros_like(h_seq[0])
    acc0 = jnp.zeros(h_seq.shape[1:], acc_dtype)
    (gh0, acc_k, acc_a), gx = jax.lax.scan(
        step, (zeros, acc0, acc0), (gs_seq, h_seq, x_seq), reverse=True, unroll=unroll
    )
    g_decay = jnp.sum(acc_k) - v_reset * jnp.sum(gh0, dtype=acc_dtype)
    return gx, g_decay.astype(decay.dtype), jnp.sum(acc_a).astype(alpha.dtype)


_lif_scan.defvjp(_lif_scan_fwd, _lif_scan_bwd)


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

    def __call__(
        self, x_seq: Array, *, return_membrane: bool = False
    ) -> Array | tuple[Array, MembraneTrace]:
        """Spikes ``[T, B, ...]`` for input current ``x_seq`` ``[T, B, ...]``.

        Under ``nnx.capture(model, nnx.Intermediate)`` it also sows the firing rate per time
        step (``[T]``, float32) as ``firing_rate``. Outside a capture nothing is stored, so a plain
        call never grows the module's state (and never retraces a jitted caller).
        """
        out = lif_multistep(
            x_seq,
            self.decay(),
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            detach_reset=self.detach_reset,
            surrogate=self.surrogate,
            alpha=None if self.alpha is None else self.alpha[...],
            return_membrane=return_membrane,
            unroll=self.unroll,
        )
        if not hasattr(self, "__captures__"):  # set on every submodule by nnx.capture
            return out
        spikes = out[0] if return_membrane else out
        rate = jnp.mean(
            jax.lax.stop_gradient(spikes).reshape(spikes.shape[0], -1).astype(jnp.float32),
            axis=1,
        )
        self.sow(nnx.Intermediate, "firing_rate", rate)
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
