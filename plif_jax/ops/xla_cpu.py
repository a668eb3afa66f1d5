"""Workarounds for slow XLA:CPU paths: same values as the plain JAX op, faster code on CPU.

Each function here computes what a one-line JAX expression computes (the forward is that
expression, or an equal one), with a hand-written gradient or a reformulation that XLA:CPU runs
at full speed where the plain form hits one of its slow paths. The paper's layers
(:mod:`plif_jax.layers`) and networks (:mod:`plif_jax.models`) call them; nothing here changes
a result beyond float summation order where said. The figures and the reasoning are in
BENCHMARKS.md, section "What was changed for speed, and what each change bought" (items 2, 6, 8)
and section "Memory" / "Rematerialisation".

* :func:`max_pool2x2` (used by ``layers.pool2x2(x, 'max')``): 2x2/2 VALID max pooling as
  reshapes + ``maximum`` with a ``custom_vjp`` that routes the gradient to the first maximum of
  each window from an int8 index. Reason: XLA:CPU's ``reduce_window`` max and its
  ``select_and_scatter`` gradient (what ``nnx.max_pool`` lowers to) are several times slower
  (forward+backward on [128, 28, 28, 128]: 578 ms -> 100 ms, BENCHMARKS.md "What was changed",
  item 2). Values and gradients are bit-identical to ``nnx.max_pool``. Measured by
  ``python -m benchmarks --suite networks --impl both`` (``reference`` swaps
  ``nnx.max_pool`` and the pre-speed-work neuron back in, same process; see
  ``benchmarks/workloads.py``).
* :func:`repeat_time` (the static nets' encoder output fed at every time step): a broadcast
  whose backward sums the T gradients as a chain of fused elementwise adds. Reason: the
  transpose of ``broadcast_to`` over T is a reduction over the major (time) axis, which XLA:CPU
  runs tens of times slower with both its default and its YNN reduce emitters
  (``jnp.sum(g, axis=0)`` on [8, 16, 28, 28, 128]: 68-99 ms vs 1.3-2.1 ms for the add chain;
  MNIST train step 291 -> 248 ms; BENCHMARKS.md "What was changed", item 6). Same values up to
  the order of the float additions. Measured by the MNIST / Fashion-MNIST train steps of
  ``python -m benchmarks --suite networks`` (the per-op figures came from
  development scripts; there is no A/B switch for this one in the harness).
* :func:`conv3x3_loop_friendly` / :func:`apply_conv3x3_in_loop` (the convolutions inside the
  time-chunked ``remat_chunk`` forward): the 3x3 / stride 1 / padding 1 NHWC convolution with a
  backward that writes both gradient convolutions in the canonical NHWC x HWIO form. Reason:
  XLA:CPU canonicalises the convolutions autodiff emits only outside loops; inside a
  ``lax.scan`` body they run on its generic path, 10-20x slower (a first remat version took
  147 s per step; BENCHMARKS.md "Memory" / "Rematerialisation"). Gradients equal
  autodiff's to 1e-12 in float64. Measured by ``python -m benchmarks --suite memory``
  (train step with ``remat_chunk`` in 1, 2, 4, 5, 10 against the default). On the default
  (loop-free) path it gains nothing (BENCHMARKS.md "What was changed", item 9), so only the
  chunked forward uses it.

* :func:`dense` / :func:`dense_dot_general` (``layers.linear``'s ``dot_general``): the Linear
  layer's matmul with a backward that computes the weight gradient from the folded rows of input
  and output gradient. Reasons: autodiff's form made XLA:CPU write the output gradient
  transposed first (a strided pass over ``[T*B, out]``) before its weight-gradient dot; and
  XLA:CPU's fast dot (YNNPACK) takes only the ``[M, K] x [K, N]`` form, so on CPU the input is
  transposed into a buffer of its own and the gradient is that plain dot (1.6x faster at
  ``n = 4096``; BENCHMARKS.md, "The peers"). The input gradient is bit-identical to autodiff's,
  the weight gradient within ~1e-6 relative (YNNPACK's summation order). Measured by
  ``python -m benchmarks --suite peers`` and ``--suite networks``.

The other XLA:CPU setting the project relies on is a flag, not code: ``experiments/train.py
--xla_cpu_ynn`` (default on) adds ``--xla_cpu_experimental_ynn_fusion_type=dot,reduce`` to
``XLA_FLAGS`` (BENCHMARKS.md "What was changed", items 4 and 7). It stays in the CLI because it
must run before JAX loads, and this module imports JAX.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax.ops import platform

Array = jax.Array

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
_PAD1 = ((1, 1), (1, 1))


# --- 3x3 convolution inside a loop body --------------------------------------------------------


def _conv3x3_forward(x: Array, kernel: Array) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), _PAD1, dimension_numbers=_NHWC_HWIO)


@jax.custom_vjp
def conv3x3_loop_friendly(x: Array, kernel: Array) -> Array:
    """The 3x3 / stride 1 / padding 1 NHWC convolution of ``layers.conv3x3``, for a loop body.

    The forward is the same ``conv_general_dilated`` as ``nnx.Conv``'s (identical values). The
    backward writes both gradient convolutions in the canonical NHWC x HWIO form: XLA:CPU
    canonicalises the convolutions autodiff emits only outside loops; inside a ``lax.scan`` body
    they run on its generic path, an order of magnitude slower (development figures in
    BENCHMARKS.md, "Rematerialisation").
    """
    return _conv3x3_forward(x, kernel)


def _conv3x3_loop_friendly_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv3x3_forward(x, kernel), (x, kernel)


def _conv3x3_loop_friendly_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    # dx: the transposed convolution = the same convolution with the kernel rotated by 180
    # degrees and its in/out channels swapped (HWIO again).
    dx = _conv3x3_forward(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    # dk[kh, kw, i, o] = sum_{b,h,w} x_pad[b, h+kh, w+kw, i] g[b, h, w, o]: a convolution with
    # x's channels as the batch and the batch as the features, [I,H,W,B] x [H,W,B,O] -> [I,3,3,O].
    dk = _conv3x3_forward(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3))
    return dx.astype(x.dtype), dk.transpose(1, 2, 0, 3).astype(kernel.dtype)


conv3x3_loop_friendly.defvjp(_conv3x3_loop_friendly_fwd, _conv3x3_loop_friendly_bwd)


def apply_conv3x3_in_loop(conv: nnx.Conv, x: Array) -> Array:
    """``conv(x)`` for a ``layers.conv3x3`` module through :func:`conv3x3_loop_friendly`."""
    if (
        tuple(conv.kernel_size) != (3, 3)
        or tuple(conv.strides) != (1, 1)
        or tuple(map(tuple, conv.padding)) != _PAD1
        or conv.use_bias
        or conv.feature_group_count != 1
    ):
        raise ValueError(
            "apply_conv3x3_in_loop supports the 3x3, stride 1, padding 1, bias-free convolutions "
            "of layers.conv3x3 only; call the module itself for other convolutions"
        )
    # nnx.Conv casts input and kernel to its compute dtype (promote_dtype) before convolving.
    dtype = conv.dtype or jnp.promote_types(x.dtype, conv.kernel[...].dtype)
    return conv3x3_loop_friendly(x.astype(dtype), conv.kernel[...].astype(dtype))


# --- 2x2 max pooling without reduce_window -----------------------------------------------------


def _pool_windows(x: Array) -> tuple[Array, Array, Array, Array]:
    """The four elements of every 2x2 window of ``[..., H, W, C]``, in row-major window order."""
    *lead, h, w, c = x.shape
    xr = x[..., : h // 2 * 2, : w // 2 * 2, :].reshape(*lead, h // 2, 2, w // 2, 2, c)
    return xr[..., 0, :, 0, :], xr[..., 0, :, 1, :], xr[..., 1, :, 0, :], xr[..., 1, :, 1, :]


def _max_pool2x2_fwd(x: Array) -> tuple[Array, tuple[Array, tuple[int, ...]]]:
    a, b, c, d = _pool_windows(x)
    m = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
    # Which element won, the FIRST maximum in row-major order (ties are the rule on 0/1 spikes):
    # the choice of XLA's select_and_scatter (`ge`) and of PyTorch's CPU max_pool2d backward.
    # An int8 index is also 1/4 (f32) of the memory of keeping the input for the backward.
    idx = jnp.where(a == m, 0, jnp.where(b == m, 1, jnp.where(c == m, 2, 3))).astype(jnp.int8)
    return m, (idx, x.shape)


@jax.custom_vjp
def max_pool2x2(x: Array) -> Array:
    """2x2/2 VALID max pooling of ``[..., H, W, C]`` as reshapes + maximum (floors odd sizes).

    XLA:CPU's reduce_window max and its select_and_scatter gradient are several times slower;
    results and gradients are identical to ``nnx.max_pool`` (the gradient goes to the first
    maximum of each window in row-major order).
    """
    return _max_pool2x2_fwd(x)[0]


def _max_pool2x2_bwd(res, g: Array) -> tuple[Array]:
    idx, shape = res
    *lead, h, w, c = shape
    # One elementwise pass over [..., H/2, 2, W/2, 2, C]: the window position (row * 2 + col)
    # that won receives the gradient (a stack of four masked copies costs a concatenate).
    position = (2 * jnp.arange(2)[:, None, None, None] + jnp.arange(2)[None, None, :, None]).astype(
        idx.dtype
    )  # [2, 1, 2, 1]
    won = idx[..., :, None, :, None, :] == position
    dx = jnp.where(won, g[..., :, None, :, None, :], jnp.zeros((), g.dtype))
    dx = dx.reshape(*lead, h // 2 * 2, w // 2 * 2, c)
    pad = [(0, 0)] * len(lead) + [(0, h % 2), (0, w % 2), (0, 0)]
    return (jnp.pad(dx, pad),)


max_pool2x2.defvjp(_max_pool2x2_fwd, _max_pool2x2_bwd)


# --- repeat over time with an add-chain backward -----------------------------------------------


def _sum_over_time(g: Array) -> Array:
    """``sum(g, axis=0)`` as a chain of elementwise adds (XLA:CPU's major-axis reduce is slow).

    On a 2-core x86 CPU (jax 0.10.2) the add chain was tens of times faster at MNIST size with
    XLA's default and YNN reduce emitters alike (development figures in BENCHMARKS.md, "What was
    changed", item 6).
    """
    while g.shape[0] > 16:  # fold in halves first: keeps each fused add chain short
        half = g.shape[0] // 2
        folded = g[:half] + g[half : 2 * half]
        g = jnp.concatenate([folded, g[2 * half :]]) if g.shape[0] % 2 else folded
    total = g[0]
    for t in range(1, g.shape[0]):
        total = total + g[t]
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def repeat_time(x: Array, time_steps: int) -> Array:
    """``x`` ``[B, ...]`` repeated at every time step: ``[time_steps, B, ...]``.

    The static nets feed their encoder's output at each of the T steps. The forward is a
    broadcast; the backward sums the T gradients with fused elementwise adds instead of the
    reduction XLA would emit for ``broadcast_to``'s transpose (the same sum, up to the order of
    the float additions).
    """
    return jnp.broadcast_to(x[None], (time_steps, *x.shape))


def _repeat_time_fwd(x, time_steps):
    return repeat_time(x, time_steps), None


def _repeat_time_bwd(time_steps, _, g):
    return (_sum_over_time(g),)


repeat_time.defvjp(_repeat_time_fwd, _repeat_time_bwd)


# --- Linear: the weight gradient without a transposed copy -------------------------------------


@jax.custom_vjp
def dense(x: Array, kernel: Array) -> Array:
    """``x @ kernel`` over the last axis of ``x`` (``[..., in] x [in, out]``), as ``nnx.Linear``.

    The forward is the same ``dot_general`` (identical values). The backward takes the weight
    gradient ``dW = X^T G`` from the folded rows of ``x`` and of the output gradient ``G``
    (autodiff's transpose rule made XLA:CPU first write ``G`` transposed, ``[out, rows]``, a
    strided pass over the whole ``[T*B, out]`` tensor); on XLA:CPU as the plain dot of ``X``
    transposed (:func:`_weight_gradient_cpu`), elsewhere as one dot over axis 0 of both
    (BENCHMARKS.md, "The peers"). The input gradient is bit-identical to autodiff's; on CPU the
    weight gradient is within ~1e-6 relative of it (YNNPACK's summation order).
    """
    return _dense_forward(x, kernel)


def _dense_forward(x: Array, kernel: Array) -> Array:
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _dense_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _dense_forward(x, kernel), (x, kernel)


def _weight_gradient(x2: Array, g2: Array) -> Array:
    """``dW = X^T G`` as one dot over the rows of both (GPUs and TPUs: their matmuls take either
    operand transposed)."""
    return jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))


def _weight_gradient_cpu(x2: Array, g2: Array) -> Array:
    """``dW = X^T G`` on XLA:CPU: ``X`` transposed into a buffer of its own first, then the plain
    ``[in, rows] x [rows, out]`` dot. XLA:CPU runs its fast dot (YNNPACK) on that form only; the
    contraction over the rows of both went to Eigen, 1.6x slower at ``[1600, 4096]`` (691 ->
    439 ms, the copy included) and ``[8000, 4096]`` (3.24 -> 1.99 s), 1.1x at ``n = 1024``; the
    same at MNIST's FC (``[128, 6272] x [128, 2048]``) (2026-12-04, AMD EPYC). The sums run in
    YNNPACK's order: ~1e-6 relative from the Eigen dot's."""
    xt = jax.lax.optimization_barrier(x2.T)  # materialised: XLA would fold a bare transpose
    return jax.lax.dot_general(xt, g2, (((1,), (0,)), ((), ())))


def _dense_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dk = platform.by_platform(_weight_gradient_cpu, _weight_gradient, x2, g2)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> Array:
    """``jax.lax.dot_general`` for ``nnx.Linear(dot_general=...)``: :func:`dense` when it is the
    plain ``[..., in] x [in, out]`` contraction, ``lax.dot_general`` itself otherwise."""
    plain = (((lhs.ndim - 1,), (0,)), ((), ()))
    extra = {k: v for k, v in kwargs.items() if v is not None}
    if (
        _as_tuples(dimension_numbers) == plain
        and rhs.ndim == 2
        and precision is None
        and preferred_element_type is None
        and not extra
    ):
        return dense(lhs, rhs)
    return jax.lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision,
        preferred_element_type=preferred_element_type,
        **extra,
    )


def _as_tuples(dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    return ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
