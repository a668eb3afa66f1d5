"""LIF/PLIF dynamics: hand-computed steps, scan vs loop, reset gradients, tau parameter, errors."""

import math
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import neurons, surrogate

# Flax 0.12.8 deprecates Module.sow() outside nnx.capture(): the neurons sow only in a record view,
# which these tests call under a capture, so any such warning is an error here.
pytestmark = [
    pytest.mark.filterwarnings("error:Using 'Module.sow\\(\\)' outside:DeprecationWarning"),
    pytest.mark.usefixtures("optimized_compile"),  # the neuron as users compile it
]


def _atan_sg(x: float, alpha: float = 2.0) -> float:
    return alpha / (2.0 * (1.0 + ((math.pi / 2.0) * alpha * x) ** 2))


def _python_loop(x_seq, decay, alpha, **kw):
    """The reference: one ``lif_step`` per time step in a plain Python loop (no scan)."""
    v = jnp.full(x_seq.shape[1:], kw["v_reset"], x_seq.dtype)
    spikes, hs, vs = [], [], []
    for x in x_seq:
        v, s, h = neurons.lif_step(v, x, decay, alpha=alpha, **kw)
        spikes.append(s)
        hs.append(h)
        vs.append(v)
    return jnp.stack(spikes), neurons.MembraneTrace(h=jnp.stack(hs), v=jnp.stack(vs))


@pytest.mark.parametrize("detach_reset", [True, False])
def test_scan_equals_python_loop_over_lif_step(detach_reset):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0.9, 1.2, size=(5, 3, 4)), jnp.float32)
    g_s, g_h, g_v = (jnp.asarray(rng.normal(size=x.shape), jnp.float32) for _ in range(3))
    kw = dict(
        v_threshold=0.9,
        v_reset=0.2,
        detach_reset=detach_reset,
        surrogate=surrogate.atan(2.0),
    )

    def loss(run, x, w, alpha):
        s, tr = run(x, jax.nn.sigmoid(w), alpha)
        return jnp.sum(s * g_s) + jnp.sum(tr.h * g_h) + jnp.sum(tr.v * g_v), (s, tr)

    scan = lambda x, d, a: neurons.lif_multistep(x, d, alpha=a, return_membrane=True, **kw)
    loop = lambda x, d, a: _python_loop(x, d, a, **kw)
    args = (x, jnp.float32(0.4), jnp.float32(2.0))
    grads = lambda run: jax.jit(jax.value_and_grad(lambda *a: loss(run, *a), (0, 1, 2), True))
    # Both jitted: the loop still traces T separate lif_step calls, with no scan.
    (_, (s1, tr1)), g1 = grads(scan)(*args)
    (_, (s2, tr2)), g2 = grads(loop)(*args)

    assert 10 < int(s1.sum()) < s1.size - 10  # both firing and silent neurons are exercised
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
    np.testing.assert_allclose(np.asarray(tr1.h), np.asarray(tr2.h), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(tr1.v), np.asarray(tr2.v), rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("detach_reset", "kind", "steps"),
    [(True, "atan", 7), (False, "atan", 7), (False, "sigmoid", 7), (False, "atan", 1)],
)
def test_spikes_only_path_equals_membrane_path(detach_reset, kind, steps):
    # return_membrane=False is what models train with; it may take its own (faster) route, which
    # must give the spikes and gradients of the membrane path (checked against lif_step above).
    # One step: the fast loops' first and last steps are the same one.
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(0.9, 1.2, size=(steps, 3 * 7, 5)), jnp.float32)
    g_s = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    kw = dict(v_threshold=0.9, v_reset=0.2, detach_reset=detach_reset)
    kw["surrogate"] = surrogate.get(kind)

    def loss(x, w, alpha, membrane):
        out = neurons.lif_multistep(
            x, jax.nn.sigmoid(w), alpha=alpha, return_membrane=membrane, **kw
        )
        s = out[0] if membrane else out
        return jnp.sum(s * g_s), s

    run = jax.jit(jax.value_and_grad(loss, (0, 1, 2), True), static_argnums=3)
    args = (x, jnp.float32(0.3), jnp.float32(kw["surrogate"].alpha))
    (_, s_fast), g_fast = run(*args, False)
    (_, s_ref), g_ref = run(*args, True)
    assert 10 < int(s_ref.sum()) < s_ref.size - 10
    np.testing.assert_array_equal(np.asarray(s_fast), np.asarray(s_ref))
    for name, a, b in zip(("x", "w", "alpha"), g_fast, g_ref, strict=True):
        assert a.dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name)


def test_unrolled_scan_matches_unroll_one():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(0.9, 1.2, size=(7, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    @partial(jax.jit, static_argnums=2)
    def run(x, decay, unroll):
        loss = lambda x, d: jnp.sum(neurons.lif_multistep(x, d, unroll=unroll) * g)
        return neurons.lif_multistep(x, decay, unroll=unroll), jax.grad(loss, (0, 1))(x, decay)

    s1, (gx1, gk1) = run(x, jnp.float32(0.5), 1)
    s4, (gx4, gk4) = run(x, jnp.float32(0.5), 4)
    assert 0 < int(s1.sum()) < s1.size
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s4))
    np.testing.assert_allclose(np.asarray(gx1), np.asarray(gx4), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(gk1), float(gk4), rtol=1e-5)


def test_hand_computed_steps_charge_fire_and_reset():
    # tau = 2 (k = 0.5), V_th = 1, V_reset = 0: every value below is exact in binary.
    x = jnp.asarray([1.5, 1.5, 1.5, 2.0], jnp.float32)[:, None]
    s, tr = neurons.PLIF(2.0)(x, return_membrane=True)
    np.testing.assert_array_equal(np.asarray(tr.h[:, 0]), [0.75, 1.125, 0.75, 1.375])
    np.testing.assert_array_equal(np.asarray(s[:, 0]), [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(tr.v[:, 0]), [0.75, 0.0, 0.75, 0.0])


def test_reaching_the_threshold_exactly_fires():
    # H = 0 + (2 - 0) * 0.5 = 1.0 == V_th fires; one float32 ulp below does not.
    below = np.nextafter(np.float32(2.0), np.float32(0.0))
    x = jnp.asarray([[2.0, below]], jnp.float32)
    s, tr = neurons.lif_multistep(x, 0.5, return_membrane=True)
    assert float(tr.h[0, 0]) == 1.0 and float(tr.h[0, 1]) < 1.0
    np.testing.assert_array_equal(np.asarray(s), [[1.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(tr.v[0]), [0.0, float(tr.h[0, 1])])


@pytest.mark.parametrize("make", [neurons.PLIF, neurons.LIF])
def test_nonzero_v_reset_is_the_start_and_the_reset_value(make):
    # tau = 2, V_th = 0.5, V_reset = -0.5; the membrane starts at -0.5.
    x = jnp.asarray([1.5, 1.5, 1.0, 2.0], jnp.float32)[:, None]
    s, tr = make(2.0, v_threshold=0.5, v_reset=-0.5)(x, return_membrane=True)
    np.testing.assert_array_equal(np.asarray(tr.h[:, 0]), [0.25, 0.625, 0.0, 0.75])
    np.testing.assert_array_equal(np.asarray(s[:, 0]), [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(tr.v[:, 0]), [0.25, -0.5, 0.0, -0.5])


def test_membrane_starts_at_v_reset_on_every_call():
    neuron = neurons.PLIF(2.0, v_reset=0.25)
    first = jnp.asarray([[1.0], [0.5]], jnp.float32)  # H = 0.75, 0.75: no spike
    _, tr_a = neuron(first, return_membrane=True)
    assert float(tr_a.v[-1, 0]) != 0.25  # the first call ends away from V_reset
    second = jnp.asarray([[1.5]], jnp.float32)
    _, tr_b = neuron(second, return_membrane=True)
    # H[0] = V_reset + (X - 0) * k = 0.25 + 0.75: no memory of the previous call.
    assert float(tr_b.h[0, 0]) == 1.0
    _, tr_c = neuron(first, return_membrane=True)
    np.testing.assert_array_equal(np.asarray(tr_c.v), np.asarray(tr_a.v))


def _dv_dx(x0: float, detach_reset: bool) -> float:
    """dV[0]/dX[0] for one step with tau = 2, V_th = 1, V_reset = -0.5."""

    def v_after_reset(x0):
        _, tr = neurons.lif_multistep(
            jnp.reshape(x0, (1, 1)), 0.5, v_reset=-0.5, detach_reset=detach_reset,
            return_membrane=True,
        )  # fmt: skip
        return tr.v[0, 0]

    return float(jax.jit(jax.grad(v_after_reset))(jnp.float32(x0)))


def test_detached_reset_blocks_gradient_through_spike():
    # X = 3.5: H = -0.5 + 3.5 * 0.5 = 1.25 fires. V = H (1 - S) + V_reset S.
    # dV/dX = k [(1 - S) + (V_reset - H) dS/dH]; detached, the second term is cut and S = 1.
    assert _dv_dx(3.5, detach_reset=True) == 0.0
    want = 0.5 * (-0.5 - 1.25) * _atan_sg(1.25 - 1.0)
    np.testing.assert_allclose(_dv_dx(3.5, detach_reset=False), want, rtol=1e-6)
    assert want < -0.1  # the reset-path term is large, so the two cases really differ


def test_reset_path_gradient_without_a_spike():
    # X = 2: H = 0.5, no spike. Detached: dV/dX = k. Not detached: k [1 + (V_reset - H) sg].
    assert _dv_dx(2.0, detach_reset=True) == 0.5
    want = 0.5 * (1.0 + (-0.5 - 0.5) * _atan_sg(0.5 - 1.0))
    np.testing.assert_allclose(_dv_dx(2.0, detach_reset=False), want, rtol=1e-6)


def test_spike_gradient_does_not_depend_on_detach_reset_at_the_first_step():
    x = jnp.asarray([[3.5, 2.0]], jnp.float32)
    grads = [
        jax.jit(jax.grad(lambda x, d=d: jnp.sum(neurons.lif_multistep(x, 0.5, detach_reset=d))))(x)
        for d in (True, False)
    ]
    want = [0.5 * _atan_sg(0.75), 0.5 * _atan_sg(0.0)]
    np.testing.assert_allclose(np.asarray(grads[0][0]), want, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grads[0]), np.asarray(grads[1]))


def test_plif_w_is_minus_log_of_tau_minus_one():
    assert neurons.w_from_tau(2.0) == 0.0
    assert abs(neurons.w_from_tau(16.0) - (-2.70805)) < 1e-5
    assert float(neurons.PLIF(2.0).w[...]) == 0.0
    assert float(neurons.PLIF(16.0).w[...]) == np.float32(-math.log(15.0))
    np.testing.assert_allclose(float(neurons.PLIF(16.0).tau), 16.0, rtol=1e-6)
    np.testing.assert_allclose(float(neurons.PLIF(16.0).decay()), 1.0 / 16.0, rtol=1e-6)


@pytest.mark.parametrize("w", [-3.0, -0.5, 0.0, 0.7, 4.0])
def test_plif_tau_is_one_plus_exp_minus_w(w):
    neuron = neurons.PLIF(2.0)
    neuron.w[...] = jnp.float32(w)
    np.testing.assert_allclose(float(neuron.tau), 1.0 + math.exp(-w), rtol=1e-6)
    np.testing.assert_allclose(float(neuron.decay()) * float(neuron.tau), 1.0, rtol=1e-6)


@pytest.mark.parametrize("tau", [1.5, 2.0, 16.0])
def test_plif_at_init_equals_lif_with_the_same_tau(tau):
    x = jnp.asarray(np.random.default_rng(2).normal(1.0, 1.0, size=(6, 4, 3)), jnp.float32)
    s_p, tr_p = neurons.PLIF(tau)(x, return_membrane=True)
    s_l, tr_l = neurons.LIF(tau)(x, return_membrane=True)
    np.testing.assert_array_equal(np.asarray(s_p), np.asarray(s_l))
    np.testing.assert_allclose(np.asarray(tr_p.v), np.asarray(tr_l.v), rtol=1e-6, atol=1e-7)


class _Tree(nnx.Module):
    def __init__(self):
        self.blocks = nnx.List(
            [neurons.PLIF(2.0), neurons.LIF(3.0), nnx.Linear(2, 3, rngs=nnx.Rngs(0))]
        )
        self.heads = nnx.Dict(
            {"a": neurons.PLIF(16.0, alpha_learnable=True), "b": neurons.PLIF(4.0)}
        )


def test_nnx_state_selects_every_tau_param_of_a_module_tree():
    tree = _Tree()
    taus = jax.tree.leaves(nnx.state(tree, neurons.TauParam))
    want = sorted(np.float32([0.0, -math.log(15.0), -math.log(3.0)]))
    assert sorted(float(w) for w in taus) == [float(w) for w in want]
    alphas = jax.tree.leaves(nnx.state(tree, neurons.SurrogateAlpha))
    assert [float(a) for a in alphas] == [2.0]
    # TauParam and SurrogateAlpha are Params: an optimizer over nnx.Param trains them too.
    params = jax.tree.leaves(nnx.state(tree, nnx.Param))
    assert len(params) == 3 + 1 + 2  # three w, one alpha, Linear kernel and bias


def test_learnable_alpha_receives_the_analytic_gradient():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(1.0, 1.5, size=(6, 5, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    neuron = neurons.PLIF(2.0, alpha_learnable=True)

    def loss(model):
        return jnp.sum(model(x) * g)

    grads = nnx.jit(nnx.grad(loss))(neuron)
    grad_alpha = float(grads["alpha"][...])
    # With a detached reset the spike feeds only the loss, so the alpha gradient is
    # sum(g * dprimitive/dalpha(H - V_th)) over every step and neuron.
    _, tr = neuron(x, return_membrane=True)
    u = np.asarray(tr.h, np.float64) - 1.0
    want = np.sum(np.asarray(g, np.float64) * u / (2.0 * (1.0 + (math.pi * u) ** 2)))
    assert abs(want) > 1e-2
    np.testing.assert_allclose(grad_alpha, want, rtol=1e-5)
    assert float(grads["w"][...]) != 0.0


def test_learnable_alpha_changes_the_input_gradient_but_not_the_spikes():
    x = jnp.asarray([[0.5, 1.8, 2.4]], jnp.float32)
    neuron = neurons.LIF(2.0, alpha_learnable=True)
    s_before = neuron(x)
    neuron.alpha[...] = jnp.float32(4.0)
    np.testing.assert_array_equal(np.asarray(neuron(x)), np.asarray(s_before))
    grad = nnx.jit(nnx.grad(lambda model, x: jnp.sum(model(x)), argnums=1))(neuron, x)
    u = 0.5 * np.asarray(x[0], np.float64) - 1.0
    np.testing.assert_allclose(np.asarray(grad[0]), 0.5 * _atan_sg(u, 4.0), rtol=1e-6)


def test_firing_rate_is_sown_per_time_step_in_a_record_view():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(1.0, 1.5, size=(5, 2, 4)), jnp.float32)  # 8 neurons per step
    neuron = neurons.PLIF(2.0)
    view = nnx.view(neuron, record="rates")
    spikes, captured = nnx.capture(view, neurons.FiringRate)(x)
    (rate,) = captured["firing_rate"].get_value()
    assert rate.shape == (5,) and rate.dtype == jnp.float32
    counts = np.asarray(spikes).reshape(5, -1).sum(axis=1)
    assert 0 < counts.sum() < 40
    np.testing.assert_array_equal(np.asarray(rate), counts / 8.0)  # k/8 is exact
    assert view.w is neuron.w and neuron.record is None  # a view: same parameter, own flag
    for module in (neuron, view):  # capture leaves no state
        assert nnx.state(module, nnx.Intermediate) == nnx.State({})


def test_calls_outside_a_record_view_store_nothing_on_the_module():
    # Recording is asked for with nnx.view: a plain call (captured or not) sows nothing.
    x = jnp.asarray([[2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], jnp.float32)
    neuron = neurons.LIF(2.0)
    before = nnx.state(neuron)
    neuron(x)
    neuron(x[:1])
    assert nnx.state(neuron, nnx.Intermediate) == nnx.State({})
    assert jax.tree.structure(nnx.state(neuron)) == jax.tree.structure(before)
    _, captured = nnx.capture(neuron, neurons.FiringRate)(x)
    assert captured == nnx.State({})
    _, captured = nnx.capture(nnx.view(neuron, record="rates"), neurons.FiringRate)(x)
    (rate,) = captured["firing_rate"].get_value()
    np.testing.assert_array_equal(np.asarray(rate), [0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="record must be 'rates', 'traces' or False, got 'all'"):
        nnx.view(neuron, record="all")


def test_spikes_are_zero_or_one_in_the_input_dtype():
    x = jnp.asarray(np.random.default_rng(5).normal(1.0, 2.0, size=(4, 16)), jnp.float32)
    s = neurons.PLIF(2.0)(x)
    assert s.dtype == jnp.float32 and s.shape == x.shape
    assert set(np.unique(np.asarray(s)).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: neurons.PLIF(1.0), r"init_tau must be finite and > 1.*got 1\.0.*init_tau=2\.0"),
        (lambda: neurons.PLIF(init_tau=0.5), r"init_tau .*got 0\.5.*init_tau=2\.0"),
        (lambda: neurons.PLIF(float("nan")), r"init_tau .*got nan"),
        (lambda: neurons.PLIF(float("inf")), r"init_tau must be finite .*got inf"),
        (lambda: neurons.LIF(tau=1.0), r"tau must be finite and > 1.*got 1\.0.*tau=2\.0"),
        (lambda: neurons.LIF(-3.0), r"tau .*got -3\.0"),
    ],
)
def test_tau_at_most_one_raises_with_value_and_fix(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize("shape", [(0,), (0, 3), ()])
def test_empty_time_axis_or_rank_zero_input_raises(shape):
    x = jnp.zeros(shape, jnp.float32)
    pattern = r"T >= 1, got shape " + re.escape(str(shape)) + r".*at least one time step"
    with pytest.raises(ValueError, match=pattern):
        neurons.lif_multistep(x, 0.5)
    with pytest.raises(ValueError, match=pattern):
        neurons.PLIF(2.0)(x)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_non_float_input_raises_with_the_fix(dtype):
    x = jnp.ones((3, 2), dtype)
    with pytest.raises(ValueError, match=r"floating-point .*got dtype .*astype\(jnp.float32\)"):
        neurons.lif_multistep(x, 0.5)
    with pytest.raises(ValueError, match=r"floating-point"):
        neurons.LIF(2.0)(x)
