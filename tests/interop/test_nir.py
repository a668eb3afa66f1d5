"""NIR export / import (plif_jax.nir_graph, issue 13).

* Round trip: each of the six paper networks (reduced width; PLIF and LIF, max and average
  pooling, several taus, both BN modes, trained-looking parameters: non-trivial BatchNorm
  statistics, random PLIF taus, weights scaled so that every layer fires) goes export ->
  ``nir.write`` -> ``nir.read`` -> import and comes back as the same class with bit-identical
  parameters: identical output spike counts and identical spikes in every layer on random inputs.
* Generic runner: the same graph with all metadata stripped (as another tool would write it)
  runs through ``NIRNetwork`` with NIR's ``>`` threshold and the folded BatchNorm: every spike of
  every layer equal to the network's, and no membrane exactly at the threshold (counted), so the
  ``>=`` / ``>`` difference changed nothing; a constructed case shows which rule each side uses.
* Cross-framework (snnTorch's NIR importer and exporter, torch CPU):
  ``tests/interop/test_nir_crossframework.py``.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import layers, models, neurons, nir_graph
from tests.support.nir_nets import CASES, make, nhwc
from tests.support.runs import tiny_config

nir = pytest.importorskip("nir")
# XLA's optimisations off: compilation dominates these tiny nets; the comparisons are between
# two runs under the same setting.

BATCH = 3
STEPS = 4  # time steps of the event inputs (T=None accepts any)


def inputs(model: models.SpikingNet, seed: int = 1) -> jax.Array:
    cfg = model.config
    key = jax.random.key(seed)
    if cfg.is_static:
        return jax.random.uniform(key, (BATCH, cfg.in_channels, cfg.input_size, cfg.input_size))
    shape = (cfg.T or STEPS, BATCH, cfg.in_channels, cfg.input_size, cfg.input_size)
    return (jax.random.uniform(key, shape) < 0.3).astype(jnp.float32)


def sequence(model: models.SpikingNet, x: jax.Array) -> jax.Array:
    """The input as NIR sees it: [T, B, C, H, W] (the static image at every step)."""
    if model.config.is_static:
        return jnp.broadcast_to(x[None], (model.config.T, *x.shape))
    return x


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{name: (model, graph read back from its .nir file)}: one export per net."""
    out = {}
    for name in CASES:
        model = make(name)
        path = tmp_path_factory.mktemp("nir") / f"{name}.nir"
        nir.write(path, nir_graph.export(model))
        out[name] = (model, nir.read(path))
    return out


traced = nnx.jit(models.run_with_traces)
run_recorded = nnx.jit(lambda runner, x: runner.run(x, record=True))


@pytest.fixture(scope="module")
def runs(graphs):
    """{name: (input, the network's (counts, traces))}, each computed once."""
    out = {}
    for name, (model, _) in graphs.items():
        x = inputs(model)
        out[name] = (x, traced(model, x))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_the_same_network(graphs, runs, name):
    model, graph = graphs[name]
    back = nir_graph.import_graph(graph)
    assert type(back) is type(model)
    assert back.config == model.config
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        nnx.state(model, nnx.Param, nnx.BatchStat), nnx.state(back, nnx.Param, nnx.BatchStat),
    )  # fmt: skip
    assert all(jax.tree.leaves(same))
    x, (counts, traces) = runs[name]
    counts2, traces2 = traced(back, x)
    np.testing.assert_array_equal(np.asarray(counts), np.asarray(counts2))
    assert list(traces) == list(traces2)
    for layer in traces:
        spikes = np.asarray(traces[layer].spikes)
        np.testing.assert_array_equal(spikes, np.asarray(traces2[layer].spikes), err_msg=layer)
        # A meaningful comparison: every layer fires, none saturates.
        assert 0.0 < spikes.mean() < 1.0, (layer, spikes.mean())


@pytest.mark.parametrize("name", list(CASES))
def test_generic_runner_same_spikes(graphs, runs, name):
    """The graph without any metadata (NIR's own semantics: '>', dt = 1, folded BN)."""
    model, graph = graphs[name]
    runner = nir_graph.import_graph(nir_graph.strip_metadata(graph))
    assert isinstance(runner, nir_graph.NIRNetwork)
    assert runner.threshold_rule == ">" and runner.dt == 1.0
    x, (counts, traces) = runs[name]
    out, spikes = run_recorded(runner, sequence(model, x))
    for layer, trace in traces.items():
        np.testing.assert_array_equal(np.asarray(trace.spikes), nhwc(spikes[layer]), layer)
        # The rule: no membrane of the network landed exactly on the threshold, so its '>='
        # and NIR's '>' agree on every spike.
        assert int(np.sum(np.asarray(trace.h) == 1.0)) == 0
    # Output: the vote of identical spikes. A Linear of 1/10 (float32 0.1 summed) and the mean
    # (sum / 10) round differently (7 * 0.1 != 0.7 in float32): equal to 1e-6, and equal
    # predictions except where two classes tie exactly (then rounding picks one).
    got, want = np.asarray(out.sum(0)), np.asarray(counts)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    top2 = np.sort(want, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    np.testing.assert_array_equal(np.argmax(got, -1)[clear], np.argmax(want, -1)[clear])


def test_threshold_rule_is_tested_on_a_membrane_at_the_threshold():
    """X = 2 at the first step of a tau = 2 LIF gives H = 1 = V_th exactly: plif_jax (>=) fires,
    NIR's LIF (>) does not; the runner follows the graph's metadata, else NIR."""
    graph = nir.NIRGraph.from_list(
        nir.LIF(
            tau=np.full(1, 2.0),
            r=np.ones(1),
            v_leak=np.zeros(1),
            v_threshold=np.ones(1),
            v_reset=np.zeros(1),
        ),  # fmt: skip
    )
    x = jnp.full((1, 1, 1), 2.0)
    ours = neurons.lif_multistep(x, 0.5, v_threshold=1.0, v_reset=0.0)
    assert float(ours[0, 0, 0]) == 1.0  # H = 0 + (2 - 0) / 2 = 1 >= 1
    nir_rule = nir_graph.NIRNetwork(graph).run(x)
    assert float(nir_rule[0, 0, 0]) == 0.0  # 1 > 1 is false
    paper_rule = nir_graph.NIRNetwork(graph, threshold_rule=">=").run(x)
    assert float(paper_rule[0, 0, 0]) == 1.0
    graph.metadata = {"threshold_rule": ">="}
    assert float(nir_graph.NIRNetwork(graph).run(x)[0, 0, 0]) == 1.0


def test_graph_contents_follow_the_mapping(graphs):
    model, graph = graphs["mnist"]
    kinds = [type(graph.nodes[b]).__name__ for _, b in graph.edges]
    assert kinds == [
        "Conv2d", "LIF", "SumPool2d", "Threshold", "Conv2d", "LIF", "SumPool2d", "Threshold",
        "Flatten", "Linear", "LIF", "Linear", "LIF", "Linear", "Output",
    ]  # fmt: skip
    meta = graph.metadata
    assert float(meta["dt"]) == 1.0 and nir_graph.common._meta_str(meta["threshold_rule"]) == ">="
    assert list(np.asarray(meta["input_shape"])) == [1, 12, 12]
    sn0 = graph.nodes["sn0"]
    assert sn0.tau.shape == (4, 12, 12)  # full arrays of the layer's (C, H, W)
    tau = float(model.features[0].neuron.tau)
    assert np.allclose(sn0.tau, tau, rtol=1e-6) and np.all(sn0.v_leak == 0)
    assert np.all(sn0.r == 1) and np.all(sn0.v_threshold == 1)
    assert tuple(graph.nodes["encoder"].padding) == (1, 1)
    # the fold: W' = W g / sqrt(var + eps), b' = beta - g mean / sqrt(var + eps)
    bn = model.encoder.bn
    s = np.asarray(bn.scale[...], np.float64) / np.sqrt(np.asarray(bn.var[...], np.float64) + 1e-5)
    want = np.transpose(np.asarray(model.encoder.conv.kernel[...]) * s, (3, 2, 0, 1))
    np.testing.assert_allclose(graph.nodes["encoder"].weight, want, rtol=1e-6)
    vote = graph.nodes["vote"].weight
    assert vote.shape == (10, 100) and np.allclose(vote.sum(1), 1.0)


def test_dt_scales_tau_and_the_runner_uses_it(graphs, runs):
    model, _ = graphs["nmnist"]
    graph = nir_graph.export(model, dt=1e-4)
    assert float(graph.metadata["dt"]) == 1e-4
    assert np.allclose(graph.nodes["sn0"].tau, 16.0 * 1e-4)
    x, (counts, _) = runs["nmnist"]
    runner = nir_graph.import_graph(graph, generic=True)
    assert runner.dt == 1e-4
    got = nnx.jit(nir_graph.NIRNetwork.__call__)(runner, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(counts), atol=1e-5)
    assert isinstance(nir_graph.import_graph(graph), type(model))


def test_training_mode_and_wrong_shape_are_refused(graphs):
    model = models.create_model("nmnist", rngs=nnx.Rngs(0), **CASES["nmnist"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        nir_graph.export(model)
    model.eval()
    with pytest.raises(ValueError, match="input_shape"):
        nir_graph.export(model, input_shape=(3, 12, 12))
    with pytest.raises(TypeError):
        nir_graph.export(layers.BatchNorm(3))


def test_edited_graph_falls_back_to_the_runner(graphs):
    _, graph = graphs["nmnist"]
    d = graph.to_dict()
    d["nodes"]["conv0"]["bias"] = d["nodes"]["conv0"]["bias"] + 1.0
    edited = nir.dict2NIRNode(d)
    with pytest.warns(UserWarning, match="does not match its metadata"):
        out = nir_graph.import_graph(edited)
    assert isinstance(out, nir_graph.NIRNetwork)


def test_unsupported_and_recurrent_graphs_are_refused():
    lif = lambda: nir.LIF(tau=np.full(2, 2.0), r=np.ones(2), v_leak=np.zeros(2),
                          v_threshold=np.ones(2), v_reset=np.zeros(2))  # fmt: skip
    graph = nir.NIRGraph.from_list(nir.Delay(delay=np.ones(2)))
    with pytest.raises(NotImplementedError, match="Delay"):
        nir_graph.NIRNetwork(graph)
    rec = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([2])}), "lif": lif(),
               "w": nir.Linear(weight=np.eye(2)), "output": nir.Output(output_type=np.array([2]))},
        edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")],
    )  # fmt: skip
    with pytest.raises(ValueError, match="cycle"):
        nir_graph.NIRNetwork(rec)


def test_generic_nodes_if_affine_scale_nonuniform():
    """IF, Affine, Scale and per-neuron LIF parameters against a direct NumPy loop."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    tau = np.array([2.0, 3.0, 5.0])
    graph = nir.NIRGraph.from_list(
        nir.Affine(weight=w, bias=b),
        nir.Scale(scale=np.array([1.5, 2.0, 0.5])),
        nir.LIF(
            tau=tau,
            r=np.array([1.0, 2.0, 0.5]),
            v_leak=np.array([0.1, 0.0, 0.2]),
            v_threshold=np.array([1.0, 0.8, 1.2]),
            v_reset=np.zeros(3),
        ),  # fmt: skip
        nir.Linear(weight=np.eye(3)),
        nir.IF(r=np.ones(3), v_threshold=np.full(3, 1.5), v_reset=np.zeros(3)),
    )
    x = rng.uniform(0, 1, size=(6, 2, 5)).astype(np.float32)
    out = np.asarray(nir_graph.NIRNetwork(graph).run(jnp.asarray(x)))
    v1, v2, want = np.zeros((2, 3)), np.zeros((2, 3)), []
    for t in range(6):
        i = (x[t] @ w.T + b) * np.array([1.5, 2.0, 0.5])
        v1 = v1 + (np.array([0.1, 0.0, 0.2]) - v1 + np.array([1.0, 2.0, 0.5]) * i) / tau
        s1 = v1 > np.array([1.0, 0.8, 1.2])
        v1 = np.where(s1, 0.0, v1)
        v2 = v2 + s1
        s2 = v2 > 1.5
        v2 = np.where(s2, 0.0, v2)
        want.append(s2)
    np.testing.assert_array_equal(out, np.array(want, np.float32))


def test_runner_evaluates_like_the_model(graphs, runs):
    """``NIRNetwork(x)`` takes the model's own input (static NCHW batch, repeated T times)."""
    model, graph = graphs["mnist"]
    runner = nir_graph.import_graph(graph, generic=True)
    x, (counts, _) = runs["mnist"]
    got = nnx.jit(nir_graph.NIRNetwork.__call__)(runner, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(counts), atol=1e-5)
    assert runner.num_classes == 10 and math.isclose(runner.dt, 1.0)


@pytest.mark.e2e  # a training run, then the export CLI's main
@pytest.mark.usefixtures("fast")
def test_export_cli_on_a_tiny_run(tmp_path, capsys):
    """``python -m experiments.export_nir``: model.nir beside the checkpoint, the imported
    graph's test accuracy equal to the checkpoint's."""
    from experiments import export_nir
    from plif_jax.training import run as train

    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(num_epochs=1, steps_per_epoch=2), workdir)
    assert export_nir.main(["--workdir", workdir, "--which", "best"]) == 0
    out = capsys.readouterr().out
    assert os.path.exists(os.path.join(workdir, "checkpoints", "model.nir"))
    acc = {
        line[len("test accuracy ") :].rsplit(maxsplit=1)[0].strip(): float(line.split()[-1])
        for line in out.splitlines()
        if line.startswith("test accuracy")
    }
    assert acc["checkpoint"] == acc["nir (plif_jax)"], out
    assert "imported graph equals the checkpoint (confusion matrix): True" in out
