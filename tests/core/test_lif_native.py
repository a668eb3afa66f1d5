"""The neuron's native CPU kernel (``plif_jax.ops.lif_native``) against XLA's loops.

The kernel replaces :func:`plif_jax.ops.lif_loop.lif_loop`'s two XLA:CPU loops where it can be
built. It must give the same spikes as those loops in a user's compile (XLA's optimisations
on), and the same gradients up to where XLA:CPU fuses a multiply and an add into one FMA (which
depends on the program around the loop: a few elements in a hundred differ by an ulp).

On a machine without a C++ compiler these tests skip with the reason; with
``PLIF_REQUIRE_NATIVE=1`` (``.ci/run`` sets it) they fail instead, so CI cannot pass without
the kernel.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plif_jax import neurons, surrogate
from plif_jax.ops import lif_native
from tests.support import lif

pytestmark = pytest.mark.usefixtures("optimized_compile")  # as users compile it


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if not lif_native.usable(jnp.float32, "atan"):
        reason = lif_native.status()
        if os.environ.get("PLIF_REQUIRE_NATIVE") == "1":
            pytest.fail(f"PLIF_REQUIRE_NATIVE=1 but the kernel is unavailable: {reason}")
        pytest.skip(f"the native kernel is unavailable here ({reason})")


def _run(native, x, coef, *, learn_alpha, **kw):
    return lif.grads(lif_native.enabled(native), x, coef, learn_alpha=learn_alpha, **kw)


@pytest.mark.parametrize(
    "shape, kind, detach_reset, learn_alpha, v_reset",
    [
        ((7, 2, 5), "atan", True, False, 0.0),  # one chunk, one thread
        ((6, 3, 5000), "atan", True, True, 0.0),  # 4 chunks (the last partial)
        ((20, 2, 9000), "atan", False, False, -0.2),  # 5 chunks on the machine's cores
        ((9, 4, 1100), "atan", False, True, 0.0),
        ((8, 2, 300), "sigmoid", True, False, 0.0),  # native forward, XLA's backward
    ],
)
def test_the_kernel_equals_xla_loops(shape, kind, detach_reset, learn_alpha, v_reset):
    rng = np.random.default_rng(shape[-1])
    x = jnp.asarray(rng.normal(0.6, 1.5, shape), jnp.float32)
    coef = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kw = dict(detach_reset=detach_reset, surrogate=surrogate.get(kind), v_reset=v_reset)
    grads_xla, s_xla = _run(False, x, coef, learn_alpha=learn_alpha, **kw)
    grads_nat, s_nat = _run(True, x, coef, learn_alpha=learn_alpha, **kw)
    assert 0.05 < float(jnp.mean(s_nat)) < 0.95
    np.testing.assert_array_equal(np.asarray(s_nat), np.asarray(s_xla))
    assert float(jnp.max(jnp.abs(grads_xla[0]))) > 1e-3  # a gradient that can differ
    for got, want in zip(grads_nat, grads_xla, strict=True):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.max(np.abs(want)))
        assert np.mean(got == want) > 0.9  # all but an element in ten bit-identical


def test_the_kernel_runs_where_the_trace_says():
    x = jnp.ones((4, 2, 3), jnp.float32)
    f = jax.jit(jax.grad(lambda x: jnp.sum(neurons.lif_multistep(x, 0.5))))
    text = f.lower(x).compile().as_text()
    assert all(f'custom_call_target="{t}"' in text for t in lif_native.TARGETS.values())
    # bfloat16 (and float64, below): XLA's loops (the kernel is float32).
    text = f.lower(x.astype(jnp.bfloat16)).compile().as_text()
    assert "plif_lif_" not in text and " while(" in text
    assert not lif_native.usable(jnp.float64) and not lif_native.usable(jnp.float32, "sigmoid")
    assert not lif_native.usable(jnp.float32, None, jnp.ones(3))  # per-neuron tau (NIR)


def test_vmapped_members_equal_one_call_each():
    # Several seeds in one run (`training.member_steps`, layout 'vmap') batch the neuron: each
    # member's decay and input go through the kernel in turn.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(0.6, 1.5, (3, 6, 2, 40)), jnp.float32)
    w = jnp.asarray([0.3, -0.5, 1.0], jnp.float32)

    def one(w, x):
        return jax.grad(
            lambda w, x: jnp.sum(neurons.lif_multistep(x, jax.nn.sigmoid(w)) * x), argnums=(0, 1)
        )(w, x)

    batched = jax.jit(jax.vmap(one))(w, x)
    for i in range(3):
        single = jax.jit(one)(w[i], x[i])
        for b, s in zip(batched, single, strict=True):
            np.testing.assert_array_equal(np.asarray(b[i]), np.asarray(s))


def test_without_a_compiler_the_xla_loops_run_and_status_says_why(monkeypatch, tmp_path):
    x = jnp.asarray(np.random.default_rng(4).normal(0.6, 1.5, (5, 2, 7)), jnp.float32)
    f = lambda x: jnp.sum(neurons.lif_multistep(x, 0.5) * x)  # noqa: E731
    want = jax.jit(jax.grad(f))(x)
    try:
        monkeypatch.setenv("PLIF_JAX_CACHE", str(tmp_path))  # nothing built there yet
        monkeypatch.setenv("CXX", "/bin/false")  # a compiler that fails
        lif_native._load.cache_clear()
        assert not lif_native.usable(jnp.float32)
        assert lif_native.status().startswith("XLA loops: could not build the native kernel")
        got = jax.jit(jax.grad(f))(x)
        assert "plif_lif_" not in jax.jit(jax.grad(f)).lower(x).as_text()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        monkeypatch.setenv("PLIF_JAX_NATIVE", "0")
        lif_native._load.cache_clear()
        assert lif_native.status() == "XLA loops: disabled by PLIF_JAX_NATIVE=0"
    finally:
        monkeypatch.undo()
        lif_native._load.cache_clear()
    assert lif_native.usable(jnp.float32)  # rebuilt from the cache: back for later tests
