"""FLOP counting and the machine's measured peak, for the roofline column.

``count_flops`` walks a function's jaxpr and counts the multiply-adds of every ``dot_general``
and ``conv_general_dilated`` (x2 FLOPs each), multiplying a ``scan`` body by its length.
Elementwise work (the neurons, BatchNorm, Adam) is left out on purpose: it is memory-bound, and
the roofline question is how close the step's matmuls and convolutions run to the machine's
measured matmul/conv peak. XLA's own ``cost_analysis()`` is reported beside it; it counts a loop
body once, not per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import timing


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    rhs_spec = dn.rhs_spec  # (out-feature dim, in-feature dim, *spatial dims) of the kernel
    macs_per_out = rhs.shape[rhs_spec[1]] * math.prod(rhs.shape[i] for i in rhs_spec[2:])
    return 2.0 * math.prod(out.shape) * macs_per_out


def _dot_flops(eqn) -> float:
    lhs = eqn.invars[0].aval
    out = eqn.outvars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[i] for i in lhs_contract)


def _sub_jaxprs(value) -> list:
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params["branches"]))
        else:
            inner = sum(_jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def count_flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matmul + convolution FLOPs of one call of ``fn(*args)`` (traced, not run)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))


def jaxpr_flops(closed_jaxpr) -> float:
    """Matmul + convolution FLOPs of a (closed) jaxpr, e.g. from ``jax.jit(f).trace(...)``."""
    return _jaxpr_flops(getattr(closed_jaxpr, "jaxpr", closed_jaxpr))


def xla_cost_flops(compiled) -> float | None:
    """XLA's ``cost_analysis()['flops']`` of a compiled executable, or None if unavailable."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return None if flops is None else float(flops)


def measure_peak(*, quick: bool = False, repeats: int = 5) -> dict[str, dict[str, float]]:
    """The machine's f32 peak measured now: a large matmul and a conv forward+backward.

    Args:
      quick: smaller problems (a smoke run; the figure is then a lower bound of the peak).
      repeats: timed repeats (median).

    Returns:
      ``{'matmul': {...}, 'conv_fwd_bwd': {...}}``, each with the problem, ``flops``, ``median_s``,
      ``gflops_per_s``.
    """
    n = 512 if quick else 2048
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    t_mm, _, _ = timing.time_jax(matmul, (a, b), repeats=repeats)
    mm_flops = 2.0 * n**3

    # A conv of the paper nets' kind (3x3, 128 -> 128 channels, NHWC), forward + dx + dw.
    batch, hw, c = (2, 32, 32) if quick else (8, 64, 128)
    x = jax.random.normal(key_a, (batch, hw, hw, c), jnp.float32)
    w = jax.random.normal(key_b, (3, 3, c, c), jnp.float32) * 0.05

    def conv_loss(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y * y)

    conv_grad = jax.jit(jax.grad(conv_loss, argnums=(0, 1)))
    t_conv, _, jaxpr = timing.time_jax(conv_grad, (x, w), repeats=repeats)
    conv_flops = jaxpr_flops(jaxpr)
    return {
        "matmul": {
            "problem": f"f32 [{n},{n}] @ [{n},{n}]",
            "flops": mm_flops,
            "median_s": t_mm["median_s"],
            "gflops_per_s": mm_flops / t_mm["median_s"] / 1e9,
        },
        "conv_fwd_bwd": {
            "problem": f"f32 conv 3x3 NHWC, B={batch}, {hw}x{hw}, {c}->{c}, forward + dx + dw",
            "flops": conv_flops,
            "median_s": t_conv["median_s"],
            "gflops_per_s": conv_flops / t_conv["median_s"] / 1e9,
        },
    }
