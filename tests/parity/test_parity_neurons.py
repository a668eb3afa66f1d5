"""Parity of ``lif_multistep``, ``PLIF`` and ``LIF`` with SpikingJelly 2.0 (torch, CPU).

The oracle is ``spikingjelly.activation_based.neuron.ParametricLIFNode`` / ``LIFNode`` in step
mode ``'m'`` with ``decay_input=True``, an explicit surrogate and an explicit ``detach_reset``
(SpikingJelly's defaults differ from the paper's). ``store_v_seq=True`` gives the membrane after
the reset, our ``MembraneTrace.v``.

Precision. XLA on CPU contracts ``v + (x - v) * k`` into a fused multiply-add, so float32 ``H``
differs from torch's (unfused) ``H`` in the last bit where ``(x - v) * k`` is inexact (~40% of
the elements at tau = 1.5, measured). The strict parity therefore runs in float64 on both sides
(x64 enabled only inside those tests). SpikingJelly takes two code paths, both differentiated by
torch autograd: in float64 its pure-torch reference loop, in float32 its registered
``sj_plif``/``sj_lif`` operator (on CPU the reference ``_forward_impl`` with the
``_SurrogateSpike`` autograd function). The float32 checks use a tolerance and inputs whose ``H``
stays at least 1e-5 away from the threshold (checked), so that a last-bit difference cannot flip
a spike.

Run ``python tests/parity/test_parity_neurons.py`` to print the largest errors measured.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import neurons, surrogate
from tests.support.oracle import import_oracle

pytestmark = [
    pytest.mark.parity,
    pytest.mark.usefixtures("optimized_compile"),  # the neuron as users compile it
    # Flax 0.12.8 deprecates Module.sow() outside nnx.capture(); the neurons sow on every call.
    pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning"),
]

# The oracle is optional: without it this module skips (an error under PLIF_REQUIRE_ORACLE=1).
torch = import_oracle("torch")
sj_neuron = import_oracle("spikingjelly.activation_based.neuron")
sj_surrogate = import_oracle("spikingjelly.activation_based.surrogate")

TAUS = (1.5, 2.0, 16.0)
SHAPES = ((1, (3,)), (7, (2, 5, 7)), (13, (4, 6)))
SURROGATES = {
    "atan": (surrogate.atan(2.0), sj_surrogate.ATan),
    "sigmoid": (surrogate.sigmoid(4.0), lambda: sj_surrogate.Sigmoid(alpha=4.0)),
}
# float64: both sides agree to rounding (~1e-16 relative); these bounds leave room for the
# accumulation of rounding over T steps and for the w gradient's sum over all elements.
TOL64 = dict(rtol=1e-10, atol=1e-12)
# float32: the task's 1e-5 relative; atol covers values that cancel to ~0.
TOL32 = dict(rtol=1e-5, atol=1e-6)


def _inputs(tau: float, T: int, shape: tuple, seed: int, dtype) -> tuple[np.ndarray, ...]:
    """Input current and upstream gradients; the mean grows with tau so that slow neurons fire."""
    rng = np.random.default_rng(seed)
    size = (T, *shape)
    x = rng.normal(0.9 + 0.1 * tau, 1.5, size=size).astype(dtype)
    g_s = rng.normal(size=size).astype(dtype)
    g_v = rng.normal(size=size).astype(dtype)
    return x, g_s, g_v


def _oracle(
    kind, tau, x, g_s, g_v, *, detach_reset, surrogate_name="atan", v_threshold=1.0, v_reset=0.0
):
    """SpikingJelly's spikes, v_seq, d(loss)/dx and d(loss)/dw for loss = <S, g_s> + <V, g_v>.

    ``g_v=None``: the loss is ``<S, g_s>`` alone (the spikes-only path of our neurons).
    """
    common = dict(
        decay_input=True,
        v_threshold=v_threshold,
        v_reset=v_reset,
        surrogate_function=SURROGATES[surrogate_name][1](),
        detach_reset=detach_reset,
        step_mode="m",
        store_v_seq=True,
    )
    if kind == "plif":
        node = sj_neuron.ParametricLIFNode(init_tau=float(tau), **common)
    else:
        node = sj_neuron.LIFNode(tau=float(tau), **common)
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    node = node.to(dtype)
    xt = torch.tensor(x, requires_grad=True)
    spikes = node(xt)
    loss = (spikes * torch.tensor(g_s)).sum()
    if g_v is not None:
        loss = loss + (node.v_seq * torch.tensor(g_v)).sum()
    loss.backward()
    out = {"s": spikes.detach().numpy(), "gx": xt.grad.numpy()}
    if g_v is not None:
        out["v"] = node.v_seq.detach().numpy()
    if kind == "plif":
        out["w"] = node.w.detach().numpy()
        out["gw"] = node.w.grad.numpy()
    return out


def _loss(out, g_s, g_v):
    """``<S, g_s> + <V, g_v>`` from ``(S, trace)``, or ``<S, g_s>`` from ``S`` when g_v is None."""
    if g_v is None:
        return jnp.sum(out * g_s), (out, None)
    s, trace = out
    return jnp.sum(s * g_s) + jnp.sum(trace.v * g_v), (s, trace.v)


@jax.jit  # NNX modules are pytrees: the jit caches on the module's static fields (LIF's tau)
def _module_grads(model, x, g_s, g_v):
    def loss(model, x):
        # Captured, so that the sown firing_rate stays out of the module inside the trace.
        out, _ = nnx.capture(model, nnx.Intermediate)(x, return_membrane=g_v is not None)
        return _loss(out, g_s, g_v)

    (_, (s, v)), (g_model, gx) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model, x)
    return s, v, gx, g_model


@partial(jax.jit, static_argnames=("detach_reset", "surrogate_name"))
def _functional_grads(w, x, g_s, g_v, *, detach_reset, surrogate_name):
    def loss(w, x):
        out = neurons.lif_multistep(
            x,
            jax.nn.sigmoid(w),
            detach_reset=detach_reset,
            surrogate=SURROGATES[surrogate_name][0],
            return_membrane=g_v is not None,
        )
        return _loss(out, g_s, g_v)

    (_, (s, v)), (gw, gx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(w, x)
    return s, v, gx, gw


def _ours_functional(w, x, g_s, g_v, *, detach_reset, surrogate_name="atan"):
    """``lif_multistep`` with ``k = sigmoid(w)``: spikes, v, d/dx, d/dw."""
    s, v, gx, gw = _functional_grads(
        w, x, g_s, g_v, detach_reset=detach_reset, surrogate_name=surrogate_name
    )
    out = {"s": s, "gx": gx, "gw": gw}
    return out if v is None else {**out, "v": v}


def _ours_module(model, x, g_s, g_v):
    """An NNX neuron module: spikes, v, d/dx and (PLIF) d/dw."""
    s, v, gx, g_model = _module_grads(model, x, g_s, g_v)
    out = {"s": s, "gx": gx} if v is None else {"s": s, "v": v, "gx": gx}
    if isinstance(model, neurons.PLIF):
        out["gw"] = g_model["w"][...]
    return out


def _assert_parity(ours, ref, tol, dtype):
    assert set(ours) == set(ref) - {"w"}  # every quantity the oracle gives is compared
    for key in ours:
        assert ours[key].dtype == dtype, key
    np.testing.assert_array_equal(np.asarray(ours["s"]), ref["s"])  # spikes identical
    for key in ("v", "gx", "gw"):
        if key in ours:
            np.testing.assert_allclose(np.asarray(ours[key]), ref[key], err_msg=key, **tol)


def _assert_fires(spikes: np.ndarray, T: int):
    """Guards that a case exercises firing and resetting (not an all-silent neuron)."""
    if T > 1:
        assert 0 < spikes.sum() < spikes.size


def _charge_margin(x: np.ndarray, tau: float) -> float:
    """min |H - V_th| of the float64 dynamics (numpy, V_reset = 0, V_th = 1)."""
    k = 1.0 / tau  # = sigmoid(-ln(tau - 1))
    v = np.zeros(x.shape[1:])
    margin = np.inf
    for xt in x.astype(np.float64):
        h = v + (xt - v) * k
        margin = min(margin, float(np.min(np.abs(h - 1.0))))
        v = np.where(h >= 1.0, 0.0, h)
    return margin


# ------------------------------------------------------------------------------------- float64


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize(("T", "shape"), SHAPES)
@pytest.mark.parametrize("tau", TAUS)
def test_lif_multistep_matches_parametric_lif_node_float64(tau, T, shape, detach_reset):
    x, g_s, g_v = _inputs(tau, T, shape, seed=T, dtype=np.float64)
    ref = _oracle("plif", tau, x, g_s, g_v, detach_reset=detach_reset)
    with jax.enable_x64(True):
        # SpikingJelly creates w in float32 and .to(float64) widens that value: use the same w.
        assert np.float32(neurons.w_from_tau(tau)) == ref["w"]
        w = jnp.asarray(ref["w"], jnp.float64)
        ours = _ours_functional(w, x, g_s, g_v, detach_reset=detach_reset)
        _assert_parity(ours, ref, TOL64, jnp.float64)
    _assert_fires(ref["s"], T)


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize(("T", "shape"), [SHAPES[0], SHAPES[2]])
@pytest.mark.parametrize("tau", TAUS)
def test_spikes_only_lif_multistep_matches_parametric_lif_node_float64(tau, T, shape, detach_reset):
    # return_membrane=False: the path models train with (the loss sees the spikes only).
    x, g_s, _ = _inputs(tau, T, shape, seed=50 + T, dtype=np.float64)
    ref = _oracle("plif", tau, x, g_s, None, detach_reset=detach_reset)
    with jax.enable_x64(True):
        w = jnp.asarray(ref["w"], jnp.float64)
        ours = _ours_functional(w, x, g_s, None, detach_reset=detach_reset)
        _assert_parity(ours, ref, TOL64, jnp.float64)
    _assert_fires(ref["s"], T)


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("tau", TAUS)
def test_plif_module_matches_parametric_lif_node_float64(tau, detach_reset):
    T, shape = 7, (2, 5, 7)
    x, g_s, g_v = _inputs(tau, T, shape, seed=11, dtype=np.float64)
    ref = _oracle("plif", tau, x, g_s, g_v, detach_reset=detach_reset)
    with jax.enable_x64(True):
        model = neurons.PLIF(tau, detach_reset=detach_reset, param_dtype=jnp.float64)
        assert model.w[...].dtype == jnp.float64
        assert float(model.w[...]) == neurons.w_from_tau(tau)
        assert np.float32(model.w[...]) == ref["w"]
        model.w[...] = jnp.asarray(ref["w"])  # SpikingJelly's float32 init, widened
        _assert_parity(_ours_module(model, jnp.asarray(x), g_s, g_v), ref, TOL64, jnp.float64)
    _assert_fires(ref["s"], T)


@pytest.mark.parametrize(
    ("tau", "T", "shape", "detach_reset"),
    [(1.5, *SHAPES[0], True), (2.0, *SHAPES[1], False), (16.0, *SHAPES[2], True)],
)
def test_lif_module_matches_lif_node_float64(tau, T, shape, detach_reset):
    # LIF's tau is a static field (one compilation per case): a diagonal of the grid.
    x, g_s, g_v = _inputs(tau, T, shape, seed=100 + T, dtype=np.float64)
    ref = _oracle("lif", tau, x, g_s, g_v, detach_reset=detach_reset)
    with jax.enable_x64(True):
        model = neurons.LIF(tau, detach_reset=detach_reset, param_dtype=jnp.float64)
        _assert_parity(_ours_module(model, jnp.asarray(x), g_s, g_v), ref, TOL64, jnp.float64)
    _assert_fires(ref["s"], T)


@pytest.mark.parametrize(("kind", "detach_reset"), [("plif", False), ("lif", True)])
def test_sigmoid_surrogate_matches_spikingjelly_sigmoid_float64(kind, detach_reset):
    tau, T, shape = 2.0, 13, (4, 6)
    x, g_s, g_v = _inputs(tau, T, shape, seed=7, dtype=np.float64)
    ref = _oracle(kind, tau, x, g_s, g_v, detach_reset=detach_reset, surrogate_name="sigmoid")
    make = neurons.PLIF if kind == "plif" else neurons.LIF
    with jax.enable_x64(True):
        model = make(
            tau,
            detach_reset=detach_reset,
            surrogate=surrogate.sigmoid(4.0),
            param_dtype=jnp.float64,
        )
        if kind == "plif":
            model.w[...] = jnp.asarray(ref["w"])  # SpikingJelly's float32 init, widened
        _assert_parity(_ours_module(model, jnp.asarray(x), g_s, g_v), ref, TOL64, jnp.float64)
    _assert_fires(ref["s"], T)


@pytest.mark.parametrize(
    ("kind", "detach_reset", "membrane"),
    [("plif", True, True), ("plif", False, False), ("lif", True, False), ("lif", False, True)],
)
def test_nonzero_v_reset_and_threshold_match_spikingjelly_float64(kind, detach_reset, membrane):
    # SpikingJelly 2.0 also starts the membrane at v_reset; V_reset - H in the reset-path
    # gradient is then not just -H.
    tau, T, shape, v_th, v_reset = 2.0, 7, (2, 5, 7), 0.8, -0.3
    x, g_s, g_v = _inputs(tau, T, shape, seed=21, dtype=np.float64)
    g_v = g_v if membrane else None
    ref = _oracle(
        kind, tau, x, g_s, g_v, detach_reset=detach_reset, v_threshold=v_th, v_reset=v_reset
    )
    make = neurons.PLIF if kind == "plif" else neurons.LIF
    with jax.enable_x64(True):
        model = make(
            tau,
            v_threshold=v_th,
            v_reset=v_reset,
            detach_reset=detach_reset,
            param_dtype=jnp.float64,
        )
        if kind == "plif":
            model.w[...] = jnp.asarray(ref["w"])
        _assert_parity(_ours_module(model, jnp.asarray(x), g_s, g_v), ref, TOL64, jnp.float64)
    _assert_fires(ref["s"], T)


# ------------------------------------------------------------------------------------- float32


@pytest.mark.parametrize("membrane", [True, False])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("tau", TAUS)
def test_plif_matches_parametric_lif_node_float32_within_tolerance(tau, detach_reset, membrane):
    T, shape = 13, (2, 5, 7)
    x, g_s, g_v = _inputs(tau, T, shape, seed=3, dtype=np.float32)
    g_v = g_v if membrane else None
    assert _charge_margin(x, tau) > 1e-5  # no H within float32 rounding of the threshold
    ref = _oracle("plif", tau, x, g_s, g_v, detach_reset=detach_reset)
    model = neurons.PLIF(tau, detach_reset=detach_reset)
    assert float(model.w[...]) == float(ref["w"])  # same float32 rounding of -ln(tau - 1)
    _assert_parity(_ours_module(model, jnp.asarray(x), g_s, g_v), ref, TOL32, jnp.float32)
    _assert_fires(ref["s"], T)


@pytest.mark.parametrize(("tau", "detach_reset"), [(1.5, True), (1.5, False), (2.0, False)])
def test_lif_matches_lif_node_float32_within_tolerance(tau, detach_reset):
    # tau = 1.5: k = 1/1.5 is inexact, so the fused multiply-add really changes float32 H.
    # tau = 2: k = 1/2 makes (X - V) k exact, fused or not, so the membrane is bit-identical.
    T, shape = 13, (2, 5, 7)
    x, g_s, g_v = _inputs(tau, T, shape, seed=5, dtype=np.float32)
    assert _charge_margin(x, tau) > 1e-5
    ref = _oracle("lif", tau, x, g_s, g_v, detach_reset=detach_reset)
    model = neurons.LIF(tau, detach_reset=detach_reset)
    ours = _ours_module(model, jnp.asarray(x), g_s, g_v)
    _assert_parity(ours, ref, TOL32, jnp.float32)
    if tau == 2.0:
        np.testing.assert_array_equal(np.asarray(ours["v"]), ref["v"])
    _assert_fires(ref["s"], T)


# ------------------------------------------------------------------------------- measurement


def _errors(a, b) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / |b| over elements with |b| >= 1e-3)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    diff = np.abs(a - b)
    keep = np.abs(b) >= 1e-3
    rel = float(np.max(diff[keep] / np.abs(b[keep]))) if keep.any() else 0.0
    return float(np.max(diff)), rel


def _report() -> None:
    """Largest errors against SpikingJelly: both surrogates, with and without the membrane."""
    for dtype, membrane in itertools.product((np.float64, np.float32), (True, False)):
        same_spikes, worst = True, {k: (0.0, 0.0) for k in ("v", "gx", "gw")}
        with jax.enable_x64(dtype == np.float64):
            for kind, tau, (T, shape), detach, sg in itertools.product(
                ("plif", "lif"), TAUS, SHAPES, (True, False), SURROGATES
            ):
                x, g_s, g_v = _inputs(tau, T, shape, seed=T, dtype=dtype)
                g_v = g_v if membrane else None
                ref = _oracle(kind, tau, x, g_s, g_v, detach_reset=detach, surrogate_name=sg)
                make = neurons.PLIF if kind == "plif" else neurons.LIF
                model = make(
                    tau, detach_reset=detach, surrogate=SURROGATES[sg][0], param_dtype=dtype
                )
                if kind == "plif":
                    model.w[...] = jnp.asarray(ref["w"], dtype)
                ours = _ours_module(model, jnp.asarray(x), g_s, g_v)
                same_spikes &= bool(np.array_equal(np.asarray(ours["s"]), ref["s"]))
                for key in ("v", "gx", "gw"):
                    if key in ours:
                        err = _errors(ours[key], ref[key])
                        worst[key] = tuple(map(max, worst[key], err))
        path = "loss <S,g>+<V,g'>" if membrane else "loss <S,g> (spikes only)"
        print(
            f"{np.dtype(dtype).name}, {path}: spikes identical: {same_spikes}; "
            "max abs / max rel error (rel over |ref| >= 1e-3): "
            + ", ".join(
                f"{name} {worst[k][0]:.1e} / {worst[k][1]:.1e}"
                for k, name in (("v", "membrane"), ("gx", "input grad"), ("gw", "w grad"))
                if membrane or k != "v"
            )
        )


if __name__ == "__main__":
    _report()
