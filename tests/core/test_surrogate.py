"""Surrogate spike functions: exact Heaviside forward, analytic surrogate gradients.

Gradients are taken under ``jax.jit``: one compilation is far cheaper on CPU than compiling
each eager op of a custom_vjp backward one by one.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plif_jax import surrogate

pytestmark = pytest.mark.usefixtures("optimized_compile")  # as users compile it

# x = H - V_th: zero, tiny, moderate and large magnitudes of both signs.
X_VALUES = np.array(
    [-1e4, -37.0, -3.0, -1.0, -0.25, -1e-3, -1e-30, 0.0, 1e-30, 1e-3, 0.25, 1.0, 3.0, 37.0, 1e4],
    dtype=np.float32,
)


def _atan_dgdx(x: np.ndarray, alpha: float) -> np.ndarray:
    return alpha / (2.0 * (1.0 + ((math.pi / 2.0) * alpha * x) ** 2))


def _atan_dgdalpha(x: np.ndarray, alpha: float) -> np.ndarray:
    return x / (2.0 * (1.0 + ((math.pi / 2.0) * alpha * x) ** 2))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Numerically stable in float64 for |z| up to 1e5.
    return np.where(
        z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z)))
    )


def _sigmoid_dgdx(x: np.ndarray, alpha: float) -> np.ndarray:
    sg = _sigmoid(alpha * x)
    return alpha * sg * (1.0 - sg)


def _sigmoid_dgdalpha(x: np.ndarray, alpha: float) -> np.ndarray:
    sg = _sigmoid(alpha * x)
    return x * sg * (1.0 - sg)


ANALYTIC = {
    "atan": (_atan_dgdx, _atan_dgdalpha),
    "sigmoid": (_sigmoid_dgdx, _sigmoid_dgdalpha),
}
# Below float32 resolution of the peak gradient (~1): covers float64 values like 1e-64 that
# float32 flushes to zero.
ATOL = 1e-10
CASES = [("atan", a) for a in (0.5, 2.0, 7.3)] + [("sigmoid", a) for a in (1.0, 4.0, 10.0)]


def _grad_out(n: int) -> np.ndarray:
    """A non-constant upstream gradient, so that the chain rule is really exercised."""
    return np.linspace(-1.5, 2.0, n).astype(np.float32)


@pytest.mark.parametrize(("kind", "alpha"), CASES)
def test_input_gradient_equals_analytic_derivative(kind, alpha):
    s = surrogate.get(kind, alpha)
    g = _grad_out(X_VALUES.size)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(s(x) * g)))(jnp.asarray(X_VALUES))
    want = g.astype(np.float64) * ANALYTIC[kind][0](X_VALUES.astype(np.float64), alpha)
    assert grad.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(grad), want, rtol=2e-6, atol=ATOL)


@pytest.mark.parametrize(("kind", "alpha"), CASES)
def test_input_gradient_equals_derivative_of_primitive(kind, alpha):
    s = surrogate.get(kind, alpha)
    # float64: autodiff of jax.nn.sigmoid computes sg * (1 - sg), which float32 cancellation
    # makes ~1% wrong at |alpha x| ~ 12; in float64 both sides are exact to ~1e-12.
    with jax.enable_x64(True):
        x = jnp.asarray(X_VALUES, jnp.float64)
        grad = jax.jit(jax.grad(lambda x: jnp.sum(s(x))))(x)
        # Differentiate the smooth primitive itself: a second, independent derivation.
        want = jax.jit(jax.vmap(jax.grad(lambda xi: s.primitive(xi))))(x)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=1e-12, atol=1e-15)


def test_atan_gradient_at_zero_is_alpha_over_two():
    # alpha = 2 (the paper's value) peaks at exactly 1.
    for alpha in (0.5, 2.0, 7.3):
        grad = jax.jit(jax.grad(lambda x, a=alpha: surrogate.atan(a)(x)))(jnp.float32(0.0))
        assert float(grad) == np.float32(alpha / 2.0)


@pytest.mark.parametrize(("kind", "alpha"), CASES)
def test_alpha_gradient_is_sum_of_grad_out_times_dprimitive_dalpha(kind, alpha):
    s = surrogate.get(kind, alpha)
    x = jnp.asarray(X_VALUES)
    g = _grad_out(X_VALUES.size)
    grad_alpha = jax.jit(jax.grad(lambda a: jnp.sum(s(x, a) * g)))(jnp.float32(alpha))
    want = np.sum(g.astype(np.float64) * ANALYTIC[kind][1](X_VALUES.astype(np.float64), alpha))
    # Autodiff of the primitive w.r.t. alpha, summed with the same weights.
    want_autodiff = jax.jit(jax.grad(lambda a: jnp.sum(s.primitive(x, a) * g)))(jnp.float32(alpha))
    assert grad_alpha.dtype == jnp.float32 and grad_alpha.shape == ()
    np.testing.assert_allclose(float(grad_alpha), want, rtol=1e-5)
    np.testing.assert_allclose(float(grad_alpha), float(want_autodiff), rtol=1e-5)


def test_alpha_gradient_under_vmap_sums_over_the_batch():
    s = surrogate.atan()
    x = jnp.linspace(-2.0, 2.0, 12, dtype=jnp.float32).reshape(3, 4)
    loss = lambda a, xi: jnp.sum(s(xi, a) * jnp.arange(4.0))
    whole = jax.jit(jax.grad(lambda a: loss(a, x)))(jnp.float32(2.0))
    batched_loss = lambda a: jnp.sum(jax.vmap(lambda xi: loss(a, xi))(x))
    batched = jax.jit(jax.grad(batched_loss))(jnp.float32(2.0))
    want = np.sum(np.arange(4.0) * _atan_dgdalpha(np.linspace(-2.0, 2.0, 12).reshape(3, 4), 2.0))
    np.testing.assert_allclose(float(whole), want, rtol=1e-6)
    np.testing.assert_allclose(float(batched), want, rtol=1e-6)


@pytest.mark.parametrize("kind", ["atan", "sigmoid"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_forward_is_exact_heaviside_and_zero_fires(kind, dtype):
    x = jnp.asarray([-jnp.inf, -1e4, -1.0, -1e-3, 0.0, -0.0, 1e-3, 1.0, 1e4, jnp.inf], dtype)
    out = surrogate.get(kind)(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(out, np.float32), np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], np.float32)
    )


def test_forward_is_heaviside_for_the_smallest_normal_float32_magnitudes():
    # The smallest *normal* magnitude: XLA on CPU flushes subnormals to zero (so -1e-45 fires);
    # x = H - V_th is never subnormal for V_th = 1 (the ulp of 1 is 1.2e-7).
    tiny = np.float32(np.finfo(np.float32).tiny)
    x = jnp.asarray([-tiny, tiny, 0.0], jnp.float32)
    for s in (surrogate.atan(), surrogate.sigmoid(), surrogate.ATAN):
        np.testing.assert_array_equal(np.asarray(s(x)), np.array([0.0, 1.0, 1.0], np.float32))


@pytest.mark.parametrize("kind", ["atan", "sigmoid"])
def test_partials_are_the_factors_the_backward_multiplies_by(kind):
    # The public hook hand-written backward passes (ops.lif_loop) use instead of a private table.
    s = surrogate.get(kind)
    x64 = X_VALUES.astype(np.float64)

    def both(x, a):
        grads = jax.grad(lambda x, a: jnp.sum(s(x, a)), argnums=(0, 1))(x, a)
        return s.partials(x, a), grads

    (dx, dalpha), (gx, galpha) = jax.jit(both)(jnp.asarray(X_VALUES), jnp.float32(s.alpha))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(gx))
    np.testing.assert_allclose(float(jnp.sum(dalpha)), float(galpha), rtol=1e-6)
    for got, analytic in zip((dx, dalpha), ANALYTIC[kind], strict=True):
        np.testing.assert_allclose(np.asarray(got), analytic(x64, s.alpha), rtol=2e-6, atol=ATOL)


def test_forward_and_gradient_are_the_same_under_jit():
    s = surrogate.atan(3.0)
    x = jnp.asarray(X_VALUES)
    f = lambda x: jnp.sum(s(x) * jnp.arange(x.size, dtype=x.dtype))
    np.testing.assert_array_equal(np.asarray(jax.jit(s)(x)), np.asarray(s(x)))
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(f))(x)), np.asarray(jax.grad(f)(x)))


def test_get_uses_each_surrogates_default_alpha():
    assert surrogate.get("atan") == surrogate.Surrogate("atan", 2.0) == surrogate.ATAN
    assert surrogate.get("sigmoid") == surrogate.Surrogate("sigmoid", 4.0)
    assert surrogate.get("sigmoid", 1.5).alpha == 1.5


def test_call_time_alpha_overrides_the_stored_alpha():
    x = jnp.asarray([0.5], jnp.float32)
    s = surrogate.atan(2.0)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(s(x, 4.0))))(x)
    np.testing.assert_allclose(np.asarray(grad), _atan_dgdx(np.array([0.5]), 4.0), rtol=1e-6)


@pytest.mark.parametrize(
    "make", [lambda: surrogate.get("relu"), lambda: surrogate.Surrogate("tanh")]
)
def test_unknown_surrogate_name_raises_and_lists_valid_names(make):
    with pytest.raises(ValueError, match=r"unknown surrogate .*\['atan', 'sigmoid'\]"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: surrogate.atan(0.0),
        lambda: surrogate.sigmoid(-1.0),
        lambda: surrogate.get("atan", 0.0),
        lambda: surrogate.Surrogate("sigmoid", float("nan")),
    ],
)
def test_nonpositive_alpha_raises_with_the_fix(make):
    with pytest.raises(ValueError, match=r"alpha must be > 0.*got.*alpha=2\.0"):
        make()
