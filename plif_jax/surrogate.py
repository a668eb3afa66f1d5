"""Spike functions: Heaviside forward, surrogate-gradient backward (``jax.custom_vjp``).

Every spike function maps ``x = H - V_th`` to ``S = 1[x >= 0]`` (equality fires, as in the
reference) and, in the backward pass, replaces the Dirac delta by the derivative of a smooth
primitive ``g(x; alpha)``. ``alpha`` is an ordinary (differentiable) input: when it is a learnable
parameter (the paper's ``-alpha_learnable`` flag) it receives ``sum(grad_out * dg/dalpha)``.

Surrogates (SpikingJelly's ``spikingjelly/clock_driven/surrogate.py`` at
``fangwei123456/spikingjelly@73f94ab``, the version the paper's code ran on; every paper run
uses ``ATan(alpha=2.0, learnable=False)``, as the original repository's logs print):

* ``atan(alpha=2.0)``: ``g = atan(pi/2 * alpha * x) / pi + 1/2``,
  ``dg/dx = alpha / (2 * (1 + (pi/2 * alpha * x)**2))``,
  ``dg/dalpha = x / (2 * (1 + (pi/2 * alpha * x)**2))``.
* ``sigmoid(alpha=4.0)``: ``g = sigmoid(alpha * x)``,
  ``dg/dx = alpha * g * (1 - g)``, ``dg/dalpha = x * g * (1 - g)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def heaviside(x: Array) -> Array:
    """``1`` where ``x >= 0`` else ``0``, in ``x``'s dtype."""
    return (x >= 0).astype(x.dtype)


def _as_jax(alpha: Array) -> Array:
    """A NumPy ``alpha`` as a JAX array of its dtype. Inside ``jax.checkpoint`` (a
    ``remat_chunk`` network) a constant alpha arrives as a NumPy-backed literal, whose arithmetic
    follows NumPy's promotion: ``(pi / 2) * alpha`` was float32 for a bfloat16 alpha, which made a
    bfloat16 neuron's gradient float32 and failed its backward loop's in-place update."""
    return jnp.asarray(alpha) if isinstance(alpha, np.ndarray) else alpha


def _atan_partials(x: Array, alpha: Array) -> tuple[Array, Array]:
    alpha = _as_jax(alpha)
    denom = 2.0 * (1.0 + jnp.square((math.pi / 2.0) * alpha * x))
    return alpha / denom, x / denom


def _sigmoid_partials(x: Array, alpha: Array) -> tuple[Array, Array]:
    alpha = _as_jax(alpha)
    z = alpha * x
    # sigmoid(z) * sigmoid(-z) == sg * (1 - sg) without the cancellation in 1 - sg, which costs
    # float32 ~1% relative error by |z| = 12 (and a zero gradient from |z| ~ 17 on).
    slope = jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
    return alpha * slope, x * slope


_PARTIALS: dict[str, Callable[[Array, Array], tuple[Array, Array]]] = {
    "atan": _atan_partials,
    "sigmoid": _sigmoid_partials,
}


def _make_spike_fn(kind: str) -> Callable[[Array, Array], Array]:
    partials = _PARTIALS[kind]

    @jax.custom_vjp
    def spike(x: Array, alpha: Array) -> Array:
        return heaviside(x)

    def fwd(x, alpha):
        return heaviside(x), (x, alpha)

    def bwd(res, g):
        x, alpha = res
        dx, dalpha = partials(x, alpha)
        grad_alpha = jnp.sum(g * dalpha).astype(alpha.dtype).reshape(alpha.shape)
        return (g * dx).astype(x.dtype), grad_alpha

    spike.defvjp(fwd, bwd)
    spike.__name__ = f"spike_{kind}"
    return spike


SPIKE_FUNCTIONS: dict[str, Callable[[Array, Array], Array]] = {
    kind: _make_spike_fn(kind) for kind in _PARTIALS
}


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A surrogate spike function: ``kind`` selects the primitive, ``alpha`` its sharpness.

    ``alpha`` is a Python float for a fixed surrogate. A neuron with a learnable alpha passes
    its parameter at call time: ``surrogate(x, alpha=param)``.
    """

    kind: str = "atan"
    alpha: float = 2.0

    def __post_init__(self):
        if self.kind not in SPIKE_FUNCTIONS:
            raise ValueError(
                f"unknown surrogate {self.kind!r}; valid values: {sorted(SPIKE_FUNCTIONS)}"
            )
        if not self.alpha > 0:
            raise ValueError(
                f"surrogate alpha must be > 0 (it scales the gradient's width), got "
                f"{self.alpha}; use e.g. alpha=2.0 for 'atan' or alpha=4.0 for 'sigmoid'"
            )

    def __call__(self, x: Array, alpha: Array | float | None = None) -> Array:
        a = self.alpha if alpha is None else alpha
        return SPIKE_FUNCTIONS[self.kind](x, jnp.asarray(a, dtype=x.dtype))

    def partials(self, x: Array, alpha: Array | float | None = None) -> tuple[Array, Array]:
        """``(dg/dx, dg/dalpha)`` of the primitive at ``x``: what the backward multiplies by.

        Hand-written backward passes (:mod:`plif_jax.ops.lif_loop`) call this, so they use the
        exact expressions of :meth:`__call__`'s gradient.
        """
        return _PARTIALS[self.kind](x, self.alpha if alpha is None else alpha)

    def primitive(self, x: Array, alpha: Array | float | None = None) -> Array:
        """The smooth function whose derivative is used as the gradient (for tests, plots)."""
        a = self.alpha if alpha is None else alpha
        if self.kind == "atan":
            return jnp.arctan((math.pi / 2.0) * a * x) / math.pi + 0.5
        return jax.nn.sigmoid(a * x)


def atan(alpha: float = 2.0) -> Surrogate:
    """The paper's surrogate: ``dS/dx = alpha / (2 (1 + (pi/2 alpha x)^2))``."""
    return Surrogate("atan", alpha)


def sigmoid(alpha: float = 4.0) -> Surrogate:
    """Sigmoid surrogate: ``dS/dx = alpha sigmoid(alpha x) (1 - sigmoid(alpha x))``."""
    return Surrogate("sigmoid", alpha)


def get(name: str, alpha: float | None = None) -> Surrogate:
    """Surrogate by name (``'atan'`` or ``'sigmoid'``) with its default alpha unless given."""
    factories = {"atan": atan, "sigmoid": sigmoid}
    if name not in factories:
        raise ValueError(f"unknown surrogate {name!r}; valid values: {sorted(factories)}")
    return factories[name]() if alpha is None else factories[name](alpha)


ATAN = atan()
"""The paper's surrogate, ``atan(alpha=2.0)``, as a shared default."""
