"""The ops in their formulations: XLA:CPU's (the neuron's in-place loop, BatchNorm by autodiff),
GPU/TPU's (the neuron's scan, BatchNorm's hand-written backward) and, for a network, NVIDIA
GPUs' (BatchNorm and PLIF as one op: ``plif_jax.ops.bn_lif``, ``tests/core/test_bn_lif.py``).

The backend picks one when a step is lowered (``plif_jax.ops.platform``); here both run on CPU
(``platform.formulation``) and must give the same spikes and gradients.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import models, neurons, surrogate
from plif_jax.ops import batch_norm, lif_native, lif_scan, platform
from tests.support import lif

pytestmark = pytest.mark.usefixtures("optimized_compile")  # as users compile it


def _grads(name, x, coef, **kw):
    return lif.grads(platform.formulation(name), x, coef, **kw)


@pytest.mark.parametrize(
    "kind, detach_reset, T, max_unroll",
    [
        ("atan", True, 6, lif_scan.MAX_UNROLL),  # unrolled fully
        ("sigmoid", False, 6, lif_scan.MAX_UNROLL),
        ("atan", False, 11, 4),  # unrolled by blocks of 4 (a remainder of 3)
    ],
)
def test_accelerator_formulation_equals_the_cpu_loop(
    kind, detach_reset, T, max_unroll, monkeypatch
):
    monkeypatch.setattr(lif_scan, "MAX_UNROLL", max_unroll)
    rng = np.random.default_rng(T)
    x = jnp.asarray(rng.normal(0.6, 1.5, (T, 2, 5)), jnp.float32)
    coef = jnp.asarray(rng.normal(size=(T, 2, 5)), jnp.float32)
    kw = dict(detach_reset=detach_reset, surrogate=surrogate.get(kind), v_reset=-0.2)
    grads_cpu, s_cpu = _grads("cpu", x, coef, **kw)
    grads_acc, s_acc = _grads("accelerator", x, coef, **kw)
    assert 0 < float(jnp.mean(s_cpu)) < 1
    np.testing.assert_array_equal(np.asarray(s_acc), np.asarray(s_cpu))
    for got, want in zip(grads_acc, grads_cpu, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_the_backend_chooses_at_lowering_and_the_formulations_differ_in_program():
    x = jnp.ones((8, 2, 3), jnp.float32)
    f = lambda x: jnp.sum(neurons.lif_multistep(x, 0.5))  # noqa: E731
    with lif_native.enabled(False):  # XLA's loops
        cpu_default = jax.jit(jax.grad(f)).lower(x).compile().as_text()
    assert " while(" in cpu_default and " conditional(" not in cpu_default
    if lif_native.usable(jnp.float32, "atan"):  # the native kernel's two calls, no loop
        cpu_native = jax.jit(jax.grad(f)).lower(x).compile().as_text()
        assert " while(" not in cpu_native and " conditional(" not in cpu_native
        for target in lif_native.TARGETS.values():
            assert f'custom_call_target="{target}"' in cpu_native
    with platform.formulation("accelerator"):
        unrolled = jax.jit(jax.grad(f)).lower(x).compile().as_text()
    assert " while(" not in unrolled  # T = 8 <= MAX_UNROLL: no loop left
    with pytest.raises(ValueError, match="formulation must be one of"):
        with platform.formulation("tpu"):
            pass


def test_a_network_train_step_is_the_same_in_both_formulations():
    model = models.create_model(
        "nmnist", rngs=nnx.Rngs(0), channels=4, number_layer=1, input_size=8, T=5, dropout=0.0
    )
    x = jnp.asarray(np.random.default_rng(0).poisson(0.4, (5, 2, 2, 8, 8)), jnp.float32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        m = nnx.merge(graphdef, params, rest, copy=True)
        counts = m(x)
        return jnp.sum(jnp.square(counts / 5.0 - 0.3)), counts

    out = {}
    for name in platform.FORMULATIONS:
        with platform.formulation(name):
            out[name] = jax.jit(jax.grad(loss, has_aux=True))(params)
    (g_cpu, c_cpu), (g_acc, c_acc) = out["cpu"], out["accelerator"]
    np.testing.assert_array_equal(np.asarray(c_acc), np.asarray(c_cpu))
    for a, b in zip(jax.tree.leaves(g_acc), jax.tree.leaves(g_cpu), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # NVIDIA GPUs: the conv layer's BatchNorm and PLIF as one op (plif_jax.ops.bn_lif's kernels,
    # in Pallas's interpreter here): the same spike counts, gradients up to reassociation.
    g_gpu, c_gpu = out["gpu"]
    np.testing.assert_array_equal(np.asarray(c_gpu), np.asarray(c_acc))
    for a, b in zip(jax.tree.leaves(g_gpu), jax.tree.leaves(g_acc), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_step", [True, False])
def test_batch_norm_backward_equals_autodiff(per_step):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(0.7, 2.0, (3, 4, 5, 5, 6)), jnp.float32)  # [T, B, H, W, C]
    scale = jnp.asarray(rng.normal(1.0, 0.3, 6), jnp.float32)
    bias = jnp.asarray(rng.normal(0.0, 0.3, 6), jnp.float32)
    axes, keep = ((1, 2, 3), (3, 1, 1, 1, 6)) if per_step else ((0, 1, 2, 3), (1, 1, 1, 1, 6))
    stat_shape = (3, 6) if per_step else (6,)
    gy, g_mean, g_var = (
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in (x.shape, stat_shape, stat_shape)
    )

    def loss(x, scale, bias):
        y, mean, var = batch_norm.normalize(x, scale, bias, axes=axes, keep=keep, epsilon=1e-5)
        # Cotangents on the statistics too (the layer's are zero: they only feed the running
        # averages under stop_gradient), so every term of the backward is checked.
        return jnp.sum(gy * y) + jnp.sum(g_mean * mean) + jnp.sum(g_var * var), (y, mean, var)

    out = {}
    for name in platform.FORMULATIONS:
        with platform.formulation(name):
            out[name] = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(x, scale, bias)
    (g_cpu, v_cpu), (g_acc, v_acc) = out["cpu"], out["accelerator"]
    for a, b in zip(v_acc, v_cpu, strict=True):  # statistics in one pass vs two: reassociated
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(g_cpu[0]))) > 1e-2
    for a, b in zip(g_acc, g_cpu, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_batch_norm_one_pass_statistics_keep_a_small_variance_under_a_large_mean():
    # The accelerators' statistics come from one pass (sums of x - c and its square, c one
    # sample per channel). Unshifted, E[x^2] - E[x]^2 in float32 loses a spread of 0.05 under a
    # mean of 1000 entirely (E[x^2] ~ 1e6 has an ulp of 0.06); shifted it keeps it. A constant
    # channel gets a variance of exactly 0, never a negative one.
    rng = np.random.default_rng(2)
    x = rng.normal(1000.0, 0.05, (4, 8, 3, 3, 3)).astype(np.float32)
    x[..., 2] = 7.0
    x = jnp.asarray(x)
    axes, keep = (1, 2, 3), (4, 1, 1, 1, 3)  # per-step statistics, [T, C]
    mean, var = batch_norm.stats_one_pass(x, axes, keep, None)
    mean2, var2 = batch_norm._stats(x, axes, keep, None)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(mean2), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(var[:, :2]), np.asarray(var2[:, :2]), rtol=1e-3)
    assert np.all(np.asarray(var[:, 2]) == 0.0)
    unshifted = jnp.mean(jnp.square(x), axis=axes) - jnp.square(jnp.mean(x, axis=axes))
    assert not np.allclose(np.asarray(unshifted[:, :2]), np.asarray(var2[:, :2]), rtol=0.1)


def test_batch_norm_statistics_over_devices_equal_the_whole_batch():
    # Batch-parallel steps split the batch over devices and pmean the statistics; the one-pass
    # statistics shift every device by the same (pmean'd) sample. vmap with an axis name stands
    # in for 4 devices.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(3.0, 0.5, (3, 8, 2, 2, 5)), jnp.float32)  # [T, B, H, W, C]
    scale, bias = jnp.ones(5, jnp.float32), jnp.zeros(5, jnp.float32)
    axes, keep = (1, 2, 3), (3, 1, 1, 1, 5)
    shards = jnp.stack(jnp.split(x, 4, axis=1))  # [4, T, B/4, H, W, C]
    for name in platform.FORMULATIONS:
        with platform.formulation(name):
            whole = batch_norm.normalize(x, scale, bias, axes=axes, keep=keep, epsilon=1e-5)
            parts = jax.vmap(
                lambda s: batch_norm.normalize(
                    s, scale, bias, axes=axes, keep=keep, epsilon=1e-5, axis_name="d"
                ),
                axis_name="d",
            )(shards)
        y = jnp.concatenate(list(parts[0]), axis=1)
        np.testing.assert_allclose(np.asarray(y), np.asarray(whole[0]), rtol=1e-5, atol=1e-5)
        for a, b in zip(parts[1:], whole[1:], strict=True):  # mean, var: replicated
            np.testing.assert_allclose(np.asarray(a), np.broadcast_to(b, a.shape), rtol=1e-5)


@pytest.mark.parametrize("learn_alpha", [False, True], ids=["alpha_fixed", "alpha_learned"])
def test_cpu_loops_update_their_buffer_in_place(learn_alpha):
    # The CPU formulation's point: each time loop reads and writes one [T, ...] buffer in place.
    # A loop body that copies it costs a whole-buffer copy per time step (a carry computed from
    # the buffer in another fusion did that: Linear + LIF 2.8-14x slower, 2026-12-03; so did
    # dL/dalpha's term with a learnable alpha: the neuron's backward 30-50x slower, 2026-12-04).
    T, B, n = 6, 4, 32
    x = jnp.asarray(np.random.default_rng(0).normal(size=(T, B, n)), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)) / np.sqrt(n), jnp.float32)

    def loss(kernel, w, alpha):
        alpha = alpha if learn_alpha else None
        return jnp.sum(neurons.lif_multistep(x @ kernel, jax.nn.sigmoid(w), alpha=alpha))

    argnums = (0, 1, 2) if learn_alpha else (0, 1)
    with platform.formulation("cpu"), lif_native.enabled(False):  # XLA's loops
        step = jax.jit(jax.grad(loss, argnums=argnums))
        text = step.lower(kernel, 0.3, jnp.float32(2.0)).compile().as_text()
    buffer = f"f32[{T},{B},{n}]"
    bodies = set(re.findall(r"while\(.*?body=%?([\w.\-]+)", text))
    assert len(bodies) == 2, bodies  # the forward and the backward loop
    for body in bodies:
        block = text[text.index(f"%{body} ") :]
        block = block[: block.index("\n}\n")]
        copies = [line for line in block.splitlines() if f"= {buffer}" in line and " copy(" in line]
        assert not copies, (body, copies)
