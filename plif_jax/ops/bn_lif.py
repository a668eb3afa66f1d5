"""BatchNorm (training) then the LIF neuron as one op: three Pallas kernels on NVIDIA GPUs.

A ``Conv BN PLIF`` layer of the paper's networks keeps, with BatchNorm and the neuron as
separate ops (:mod:`plif_jax.ops.batch_norm`, :mod:`plif_jax.ops.lif_loop`), two layer-sized
residuals: the conv output (BatchNorm's) and ``H[t]`` (the neuron's), and its backward writes
``dL/dH`` beside them. On the H200 plan of the DVS128 Gesture train step (float32, batch 16) the
first layer's three tensors, 2.25-2.5 GiB each, were live together at its neuron's backward:
9.35 GiB of temporaries. XLA does not fuse a recomputed recurrence into its consumers
(``benchmarks/studies/fused_bn_plif``); a kernel that keeps a neuron's ``T`` steps in registers
needs neither tensor (:mod:`plif_jax.ops.bn_lif_kernels`):

* forward: BatchNorm's statistics (one pass over the conv output ``x``), then a kernel that
  reads ``x`` once, applies BatchNorm's per-channel affine map and the LIF recurrence, and
  writes the spikes as int8;
* backward: a kernel that reads ``x`` and ``dL/dS`` once, recomputes ``H[0..T-1]`` in
  registers, runs the reverse recurrence (:mod:`plif_jax.ops.lif_loop`'s formulas) and writes
  ``dL/dY`` over ``dL/dS``, with the sums BatchNorm's backward needs (per step, of ``dL/dY`` and
  ``dL/dY * xhat``) and those of the time constant's and surrogate alpha's gradient terms; then
  a kernel that writes BatchNorm's ``dL/dx`` over ``dL/dY``
  (:func:`plif_jax.ops.batch_norm.input_gradient`).

The only layer-sized residual is ``x``, which BatchNorm's backward needs anyway. On the H200 plan
the DVS128 Gesture train step (float32, batch 16) plans 5.82 GiB of temporaries and reads and
writes 48.4 GB (9.35 GiB and 54.4 GB with the separate ops; docs/explanation/performance.md,
"GPU and TPU plan").

On CPU and TPU, and for shapes the kernels do not take (:func:`kernel_rows`), the op is
BatchNorm then :func:`plif_jax.ops.lif_loop.lif_loop` (the CPU program of every recorded output,
unchanged). The choice is made when the step is lowered
(:func:`plif_jax.ops.platform.by_platform`'s ``gpu``; the kernels are traced only where jax's
CUDA plugin is installed);
``platform.formulation("gpu")`` runs them in Pallas's interpreter on CPU (tests): the same
spikes as the separate ops, gradients equal up to float reassociation
(``tests/core/test_bn_lif.py``, ``tests/training/test_sharded.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from plif_jax.ops import batch_norm, lif_loop, platform

# Longest sequence kept in registers (the backward holds H[0..T-1] of its block).
MAX_STEPS = 32
# Elements of one time step per kernel instance (rows * channels); 4 warps -> 4 per thread.
BLOCK = 512


@dataclasses.dataclass(frozen=True)
class Settings:
    """The op's static arguments (hashable: a ``custom_vjp`` non-differentiable argument)."""

    axes: tuple[int, ...]
    keep: tuple[int, ...]
    epsilon: float
    axis_name: Any
    v_threshold: float
    v_reset: float
    detach_reset: bool
    surrogate: Any  # plif_jax.surrogate.Surrogate (its partials)
    out_dtype: Any
    unroll: int = 1
    learn_alpha: bool = False  # alpha's gradient is used (lif_loop.lif_loop's learn_alpha)
    interpret: bool = False
    rows: int = 0  # set for the kernels: kernel_rows of the input


def kernel_rows(shape: tuple[int, ...]) -> int | None:
    """Rows of ``[T, rows, C]`` one kernel instance takes for ``x`` of ``shape`` ``[T, ..., C]``,
    or None where the kernels do not apply: more than :data:`MAX_STEPS` steps, a channel count
    that is not a power of two (a Triton block dimension), rows not divisible by the block."""
    steps, channels = shape[0], shape[-1]
    rows_total = 1
    for d in shape[1:-1]:
        rows_total *= d
    if not 1 <= steps <= MAX_STEPS or channels < 1 or channels & (channels - 1):
        return None
    rows = max(1, BLOCK // channels)
    return rows if rows_total % rows == 0 else None


def bn_lif(xs, scale, bias, decay, alpha, v0, s: Settings):
    """``(spikes, mean, var)``: BatchNorm's training output of ``xs`` ``[T, B, ..., C]``
    (computed in :func:`plif_jax.ops.batch_norm.stat_dtype`, as ``scale`` and ``bias`` are;
    statistics over ``s.axes``, shaped ``s.keep``) cast to ``s.out_dtype``, then the LIF
    neuron (``decay`` = 1/tau and ``alpha``: ``out_dtype`` scalars) from ``v0``, which must be
    ``V_reset`` everywhere (the kernels start there; ``[B, ..., C]``, typed as the caller's
    membrane). ``mean``, ``var``: the batch statistics (for the running averages)."""

    def separate(xs, scale, bias, decay, alpha):
        y, mean, var = batch_norm.normalize(
            xs.astype(batch_norm.stat_dtype(xs)), scale, bias, axes=s.axes, keep=s.keep,
            epsilon=s.epsilon, axis_name=s.axis_name,
        )  # fmt: skip
        spikes, _ = lif_loop.lif_loop(
            y.astype(s.out_dtype), v0, decay, alpha, s.v_threshold, s.v_reset, s.detach_reset,
            s.surrogate, s.unroll, s.learn_alpha,
        )  # fmt: skip
        return spikes, mean, var

    args = (xs, scale, bias, decay, alpha)
    if kernel_rows(xs.shape) is None:
        return separate(*args)

    def kernels(*args):  # traced only where it can be lowered (platform.by_platform)
        from plif_jax.ops import bn_lif_kernels  # Pallas: imported only then

        interpret = platform.forced() == "gpu"  # the kernels in Pallas's interpreter (tests)
        rows = kernel_rows(xs.shape)
        return bn_lif_kernels.fused(*args, dataclasses.replace(s, interpret=interpret, rows=rows))

    return platform.by_platform(separate, separate, *args, gpu=kernels)
