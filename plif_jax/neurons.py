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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax import surrogate as surrogate_lib
from plif_jax.ops import lif_loop

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
    # Inside jax.shard_map the loop's inputs vary per device like X (its custom VJP returns
    # per-device gradients for them, of their inputs' type); no-ops everywhere else.
    decay = varying_as(jnp.asarray(decay, dtype=x_seq.dtype), x_seq)
    v0 = varying_as(
        jnp.full(x_seq.shape[1:], v_reset, dtype=x_seq.dtype)
        if v_init is None
        else jnp.asarray(v_init, x_seq.dtype),
        x_seq,
    )
    if not return_membrane:
        # Fast path: one in-place loop forward, one hand-written reverse loop backward.
        a = surrogate.alpha if alpha is None else alpha
        spikes, v_final = lif_loop.lif_loop(
            x_seq,
            v0,
            decay,
            varying_as(jnp.asarray(a, dtype=x_seq.dtype), x_seq),
            float(v_threshold),
            float(v_reset),
            bool(detach_reset),
            surrogate,
            int(unroll),
            alpha is not None,
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


def varying_as(v: Array, x: Array) -> Array:
    """``v`` typed as varying over every mesh axis ``x`` varies over (inside ``jax.shard_map``:
    a membrane carried through the time loop updates per device); ``v`` itself elsewhere."""
    missing = tuple(sorted(_varying_axes(x) - _varying_axes(v)))
    return jax.lax.pcast(v, missing, to="varying") if missing else v


def _varying_axes(x: Array) -> frozenset:
    """The manual mesh axes ``x`` varies over (jax 0.10: ``typeof(x).mat.varying``; earlier
    ``typeof(x).vma``); empty outside ``jax.shard_map``."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    return frozenset(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())


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
    gradient (what a recording neuron sows as :class:`FiringRate`)."""
    flat = jax.lax.stop_gradient(spikes).reshape(spikes.shape[0], -1)
    return jnp.mean(flat.astype(jnp.float32), axis=1)


def record_mode(record: str | bool) -> str | None:
    """What a ``set_view(record=...)`` hook stores: ``'rates'``, ``'traces'``, None for False."""
    if record is not False and record not in ("rates", "traces"):
        raise ValueError(f"record must be 'rates', 'traces' or False, got {record!r}")
    return record or None


class FiringRate(nnx.Intermediate):
    """Fraction of a layer's neurons firing at each step, ``[T]`` float32 (no gradient)."""


class TauParam(nnx.Param):
    """The PLIF parameter ``w`` (one scalar per layer); ``tau = 1 + exp(-w)``.

    ``nnx.state(model, TauParam)`` selects every time constant of a model.
    """


class SurrogateAlpha(nnx.Param):
    """A learnable surrogate sharpness ``alpha`` (one scalar per layer)."""


class _SpikingNeuron(nnx.Module):
    """Shared parts of LIF and PLIF: threshold, reset, surrogate, the ``record`` view."""

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
        self.record: str | None = None

    def set_view(self, record: str | bool | None = None):
        """Hook for ``nnx.view``: what a call of the neuron sows.

        Args:
          record: ``'rates'`` (or ``'traces'``, the networks' option) sows the firing rate per
            step as :class:`FiringRate` on each call; ``False`` sows nothing (the default).
        """
        if record is not None:
            self.record = record_mode(record)

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

        A neuron viewed with ``nnx.view(neuron, record='rates')`` also sows its firing rate per
        time step (``[T]``, float32) as :class:`FiringRate` ``firing_rate``; collect it with
        ``nnx.capture(view, FiringRate)``. A plain call sows nothing, so it never grows the
        module's state (and never retraces a jitted caller).
        """
        out = self.dynamics(
            x_seq, return_membrane=return_membrane, v_init=v_init, return_final=return_final
        )
        if self.record:
            spikes = out[0] if (return_membrane or return_final) else out
            self.sow(FiringRate, "firing_rate", firing_rate(spikes))
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
        """The time constant the forward uses, ``1 / sigmoid(w)``, in ``w``'s dtype (traceable)."""
        return 1.0 / jax.nn.sigmoid(self.w[...])

    def time_constant(self) -> float:
        """``tau = 1 + exp(-w)`` as a Python float (float64) from the stored ``w``: the one
        host-side tau (:func:`plif_jax.models.layer_taus`, summaries, TensorBoard)."""
        return 1.0 + math.exp(-float(self.w[...]))


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

    def time_constant(self) -> float:
        """The fixed tau as a Python float, as held in ``param_dtype``."""
        return float(self.tau)
