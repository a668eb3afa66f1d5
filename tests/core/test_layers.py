"""Time-folded layers: per-step / folded BatchNorm, time-shared dropout, voting, pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import layers
from plif_jax.ops import xla_cpu

T, B, H, W, C = 3, 4, 5, 5, 6


def _bn_input(seed=0, shift=2.0):
    rng = np.random.default_rng(seed)
    # Each time step gets a different mean and spread so per-step and folded statistics differ.
    x = rng.standard_normal((T, B, H, W, C)) * np.arange(1, T + 1)[:, None, None, None, None]
    x = x + shift * np.arange(T)[:, None, None, None, None]
    return x.astype(np.float32)


def _random_affine(bn, seed=1):
    rng = np.random.default_rng(seed)
    bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, C), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.uniform(-0.5, 0.5, C), jnp.float32)
    return np.asarray(bn.scale[...]), np.asarray(bn.bias[...])


def test_per_step_batchnorm_matches_t_sequential_pytorch_updates():
    x = _bn_input()
    bn = layers.BatchNorm(C, mode="per_step")
    scale, bias = _random_affine(bn)
    y = np.asarray(bn(jnp.asarray(x.reshape(T * B, H, W, C)), time_steps=T)).reshape(x.shape)

    n = B * H * W
    run_mean, run_var = np.zeros(C), np.ones(C)
    for t in range(T):  # what BatchNorm2d does when called once per time step
        mean = x[t].mean(axis=(0, 1, 2))
        var = x[t].var(axis=(0, 1, 2))  # biased: used to normalise
        np.testing.assert_allclose(
            y[t], (x[t] - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-5
        )
        run_mean = 0.9 * run_mean + 0.1 * mean
        run_var = 0.9 * run_var + 0.1 * var * n / (n - 1)  # unbiased for the running estimate
    np.testing.assert_allclose(np.asarray(bn.mean[...]), run_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), run_var, rtol=1e-5)
    # Each step is normalised on its own: zero mean, unit (biased) variance before the affine.
    z = (y - bias) / scale
    np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(axis=(1, 2, 3)), 1.0, rtol=1e-3)


def test_per_step_running_stats_accumulate_over_calls():
    x1, x2 = _bn_input(0), _bn_input(5)
    bn = layers.BatchNorm(C, mode="per_step")
    for x in (x1, x2):
        bn(jnp.asarray(x.reshape(T * B, H, W, C)), time_steps=T)
    n = B * H * W
    run_mean, run_var = np.zeros(C), np.ones(C)
    for x in (x1, x2):
        for t in range(T):
            run_mean = 0.9 * run_mean + 0.1 * x[t].mean(axis=(0, 1, 2))
            run_var = 0.9 * run_var + 0.1 * x[t].var(axis=(0, 1, 2)) * n / (n - 1)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), run_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), run_var, rtol=1e-5)


def test_folded_batchnorm_is_one_update_over_all_t_times_b():
    x = _bn_input()
    bn = layers.BatchNorm(C, mode="folded")
    scale, bias = _random_affine(bn)
    y = np.asarray(bn(jnp.asarray(x.reshape(T * B, H, W, C)), time_steps=T))
    flat = x.reshape(T * B, H, W, C)
    mean, var = flat.mean(axis=(0, 1, 2)), flat.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        y, (flat - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-5
    )
    n = T * B * H * W
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_batchnorm_modes_differ_when_time_steps_differ():
    x = jnp.asarray(_bn_input().reshape(T * B, H, W, C))
    per_step = layers.BatchNorm(C, mode="per_step")
    folded = layers.BatchNorm(C, mode="folded")
    a = np.asarray(per_step(x, time_steps=T))
    b = np.asarray(folded(x, time_steps=T))
    assert np.abs(a - b).max() > 0.5
    # With a single time step both modes are the same computation.
    x1 = x[:B]
    np.testing.assert_allclose(
        np.asarray(layers.BatchNorm(C, mode="per_step")(x1)),
        np.asarray(layers.BatchNorm(C, mode="folded")(x1)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_batchnorm_eval_uses_running_statistics_and_leaves_them():
    x = _bn_input()
    bn = layers.BatchNorm(C, mode="per_step")
    scale, bias = _random_affine(bn)
    rng = np.random.default_rng(3)
    mean, var = rng.uniform(-1, 1, C), rng.uniform(0.5, 2.0, C)
    bn.mean[...] = jnp.asarray(mean, jnp.float32)
    bn.var[...] = jnp.asarray(var, jnp.float32)
    bn.set_view(use_running_average=True)
    y = np.asarray(bn(jnp.asarray(x.reshape(T * B, H, W, C)), time_steps=T))
    want = (x.reshape(T * B, H, W, C) - mean) / np.sqrt(var + 1e-5) * scale + bias
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), mean, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(bn.var[...]), var, rtol=1e-7)


def test_batchnorm_init_and_variable_types():
    bn = layers.BatchNorm(C)
    np.testing.assert_array_equal(np.asarray(bn.scale[...]), np.ones(C))
    np.testing.assert_array_equal(np.asarray(bn.bias[...]), np.zeros(C))
    np.testing.assert_array_equal(np.asarray(bn.mean[...]), np.zeros(C))
    np.testing.assert_array_equal(np.asarray(bn.var[...]), np.ones(C))
    assert isinstance(bn.mean, nnx.BatchStat) and isinstance(bn.var, nnx.BatchStat)
    assert isinstance(bn.scale, nnx.Param) and isinstance(bn.bias, nnx.Param)
    assert (bn.momentum, bn.epsilon) == (0.1, 1e-5)


def test_batchnorm_bad_input_raises_clear_errors():
    bn = layers.BatchNorm(C)
    with pytest.raises(ValueError, match="expects 6 channels on the last axis"):
        bn(jnp.zeros((4, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"not T\*B for time_steps=3"):
        bn(jnp.zeros((4, 5, 5, C)), time_steps=3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(jnp.zeros((3, 1, 1, C)), time_steps=3)
    with pytest.raises(ValueError, match="unknown bn_mode 'batch'"):
        layers.BatchNorm(C, mode="batch")


def test_dropout_mask_is_shared_over_time_and_scaled():
    drop = layers.TimeSharedDropout(0.3, rngs=nnx.Rngs(dropout=0))
    t, b, f = 4, 8, 50
    x = jnp.ones((t * b, f))
    y = np.asarray(drop(x, time_steps=t)).reshape(t, b, f)
    for step in range(1, t):
        np.testing.assert_array_equal(y[step], y[0])
    values = set(np.unique(y).tolist())
    assert values == {0.0, np.float32(1.0 / 0.7)}
    # Different samples get different masks; a new call draws a new mask.
    assert not np.array_equal(y[0, 0], y[0, 1])
    y2 = np.asarray(drop(x, time_steps=t)).reshape(t, b, f)
    assert not np.array_equal(y2[0], y[0])


def test_dropout_zero_fraction_is_about_p_and_mean_is_preserved():
    drop = layers.TimeSharedDropout(0.5, rngs=nnx.Rngs(dropout=1))
    mask = np.asarray(drop.make_mask(256, 1024))
    assert set(np.unique(mask).tolist()) == {0.0, 2.0}
    zero_fraction = (mask == 0).mean()
    assert abs(zero_fraction - 0.5) < 0.01  # 262144 draws: std 0.001
    assert abs(mask.mean() - 1.0) < 0.02


def test_dropout_is_identity_in_eval_and_for_p_zero():
    x = jax.random.normal(jax.random.key(0), (6, 10))
    drop = layers.TimeSharedDropout(0.5, rngs=nnx.Rngs(0), deterministic=True)
    np.testing.assert_array_equal(np.asarray(drop(x, time_steps=3)), np.asarray(x))
    zero = layers.TimeSharedDropout(0.0, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(zero(x, time_steps=3)), np.asarray(x))


def test_dropout_masks_are_reproducible_from_the_seed():
    a = layers.TimeSharedDropout(0.5, rngs=nnx.Rngs(dropout=7))
    b = layers.TimeSharedDropout(0.5, rngs=nnx.Rngs(dropout=7))
    x = jnp.ones((2 * 3, 20))
    np.testing.assert_array_equal(np.asarray(a(x, time_steps=2)), np.asarray(b(x, time_steps=2)))


def test_dropout_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        layers.TimeSharedDropout(1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs an nnx.Rngs with a 'dropout'"):
        layers.TimeSharedDropout(0.5, rngs=nnx.Rngs(params=0))
    drop = layers.TimeSharedDropout(0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expects \[T\*B, features\]"):
        drop(jnp.ones((2, 3, 4)), time_steps=1)
    with pytest.raises(ValueError, match=r"not T\*B for time_steps=4"):
        drop(jnp.ones((6, 4)), time_steps=4)


def test_vote_is_the_mean_of_groups_of_ten():
    x = np.arange(2 * 3 * 110, dtype=np.float32).reshape(2, 3, 110) % 7
    got = np.asarray(layers.vote(jnp.asarray(x)))
    want = np.stack([x[..., 10 * k : 10 * k + 10].mean(-1) for k in range(11)], axis=-1)
    assert got.shape == (2, 3, 11)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of the group size 10"):
        layers.vote(jnp.zeros((2, 105)))


def test_pooling_is_2x2_stride_2_and_floors_odd_sizes():
    x = np.arange(17 * 17 * 2, dtype=np.float32).reshape(1, 17, 17, 2)
    x = np.sin(x)  # not monotone, so max and mean differ per window
    mx = np.asarray(layers.pool2x2(jnp.asarray(x), "max"))
    av = np.asarray(layers.pool2x2(jnp.asarray(x), "avg"))
    assert mx.shape == av.shape == (1, 8, 8, 2)
    windows = x[:, :16, :16].reshape(1, 8, 2, 8, 2, 2)
    np.testing.assert_allclose(mx, windows.max(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_allclose(av, windows.mean(axis=(2, 4)), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="unknown pooling 'min'"):
        layers.pool2x2(jnp.asarray(x), "min")


def test_conv3x3_keeps_the_size_and_equals_a_hand_convolution():
    conv = layers.conv3x3(2, 3, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    k = np.asarray(conv.kernel[...])  # HWIO
    y = np.asarray(conv(jnp.asarray(x)))
    assert y.shape == (1, 4, 4, 3)
    assert conv.bias is None
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((1, 4, 4, 3), np.float32)
    for i in range(4):
        for j in range(4):
            want[0, i, j] = np.einsum("hwc,hwco->o", xp[0, i : i + 3, j : j + 3], k)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    lin = layers.linear(5, 7, rngs=nnx.Rngs(0))
    assert lin.kernel.shape == (5, 7) and lin.bias is None


def test_pooling_gradients_route_ties_to_the_first_maximum():
    # Spikes are 0/1, so most max-pool windows tie; PyTorch (CPU) sends the gradient to the first
    # maximum in row-major window order, and so must we (the parity tests depend on it).
    rng = np.random.default_rng(4)
    x = (rng.uniform(size=(2, 5, 5, 3)) < 0.5).astype(np.float32)  # odd size: last row/col unused
    g = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)

    def loss(kind):
        return lambda v: jnp.sum(layers.pool2x2(v, kind) * g)

    dmax = np.asarray(jax.grad(loss("max"))(jnp.asarray(x)))
    davg = np.asarray(jax.grad(loss("avg"))(jnp.asarray(x)))
    want_max = np.zeros_like(x)
    want_avg = np.zeros_like(x)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                for c in range(3):
                    window = x[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c].reshape(-1)
                    first = int(np.argmax(window))  # numpy: first maximum
                    want_max[n, 2 * i + first // 2, 2 * j + first % 2, c] = g[n, i, j, c]
                    want_avg[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c] = g[n, i, j, c] / 4
    np.testing.assert_array_equal(dmax, want_max)
    np.testing.assert_allclose(davg, want_avg, rtol=1e-6)


@pytest.mark.parametrize("t", [1, 3, 8, 37])
def test_repeat_time_is_a_broadcast_whose_gradient_sums_over_time(t):
    # 37 exercises the halving fold (odd lengths above 16) before the add chain.
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    coef = jnp.asarray(rng.normal(size=(t, 2, 3, 4)), jnp.float32)
    out = xla_cpu.repeat_time(x, t)
    assert out.shape == (t, 2, 3, 4)
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(np.asarray(x), (t, 2, 3, 4)))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(xla_cpu.repeat_time(x, t) * coef)))(x)
    np.testing.assert_allclose(
        np.asarray(grad), np.asarray(coef, np.float64).sum(0), rtol=1e-5, atol=1e-6
    )


def test_linear_matmul_equals_autodiff_of_x_at_w_and_falls_back_off_the_plain_form():
    # layers.linear's dot_general (xla_cpu.dense): same values, input and weight gradients as
    # autodiff of x @ W on a time-folded [T, B, in] input; other contractions use lax.dot_general.
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    coef = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
    fc = layers.linear(5, 6, rngs=nnx.Rngs(0))
    w = fc.kernel[...]
    np.testing.assert_array_equal(np.asarray(fc(x)), np.asarray(x @ w))
    got = jax.grad(lambda x, w: jnp.sum(xla_cpu.dense(x, w) * coef), (0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum((x @ w) * coef), (0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    batched = (((2,), (1,)), ((0,), (0,)))
    lhs, rhs = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    np.testing.assert_array_equal(
        np.asarray(xla_cpu.dense_dot_general(lhs, rhs, batched)),
        np.asarray(jax.lax.dot_general(lhs, rhs, batched)),
    )
