"""LIF/PLIF over a sequence cut into chunks: ``v_init`` / ``v_final`` chain the chunks exactly, and
their gradients through the fast path equal autodiff's. The rest of the neuron tests:
``test_neurons.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plif_jax import neurons

# Flax 0.12.8 deprecates Module.sow() outside nnx.capture(): the neurons only sow under a capture,
# so any such warning is an error here.
pytestmark = [
    pytest.mark.filterwarnings("error:Using 'Module.sow\\(\\)' outside:DeprecationWarning"),
    pytest.mark.usefixtures("optimized_compile"),  # the neuron as users compile it
]


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("fast", [True, False])
def test_chunks_chained_through_v_init_equal_the_whole_sequence(detach_reset, fast):
    # Running T=7 steps as chunks of 3 + 4, the second starting from the first's v_final, gives
    # the same spikes exactly and the same gradients (x, k, alpha) as one call over all 7 steps.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(0.9, 1.2, size=(7, 3, 4)), jnp.float32)
    coef = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    kw = dict(detach_reset=detach_reset, return_membrane=not fast)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    def whole(x, d, a):
        return first(neurons.lif_multistep(x, d, alpha=a, **kw))

    def chunked(x, d, a):
        out1 = neurons.lif_multistep(x[:3], d, alpha=a, return_final=True, **kw)
        out2 = neurons.lif_multistep(x[3:], d, alpha=a, v_init=out1[-1], return_final=True, **kw)
        return jnp.concatenate([out1[0], out2[0]])

    args = (x, jnp.float32(0.4), jnp.float32(2.0))
    s_whole, s_chunked = whole(*args), chunked(*args)
    assert 0 < float(jnp.sum(s_whole)) < s_whole.size
    np.testing.assert_array_equal(np.asarray(s_chunked), np.asarray(s_whole))
    g_whole = jax.grad(lambda *a: jnp.sum(whole(*a) * coef), (0, 1, 2))(*args)
    g_chunked = jax.grad(lambda *a: jnp.sum(chunked(*a) * coef), (0, 1, 2))(*args)
    for gc, gw in zip(g_chunked, g_whole, strict=True):
        np.testing.assert_allclose(np.asarray(gc), np.asarray(gw), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("detach_reset", [True, False])
def test_fast_path_v_init_and_v_final_gradients_equal_autodiff(detach_reset):
    # The hand-written backward's d/dv_init and the v_final cotangent against autodiff through
    # lif_step (float64: agreement to rounding).
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.normal(0.8, 1.0, size=(6, 2, 5)), jnp.float64)
        v0 = jnp.asarray(rng.uniform(-0.5, 0.9, size=(2, 5)), jnp.float64)
        cs = jnp.asarray(rng.normal(size=x.shape), jnp.float64)
        cv = jnp.asarray(rng.normal(size=v0.shape), jnp.float64)

        def loss(x, v0, d, fast):
            out = neurons.lif_multistep(
                x,
                d,
                v_init=v0,
                return_final=True,
                detach_reset=detach_reset,
                return_membrane=not fast,
            )
            return jnp.sum(out[0] * cs) + jnp.sum(out[-1] * cv)

        d = jnp.float64(0.35)
        g_fast = jax.grad(loss, (0, 1, 2))(x, v0, d, True)
        g_ref = jax.grad(loss, (0, 1, 2))(x, v0, d, False)
        assert float(jnp.max(jnp.abs(g_ref[1]))) > 0  # v_init does receive a gradient
        for gf, gr in zip(g_fast, g_ref, strict=True):
            np.testing.assert_allclose(np.asarray(gf), np.asarray(gr), rtol=1e-12, atol=1e-14)


def test_v_final_is_the_membrane_after_the_last_reset():
    x = jnp.asarray([[0.6], [0.9], [0.2]], jnp.float32)  # k = 0.5: H = 0.3, 0.6, 0.4
    spikes, v_final = neurons.lif_multistep(x, 0.5, v_init=jnp.asarray([0.0]), return_final=True)
    np.testing.assert_array_equal(np.asarray(spikes[:, 0]), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(v_final), [0.4], rtol=1e-6)
    x = jnp.asarray([[2.5]], jnp.float32)  # fires at the only step: v_final = V_reset
    _, v_final = neurons.lif_multistep(x, 0.5, v_reset=-0.25, return_final=True)
    np.testing.assert_array_equal(np.asarray(v_final), [-0.25])


def test_v_init_of_the_wrong_shape_raises_with_the_fix():
    with pytest.raises(ValueError, match=r"v_init must have the shape .*\(3, 4\).*got \(4,\)"):
        neurons.lif_multistep(jnp.ones((2, 3, 4)), 0.5, v_init=jnp.zeros((4,)))
