"""The neuron's gradients under a tracing context, for comparing its CPU formulations."""

import contextlib

import jax
import jax.numpy as jnp

from plif_jax import neurons


def grads(context: contextlib.AbstractContextManager, x, coef, *, learn_alpha=True, **kw):
    """``((dx, dw, dalpha, dv0), spikes)`` of ``sum(coef * S) + sum(v_final * coef[0])`` for
    ``neurons.lif_multistep`` traced inside ``context`` (a formulation, the native kernel on or
    off); ``learn_alpha=False`` leaves the surrogate's alpha a constant (its gradient is then 0)."""

    def loss(x, w, alpha, v0):
        s, v = neurons.lif_multistep(
            x,
            jax.nn.sigmoid(w),
            alpha=alpha if learn_alpha else None,
            v_init=v0,
            return_final=True,
            **kw,
        )
        return jnp.sum(coef * s) + jnp.sum(v * coef[0]), s

    with context:
        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
        return f(x, jnp.float32(0.3), jnp.float32(2.0), x[0] * 0.1)
