"""The LIF time loop for GPUs and TPUs: the recurrences of :mod:`plif_jax.ops.lif_loop` as an
unrolled ``lax.scan``.

:func:`plif_jax.ops.lif_loop.lif_loop` keeps its residuals and its hand-written backward on every
backend; only the two time recurrences inside it change with the backend (chosen when the step
is lowered, ``jax.lax.platform_dependent``):

* XLA:CPU (``lif_loop``'s own loops): an in-place ``fori_loop`` over one ``[T, ...]`` buffer.
  XLA:CPU runs it as one kernel per step with no copies.
* GPU and TPU (this module): a ``lax.scan`` unrolled over all T steps (up to ``MAX_UNROLL``).
  XLA:GPU fuses the whole unrolled recurrence, elementwise in every neuron, into one kernel per
  pass that keeps the membrane in registers and writes each step's ``H[t]`` (forward) or
  ``dL/dH[t]`` (backward) once; the backward pass also sums the time constant's (and a learnable
  surrogate alpha's) gradient terms per neuron, so no reduction re-reads ``H`` and ``dL/dH``
  afterwards. The in-place ``fori_loop`` costs XLA:GPU 3-4 kernels per step and layer, copying
  slices before each update: on the H200 plan the DVS128 Gesture train step (float32, batch 16)
  has 1,178 launches and reads and writes 111.7 GB with it, 254 launches and 68.3 GB with this
  formulation at 40ca31b (252 and 64.75 GB on main at 0e84a90, with BatchNorm's GPU backward;
  docs/explanation/performance.md, "GPU and TPU plan", commands there).

The two give the same values: the same elementwise formulas in the same order; only the loop
construct differs (tested on CPU, where both run).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

Array = jax.Array

# Longest sequence unrolled completely; a longer one is unrolled by blocks of this many steps.
MAX_UNROLL = 64


def _unroll(time_steps: int) -> int | bool:
    return True if time_steps <= MAX_UNROLL else MAX_UNROLL


def forward_h(x_seq: Array, v0: Array, charge: Callable, reset: Callable) -> Array:
    """``H[t] = charge(V[t-1], X[t])`` with ``V[t] = reset(H[t])``, ``V[-1] = v0``: ``[T, ...]``."""

    def step(v, x):
        h = charge(v, x)
        return reset(h), h

    _, h = jax.lax.scan(step, v0, x_seq, unroll=_unroll(x_seq.shape[0]))
    return h


def backward(step: Callable, init: tuple, xs: tuple) -> tuple:
    """The reverse recurrence: ``(ys [T, ...], *final carry)`` of ``step(*xs[t], *carry) ->
    (y[t], *carry)`` for t = T-1 .. 0 (:func:`plif_jax.ops.lif_loop.lif_loop`'s backward step:
    ``y`` = dL/dH[t], the carry dL/dV[t] and the sums of the parameters' gradient terms)."""

    def body(carry, x):
        y, *carry = step(*x, *carry)
        return tuple(carry), y

    carry, ys = jax.lax.scan(body, tuple(init), xs, reverse=True, unroll=_unroll(xs[0].shape[0]))
    return (ys, *carry)
