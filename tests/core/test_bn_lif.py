"""BatchNorm then the LIF neuron as one op (``plif_jax.ops.bn_lif``): the NVIDIA GPU kernels,
run here by Pallas's interpreter (``platform.formulation("gpu")``), against BatchNorm then the
neuron in the accelerator formulation (``tests/core/test_lif_formulations.py`` ties that one to
the CPU program): the same spikes and batch statistics, gradients up to float reassociation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plif_jax import surrogate
from plif_jax.ops import bn_lif, platform

T, B, SIZE, C = 5, 4, 4, 8  # rows per kernel instance: 512 // 8 = 64 = B * SIZE * SIZE


def _settings(per_step, **kw):
    axes, keep = ((1, 2, 3), (T, 1, 1, 1, C)) if per_step else ((0, 1, 2, 3), (1, 1, 1, 1, C))
    base = dict(axes=axes, keep=keep, epsilon=1e-5, axis_name=None, v_threshold=1.0,
                v_reset=0.0, detach_reset=True, surrogate=surrogate.ATAN,
                out_dtype=jnp.dtype(jnp.float32))  # fmt: skip
    return bn_lif.Settings(**{**base, **kw})


def _run(name, s, x, coef):
    C = x.shape[-1]

    def loss(x, scale, bias, w, alpha):
        v0 = jnp.full(x.shape[1:], s.v_reset, s.out_dtype)
        decay = jax.nn.sigmoid(w).astype(s.out_dtype)
        spikes, mean, var = bn_lif.bn_lif(x, scale, bias, decay, alpha.astype(s.out_dtype), v0, s)
        return jnp.sum(coef * spikes.astype(jnp.float32)), (spikes, mean, var)

    rng = np.random.default_rng(3)
    scale = jnp.asarray(rng.normal(1.2, 0.3, C), jnp.float32)
    bias = jnp.asarray(rng.normal(0.5, 0.3, C), jnp.float32)
    with platform.formulation(name):
        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))
        return f(x, scale, bias, jnp.float32(0.3), jnp.float32(2.0))


@pytest.mark.parametrize(
    "per_step, kind, detach_reset, v_reset, dtype, size",
    [
        (True, "atan", True, 0.0, jnp.float32, SIZE),  # the paper's setting
        (False, "sigmoid", False, -0.2, jnp.float32, SIZE),
        (True, "atan", False, 0.0, jnp.bfloat16, SIZE),  # BatchNorm in float32, bf16 neuron
        (True, "atan", True, 0.0, "bfloat16 net", SIZE),  # the conv output in bfloat16 too
        # 4 blocks of 64 rows, which one backward instance runs in turn (summing over them)
        (True, "atan", True, 0.0, jnp.float32, 2 * SIZE),
        (False, "atan", True, 0.0, jnp.float32, 2 * SIZE),
    ],
)
def test_kernels_give_the_spikes_and_gradients_of_the_separate_ops(
    per_step, kind, detach_reset, v_reset, dtype, size
):
    x_dtype = jnp.bfloat16 if dtype == "bfloat16 net" else jnp.float32
    dtype = jnp.bfloat16 if dtype == "bfloat16 net" else dtype
    s = _settings(per_step, surrogate=surrogate.get(kind), detach_reset=detach_reset,
                  v_reset=v_reset, out_dtype=jnp.dtype(dtype))  # fmt: skip
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0.3, 2.0, (T, B, size, size, C)), x_dtype)
    coef = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    grads_acc, (s_acc, m_acc, v_acc) = _run("accelerator", s, x, coef)
    grads_gpu, (s_gpu, m_gpu, v_gpu) = _run("gpu", s, x, coef)
    assert 0.1 < float(jnp.mean(s_acc.astype(jnp.float32))) < 0.9
    assert s_gpu.dtype == dtype and s_gpu.shape == x.shape
    np.testing.assert_array_equal(np.asarray(s_gpu), np.asarray(s_acc))
    # The same one-pass statistics; XLA may order the sums differently in the two programs.
    np.testing.assert_allclose(np.asarray(m_gpu), np.asarray(m_acc), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v_gpu), np.asarray(v_acc), rtol=1e-6)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for got, want in zip(grads_gpu, grads_acc, strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol * scale)


def test_the_gpu_program_is_the_kernels_and_other_backends_keep_the_separate_ops(monkeypatch):
    s = _settings(True)
    x = jnp.ones((T, B, SIZE, SIZE, C), jnp.float32)

    def f(x):
        v0 = jnp.zeros(x.shape[1:])
        out = bn_lif.bn_lif(x, jnp.ones(C), jnp.zeros(C), jnp.float32(0.5), jnp.float32(2.0), v0, s)
        return jnp.sum(out[0])

    # Without jax's CUDA plugin nothing can be lowered for a GPU: the kernels are not traced.
    monkeypatch.setattr(platform, "cuda_installed", lambda: False)
    assert "pallas_call" not in str(jax.make_jaxpr(jax.grad(f))(x))
    # With it, traced for cuda and chosen at lowering: only the CPU branch is lowered here.
    monkeypatch.setattr(platform, "cuda_installed", lambda: True)
    jaxpr = str(jax.make_jaxpr(jax.grad(f))(x))
    assert "pallas_call" in jaxpr and "platform_index" in jaxpr
    cpu = jax.jit(jax.grad(f)).lower(x).as_text()
    assert "triton" not in cpu and "pallas" not in cpu


@pytest.mark.parametrize(
    "shape, rows",
    [
        ((20, 16, 128, 128, 128), 4),  # DVS128 Gesture's first layer
        ((8, 16, 28, 28, 128), 4),
        ((8, 16, 32, 32, 256), 2),
        ((33, 16, 8, 8, 128), None),  # more steps than the registers hold
        ((8, 16, 8, 8, 96), None),  # not a power of two (a Triton block dimension)
        ((8, 1, 1, 1, 8), None),  # 1 row: not a multiple of 64
    ],
)
def test_kernel_rows(shape, rows):
    assert bn_lif.kernel_rows(shape) == rows
