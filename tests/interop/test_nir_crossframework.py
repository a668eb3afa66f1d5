"""Cross-framework NIR check (issue 13): plif_jax graphs in snnTorch 1.0.0 and the reverse.

snnTorch's importer (``snntorch.import_nir.import_from_nir``, nirtorch 2.6 underneath) maps NIR
``LIF`` to ``snn.Leaky`` with a hard-coded ``dt = 1e-4``: ``beta = 1 - dt/tau``, reset to zero in
the same step (``reset_delay=False``), spike at ``U > thr``, and the input scale
``w = r dt / tau`` moved into the threshold (``thr / w``). With ``export(model, dt=1e-4)``
(``tau_nir = tau * 1e-4``) that is ``U <- (1 - 1/tau) U + X``, fire at ``U > tau``: the paper's
``H = V + (X - V) / tau``, fire at ``H >= 1``, for ``U = tau H`` -- the same discretisation in
real arithmetic. ``Flatten`` becomes ``torch.nn.Flatten(start_dim, end_dim)`` on the batched
tensor, so the graph is exported with ``flatten_start_dim=-3`` (NIR's ``0`` would flatten the
batch too).

* Forward: the average-pooling nets (Fashion-MNIST's LIF, a PLIF N-MNIST, CIFAR-10 and
  CIFAR10-DVS from tests/support/nir_nets.py; both BN modes, random taus and BN statistics),
  imported by ``import_from_nir`` (float32) and stepped over T on the same batch: every spike of
  every layer equal to plif_jax's on these inputs, and no membrane exactly at the threshold (so
  snnTorch's ``>`` and plif_jax's ``>=`` agree). Not bit-identical arithmetic: ``beta U + X``
  against ``V + (X - V)/tau`` round differently, so a membrane within a few float32 ulps of the
  threshold could fire on one side only; the test allows that and nothing else (the first layer
  that differs may differ only at such membranes, all differences below 1e-3 of the spikes, equal
  predictions where not tied), and prints the per-layer differences (all 0 when written).
* ``Flatten``: the default export (``start_dim=0``) imports, but flattens the batch into the
  features (the first Linear refuses a batch; one sample at a time runs and is equal).
* Max pooling: snnTorch's importer has no ``Threshold`` (nirtorch maps ``SumPool2d`` to an
  ``LPPool2d`` with norm 1), so the max-pooling nets (SumPool2d + Threshold(0.5)) fail to import
  with nirtorch's "Unknown node type" error (asserted as observed); with a small Threshold
  module added to snnTorch's own node mapping, the max-pooling MNIST net is equal in every layer.
* Reverse: a small conv SNN built in snnTorch (Conv2d -> Leaky (reset to zero, per-neuron beta)
  -> AvgPool2d -> Flatten -> Linear -> Leaky), exported with ``snntorch.export_nir.export_to_nir``,
  written and read back with ``nir.write`` / ``nir.read`` and run by
  ``plif_jax.nir_graph.import_graph`` (the generic runner, ``dt=1e-4``: snnTorch's convention, its
  graph carries no dt) gives every spike of both layers and the output equal to snnTorch's own
  forward.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from flax import nnx

from plif_jax import models, nir_graph
from tests.support.nir_nets import make, nhwc, trained_looking
from tests.support.oracle import import_oracle

# XLA's optimisations off (both sides of each comparison run under the same setting).
pytestmark = pytest.mark.parity

nir = pytest.importorskip("nir")
# The oracle is optional: without it this module skips (an error under PLIF_REQUIRE_ORACLE=1).
torch = import_oracle("torch")
snn = import_oracle("snntorch")
import_nir = import_oracle("snntorch.import_nir")
export_nir = import_oracle("snntorch.export_nir")
nirtorch = import_oracle("nirtorch")

DT = 1e-4  # snnTorch's importer and exporter: a fixed dt
ULP = float(np.finfo(np.float32).eps)  # float32 spacing at the threshold 1.0
BATCH = 6


def _nmnist_plif_avg():
    opts = dict(channels=4, input_size=16, number_layer=2, T=4, neuron="plif", pooling="avg")
    model = models.create_model("nmnist", rngs=nnx.Rngs(0), **opts)
    return trained_looking(model, 0, gains=[2.0, 2.0, 2.0, 3.0])


# The paper nets with average pooling (tests/support/nir_nets.py's cases, and a PLIF N-MNIST).
FORWARD = {
    "fashion_mnist": lambda: make("fashion_mnist"),
    "nmnist_plif_avg": _nmnist_plif_avg,
    "cifar10": lambda: make("cifar10"),
    "cifar10dvs": lambda: make("cifar10dvs"),
}
MAX_POOLING = ("mnist", "nmnist", "dvsgesture")


def sequence(model, seed: int = 1) -> np.ndarray:
    """[T, B, C, H, W] float32: a static image repeated at each step, or random event frames."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    shape = (BATCH, cfg.in_channels, cfg.input_size, cfg.input_size)
    if cfg.is_static:
        x = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        return np.ascontiguousarray(np.broadcast_to(x[None], (cfg.T, *shape)))
    return (rng.uniform(0.0, 1.0, (cfg.T or 4, *shape)) < 0.3).astype(np.float32)


def model_input(model, seq: np.ndarray) -> np.ndarray:
    return seq[0] if model.config.is_static else seq


def quiet(fn, *args, **kwargs):
    """snnTorch's importer prints a warning per LIF node (the threshold rescaling)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def run_torch(module, seq: np.ndarray, dtype=torch.float32):
    """Steps a nirtorch module over T: (output per step [T, B, ...], {Leaky name: spikes}, {Leaky
    name: membranes before the reset})."""
    spikes: dict[str, list] = {}
    neurons = {n: m for n, m in module.named_modules() if isinstance(m, snn.Leaky)}
    hooks = []
    for name, m in neurons.items():
        m.reset_mem()
        hooks.append(
            m.register_forward_hook(
                lambda _m, _i, out, name=name: spikes.setdefault(name, []).append(
                    (out[0] if isinstance(out, tuple) else out).detach().numpy().copy()
                )
            )
        )
    outs, state = [], None
    try:
        with torch.no_grad():
            for t in range(seq.shape[0]):
                x = torch.from_numpy(seq[t]).to(dtype)
                if isinstance(module, torch.nn.Sequential):  # snnTorch's own network
                    out = module(x)
                else:  # a nirtorch GraphModule: (output, state)
                    out, state = module(x, state)
                outs.append(out.numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.stack(outs), {k: np.stack(v) for k, v in spikes.items()}


@pytest.fixture(scope="module")
def forward_runs():
    """{name: (model, graph, seq, plif_jax (counts, traces), snnTorch (out, spikes))}."""
    traced = nnx.jit(models.run_with_traces)
    out = {}
    for name, build in FORWARD.items():
        model = build()
        graph = nir_graph.export(model, dt=DT, flatten_start_dim=-3)
        seq = sequence(model)
        ours = traced(model, model_input(model, seq))
        module = quiet(import_nir.import_from_nir, graph)
        out[name] = (model, graph, seq, ours, run_torch(module, seq))
    return out


@pytest.mark.parametrize("name", list(FORWARD))
def test_snntorch_imports_the_exported_net(forward_runs, name):
    model, graph, seq, (counts, traces), (t_out, t_spikes) = forward_runs[name]
    assert list(t_spikes) == list(traces)  # sn0, sn1, ...: the same layers, in order
    diffs = {}
    first = None
    for layer, trace in traces.items():
        ours = np.asarray(trace.spikes)
        theirs = nhwc(t_spikes[layer])
        assert 0.0 < ours.mean() < 1.0, (layer, ours.mean())  # every layer fires, none saturates
        # snnTorch fires at U > thr, plif_jax at H >= 1: no membrane exactly at the threshold.
        assert int(np.sum(np.asarray(trace.h) == 1.0)) == 0, layer
        differ = ours != theirs
        diffs[layer] = int(differ.sum())
        if first is None and differ.any():
            first = layer
            # Where the first difference appears, both sides saw the same input: it can only be
            # a membrane at the threshold up to float32 rounding of the two update forms.
            h = np.asarray(trace.h)[differ]
            assert np.all(np.abs(h - 1.0) <= 4 * ULP), (layer, np.abs(h - 1.0).max())
    total = sum(np.asarray(t.spikes).size for t in traces.values())
    assert sum(diffs.values()) <= 1e-3 * total, diffs
    got, want = t_out.sum(0), np.asarray(counts)
    top2 = np.sort(want, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    np.testing.assert_array_equal(np.argmax(got, -1)[clear], np.argmax(want, -1)[clear])
    if not any(diffs.values()):  # the common case: the vote of identical spikes
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    print(f"{name}: differing spikes per layer {diffs} of {total}")


def snntorch_node_map():
    """snnTorch 1.0.0's own NIR -> module mapping, as ``import_from_nir`` passes it to nirtorch."""
    to_module = lambda n: import_nir._nir_to_snntorch_module(n, init_hidden=True)
    kinds = (nir.Affine, nir.Linear, nir.Conv2d, nir.Flatten, nir.AvgPool2d, nir.IF, nir.LIF)
    return {kind: to_module for kind in kinds}


def test_flatten_start_dim_zero_flattens_the_batch_in_snntorch(forward_runs):
    """NIR's Flatten(start_dim=0) over (C, H, W) becomes torch.nn.Flatten(0, -1) on [B, C, H, W]:
    the batch is flattened into the features and the first Linear refuses the shape. One sample
    without the batch axis runs, and equals the -3 export."""
    model, _, seq, _, (t_out, _) = forward_runs["fashion_mnist"]
    module = quiet(import_nir.import_from_nir, nir_graph.export(model, dt=DT))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_torch(module, seq)
    one, _ = run_torch(module, np.ascontiguousarray(seq[:, 0]))
    np.testing.assert_array_equal(one, t_out[:, 0])
    # -3 is the same flatten for NIR and plif_jax: the graph imports as the same network, and
    # the generic runner flattens (C, H, W) as with 0.
    graph = forward_runs["fashion_mnist"][1]
    assert int(graph.nodes["flatten"].start_dim) == -3
    assert list(graph.nodes["flatten"].output_type["output"]) == [
        int(np.prod(graph.nodes["flatten"].input_type["input"]))
    ]
    assert type(nir_graph.import_graph(graph)) is type(model)
    runner = nir_graph.import_graph(graph, generic=True)
    np.testing.assert_allclose(np.asarray(runner.run(seq)), t_out, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="flatten_start_dim"):
        nir_graph.export(model, flatten_start_dim=1)


@pytest.mark.parametrize("name", MAX_POOLING)
def test_max_pooling_nets_do_not_import(name):
    """snnTorch 1.0.0 maps no NIR Threshold (nirtorch's default map has SumPool2d, as LPPool2d
    with norm 1, but no Threshold): the max-pooling nets fail to import."""
    graph = nir_graph.export(make(name), dt=DT, flatten_start_dim=-3)
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert {"SumPool2d", "Threshold"} <= kinds
    with pytest.raises(ValueError, match="Unknown node type .*Threshold"):
        quiet(import_nir.import_from_nir, graph)


class _Threshold(torch.nn.Module):
    """NIR Threshold: a spike where the input exceeds the threshold (what snnTorch lacks)."""

    def __init__(self, node):
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(np.asarray(node.threshold)))

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


def test_max_pooling_net_with_a_threshold_module_added():
    """snnTorch's mapping plus the one node it lacks (Threshold; SumPool2d from nirtorch's
    defaults): the max-pooling MNIST net then spikes like plif_jax in every layer."""
    model = make("mnist", gains=[1.0, 1.0, 2.5, 1.8])  # every layer fires on these inputs
    graph = nir_graph.export(model, dt=DT, flatten_start_dim=-3)
    node_map = {**snntorch_node_map(), nir.Threshold: _Threshold}
    module = quiet(nirtorch.nir_to_torch, graph, node_map)
    seq = sequence(model)
    counts, traces = nnx.jit(models.run_with_traces)(model, model_input(model, seq))
    t_out, t_spikes = run_torch(module, seq)
    for layer, trace in traces.items():
        ours = np.asarray(trace.spikes)
        assert 0.0 < ours.mean() < 1.0, layer
        np.testing.assert_array_equal(ours, nhwc(t_spikes[layer]), err_msg=layer)
    np.testing.assert_allclose(t_out.sum(0), np.asarray(counts), rtol=0, atol=1e-5)


# --- the reverse: a conv SNN built and exported by snnTorch, run by plif_jax ------------------
def snntorch_conv_snn(seed: int = 0):
    """Conv2d(2->4, 3x3, pad 1) -> Leaky -> AvgPool2d(2) -> Flatten -> Linear(64->10) -> Leaky on
    2x8x8 frames. Reset to zero (NIR's LIF; snnTorch's default, subtraction, is not what its
    exporter writes: it records v_reset = 0 and no mechanism). beta and threshold as arrays of
    the layer's shape: snnTorch's exporter writes their shapes into the LIF node, and NIR's
    type inference needs them to match the layer."""
    torch.manual_seed(seed)
    shape1, shape2 = (4, 8, 8), (10,)
    beta1 = torch.empty(shape1).uniform_(0.5, 0.95)  # per-neuron decay rates
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        snn.Leaky(beta=beta1, threshold=torch.ones(shape1), init_hidden=True,
                  reset_mechanism="zero"),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
        snn.Leaky(beta=torch.full(shape2, 0.7), threshold=torch.ones(shape2), init_hidden=True,
                  reset_mechanism="zero"),
    )  # fmt: skip
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[0].bias.add_(0.2)
        net[4].weight.mul_(6.0)
    return net


@pytest.mark.filterwarnings("ignore:nirtorch.extract_nir_graph is being deprecated")
def test_snntorch_exported_conv_snn_runs_in_plif_jax(tmp_path):
    net = snntorch_conv_snn()
    rng = np.random.default_rng(3)
    seq = (rng.uniform(size=(8, BATCH, 2, 8, 8)) < 0.4).astype(np.float32)
    graph = quiet(export_nir.export_to_nir, net, torch.from_numpy(seq[0]), ignore_dims=[0])
    kinds = [type(graph.nodes[k]).__name__ for k in ("0", "1", "2", "3", "4", "5")]
    assert kinds == ["Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "LIF"]
    lif = graph.nodes["1"]
    # snnTorch's convention: tau = dt / (1 - beta), r = tau / dt (so dt r / tau = 1).
    np.testing.assert_allclose(lif.tau, DT / (1 - net[1].beta.numpy()), rtol=1e-5)
    path = tmp_path / "snntorch.nir"
    nir.write(path, graph)
    runner = nir_graph.import_graph(nir.read(path), dt=DT)
    assert isinstance(runner, nir_graph.NIRNetwork) and runner.threshold_rule == ">"

    want_out, want = run_torch(net, seq)
    out, spikes = runner.run(seq, record=True)
    assert sorted(spikes) == sorted(want) == ["1", "5"]
    for layer in want:
        got = np.asarray(spikes[layer])
        assert 0.0 < got.mean() < 1.0, (layer, got.mean())
        np.testing.assert_array_equal(got, want[layer], err_msg=layer)
    np.testing.assert_array_equal(np.asarray(out), want_out)
