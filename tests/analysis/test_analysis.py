"""plif_jax.analysis on tiny networks whose spikes, taus and op counts are counted by hand."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plif_jax import analysis, models, neurons
from plif_jax.models import record as record_lib
from tests.support.paper import PAPER_NUM_SPIKING


class _Recording(nnx.Module):
    """The recording protocol of the paper nets (plif_jax.models.record), for hand-made nets."""

    record = None

    def set_view(self, record=None):
        if record is not None:
            self.record = record or None

    def _fire(self, neuron, current, taps, name):
        spikes, trace = neuron.dynamics(current, return_membrane=True)
        taps[name] = dict(current=current, spikes=spikes, h=trace.h, v=trace.v, next_input=None)
        return spikes

    def _sow(self, taps, next_inputs):
        if self.record:
            for name, x in next_inputs.items():
                taps[name]["next_input"] = x
            record_lib.sow_layers(self, taps)


class TinyDense(_Recording):
    """x [T, B, 2] -> Linear(2, 3) -> PLIF -> Linear(3, 4) -> LIF(tau 4) -> counts [B, 4]."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(2, 3, use_bias=False, rngs=rngs)
        # Currents: neuron 0 = 2 x0, neuron 1 = 1.5 x0, neuron 2 = x1.
        self.fc1.kernel[...] = jnp.array([[2.0, 1.5, 0.0], [0.0, 0.0, 1.0]])
        self.sn1 = neurons.PLIF(init_tau=2.0)
        self.fc2 = nnx.Linear(3, 4, use_bias=False, rngs=rngs)
        self.fc2.kernel[...] = jnp.full((3, 4), 0.25)
        self.sn2 = neurons.LIF(tau=4.0)
        self.num_classes = 4

    def spiking_layers(self):
        return [("sn1", self.sn1), ("sn2", self.sn2)]

    def next_synapses(self):
        return {"sn1": self.fc2, "sn2": None}

    def __call__(self, x_TBF):
        t, b = x_TBF.shape[:2]
        taps = {}
        s1 = self._fire(self.sn1, self.fc1(x_TBF.reshape(t * b, -1)).reshape(t, b, -1), taps, "sn1")
        s1_in = s1.reshape(t * b, -1)
        s2 = self._fire(self.sn2, self.fc2(s1_in).reshape(t, b, -1), taps, "sn2")
        self._sow(taps, {"sn1": s1_in})
        return s2.sum(0)


class TinyConv(_Recording):
    """x [T, B, 4, 4, 1] -> Conv 1x1 (x2) -> PLIF -> Conv 3x3 SAME (1 -> 2 channels) -> PLIF."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.conv1 = nnx.Conv(1, 1, (1, 1), use_bias=False, rngs=rngs)
        self.conv1.kernel[...] = jnp.full((1, 1, 1, 1), 2.0)
        self.sn1 = neurons.PLIF(init_tau=2.0)
        self.conv2 = nnx.Conv(1, 2, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.sn2 = neurons.PLIF(init_tau=2.0)

    def spiking_layers(self):
        return [("first", self.sn1), ("second", self.sn2)]

    def next_synapses(self):
        return {"first": self.conv2, "second": None}

    def __call__(self, x):
        t, b = x.shape[:2]
        taps = {}
        c1 = self.conv1(x.reshape(t * b, 4, 4, 1)).reshape(t, b, 4, 4, 1)
        s1 = self._fire(self.sn1, c1, taps, "first")
        s1_in = s1.reshape(t * b, 4, 4, 1)
        s2 = self._fire(self.sn2, self.conv2(s1_in).reshape(t, b, 4, 4, 2), taps, "second")
        self._sow(taps, {"first": s1_in})
        return s2.sum((0, 2, 3, 4))


def dense_input(T=4):
    # Sample 0: currents (2, 1.5, 1); sample 1: currents (0, 0, 3); constant over time.
    return jnp.tile(jnp.array([[[1.0, 1.0], [0.0, 3.0]]]), (T, 1, 1))


def test_layer_taus_reads_back_hand_set_w_exactly_in_depth_order():
    model = TinyDense()
    model.sn1.w[...] = jnp.asarray(0.3, jnp.float32)
    taus = models.layer_taus(model)
    assert list(taus) == ["sn1", "sn2"]  # the neurons only, in depth order
    assert taus["sn1"] == 1.0 + math.exp(-float(np.float32(0.3)))
    assert taus["sn2"] == 4.0
    assert models.layer_taus(model, learnable_only=True) == {"sn1": taus["sn1"]}


def test_layer_taus_uses_the_models_own_spiking_layer_names():
    model = TinyConv()
    model.sn2.w[...] = jnp.asarray(neurons.w_from_tau(16.0), jnp.float32)
    taus = models.layer_taus(model)
    assert list(taus) == ["first", "second"]
    assert taus["first"] == 2.0
    assert taus["second"] == pytest.approx(16.0, rel=1e-6)


def test_record_forward_spikes_membrane_rates_and_synops_equal_hand_counts():
    rec = analysis.record_forward(TinyDense(), dense_input(T=4))
    assert list(rec.layers) == ["sn1", "sn2"]
    first = rec.layers["sn1"]
    # tau 2 (k = 1/2): current 2 fires every step, 1.5 every second step (h = .75, 1.125, ...),
    # 1 never (h = .5, .75, .875, .9375), 3 every step.
    expected = np.zeros((4, 2, 3), np.float32)
    expected[:, 0, 0] = 1
    expected[1::2, 0, 1] = 1
    expected[:, 1, 2] = 1
    np.testing.assert_array_equal(first.spikes, expected)
    np.testing.assert_array_equal(first.current[:, 0], np.tile([2.0, 1.5, 1.0], (4, 1)))
    np.testing.assert_array_equal(first.h[:, 0, 1], [0.75, 1.125, 0.75, 1.125])
    np.testing.assert_array_equal(first.v[:, 0, 1], [0.75, 0.0, 0.75, 0.0])
    np.testing.assert_array_equal(first.h[:, 0, 2], [0.5, 0.75, 0.875, 0.9375])
    np.testing.assert_array_equal(first.firing_rate, np.array([2, 3, 2, 3], np.float32) / 6)
    # Every spike drives fc2's 4 outputs: per (t, b) 4 x the number of spikes.
    np.testing.assert_array_equal(first.synops, [[4, 4], [8, 4], [4, 4], [8, 4]])
    assert first.fan_out == "Linear -> 4"
    assert first.tau == 2.0 and first.v_threshold == 1.0 and first.v_reset == 0.0
    # The output layer's spikes go to the vote: no synaptic operation.
    np.testing.assert_array_equal(rec.layers["sn2"].synops, np.zeros((4, 2)))
    assert rec.layers["sn2"].fan_out is None
    assert rec.total_synops == 40.0
    assert rec.output.shape == (2, 4)


def test_record_forward_counts_conv_fan_out_exactly_at_borders():
    # Input spikes at a corner (0, 0), an edge (0, 2) and the interior (2, 2) of a 4x4 map.
    x = np.zeros((3, 1, 4, 4, 1), np.float32)
    x[:, 0, 0, 0] = x[:, 0, 0, 2] = x[:, 0, 2, 2] = 1.0
    x[1] = 0.0  # no spike at t = 1
    model = TinyConv()
    rec = analysis.record_forward(model, jnp.asarray(x))
    first = rec.layers["first"]
    np.testing.assert_array_equal(first.spikes, x)
    np.testing.assert_array_equal(first.firing_rate, [3 / 16, 0.0, 3 / 16])
    # 2 output channels x (4 corner + 6 edge + 9 interior neighbours) = 38 per step with spikes.
    np.testing.assert_array_equal(first.synops[:, 0], [38.0, 0.0, 38.0])
    assert first.fan_out == "Conv 3x3 -> 2"
    # Recording left nothing in the model, and a plain call records nothing.
    assert not jax_tree_leaves(nnx.state(model, nnx.Intermediate))
    assert model.record is None
    np.testing.assert_array_equal(model(jnp.asarray(x)), rec.output)


def jax_tree_leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def test_synaptic_ops_counts_linear_fan_out_per_nonzero_input():
    layer = nnx.Linear(5, 7, rngs=nnx.Rngs(1))  # with a bias: it must not count
    x = jnp.array([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [0.25, 0, 0, 0, 0]])
    np.testing.assert_array_equal(analysis.synaptic_ops(layer, x), [21.0, 0.0, 7.0])


def test_conv_fan_out_map_counts_window_coverage_for_padding_and_stride():
    rngs = nnx.Rngs(0)
    same = nnx.Conv(1, 1, (3, 3), padding="SAME", rngs=rngs)
    np.testing.assert_array_equal(analysis.conv_fan_out_map(same, (4, 4))[0], [4, 6, 6, 4])
    np.testing.assert_array_equal(analysis.conv_fan_out_map(same, (4, 4))[1], [6, 9, 9, 6])
    # VALID, stride 2 on 5 inputs: windows [0..2] and [2..4]; input 2 is in both.
    valid = nnx.Conv(1, 1, (3, 3), strides=2, padding="VALID", rngs=rngs)
    np.testing.assert_array_equal(analysis.conv_fan_out_map(valid, (5, 5))[0], [1, 1, 2, 1, 1])
    explicit = nnx.Conv(1, 1, (3, 3), padding=((1, 1), (0, 0)), rngs=rngs)
    np.testing.assert_array_equal(analysis.conv_fan_out_map(explicit, (3, 3))[0], [2, 2, 2])


def test_synaptic_ops_under_jit_on_many_rows_equal_numpy_counts():
    # Regression: a product with a matrix of ones miscompiles to NaN under jit on XLA:CPU
    # (jax 0.10.2) from 32 rows on; the counts must not depend on such a product.
    rng = np.random.default_rng(0)
    linear = nnx.Linear(512, 128, rngs=nnx.Rngs(0))
    x = (rng.random((128, 512)) < 0.1).astype(np.float32)
    ops = jax.jit(lambda x: analysis.synaptic_ops(linear, x))(jnp.asarray(x))
    np.testing.assert_array_equal(ops, (x != 0).sum(1) * 128)
    conv = nnx.Conv(3, 5, (3, 3), padding="SAME", rngs=nnx.Rngs(0))
    xc = (rng.random((64, 8, 8, 3)) < 0.2).astype(np.float32)
    ops = jax.jit(lambda x: analysis.synaptic_ops(conv, x))(jnp.asarray(xc))
    expected = (xc * _border_fan_in_counts(8)[None, :, :, None]).sum((1, 2, 3)) * 5
    np.testing.assert_array_equal(ops, expected)


def test_confusion_matrix_counts_known_predictions_and_skips_padding():
    labels = np.array([0, 0, 1, 2, 2, 2, 1])
    preds = np.array([0, 1, 1, 2, 0, 2, 0])
    mask = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)  # the last sample is padding
    cm = analysis.confusion_matrix(labels, preds, 3, mask)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\), found 5"):
        analysis.confusion_matrix(labels, np.full(7, 5), 3)


class Identity(nnx.Module):
    """A 'model' whose scores are its input: the predictions are known in advance."""

    num_classes = 3

    def __call__(self, x):
        return x


class ListSource:
    def __init__(self, batches):
        self._batches = batches

    def batches(self, epoch=0, start=0):
        yield from self._batches


def test_evaluate_split_gives_accuracy_and_confusion_of_known_predictions():
    eye = np.eye(3, dtype=np.float32)
    source = ListSource(
        [
            {"x": eye[[0, 1, 2, 2]], "y": np.array([0, 1, 1, 2], np.int32), "mask": np.ones(4)},
            # Padding (mask 0) is ignored; tied scores (all zero) predict class 0.
            {
                "x": np.stack([eye[1], np.zeros(3, np.float32), eye[0], eye[0]]),
                "y": np.array([1, 2, 0, 0], np.int32),
                "mask": np.array([1, 1, 0, 0], np.float32),
            },
        ]
    )
    calls = []

    def preprocess(x, *, train, rng):
        calls.append(train)
        return x * 2.0

    result = analysis.evaluate_split(Identity(), source, preprocess)
    np.testing.assert_array_equal(result.confusion, [[1, 0, 0], [0, 2, 1], [1, 0, 1]])
    assert result.num_samples == 6
    assert result.accuracy == 4 / 6
    assert result.num_silent == 1  # the all-zero row; the padded rows are not counted
    assert set(calls) == {False}


def test_tau_trajectories_reads_epochs_last_record_wins_and_lr(tmp_path):
    records = [
        {"epoch": 0, "step": 10, "train_loss": 0.1},  # a train record without tau
        {"epoch": 0, "step": 10, "lr": 1e-3, "tau/conv.0": 1.9, "tau/fc.1": 2.1},
        {"epoch": 1, "step": 20, "lr": 5e-4, "tau/conv.0": 1.8, "tau/fc.1": 2.5},
        {"step": 25, "samples_per_s": 3.0},  # no epoch: ignored
        {"epoch": 1, "step": 20, "lr": 5e-4, "tau/conv.0": 1.7, "tau/fc.1": 2.6},  # resumed
        {"epoch": 2, "step": 30, "lr": 0.0, "tau/conv.0": 1.6, "tau/fc.1": 2.7},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    traj = analysis.tau_trajectories(tmp_path)
    assert list(traj) == ["conv.0", "fc.1"]
    epochs, taus = traj["conv.0"]
    np.testing.assert_array_equal(epochs, [0, 1, 2])
    np.testing.assert_array_equal(taus, [1.9, 1.7, 1.6])
    np.testing.assert_array_equal(traj.taus["fc.1"][1], [2.1, 2.6, 2.7])
    np.testing.assert_array_equal(traj.lr[0], [0, 1, 2])
    np.testing.assert_array_equal(traj.lr[1], [1e-3, 5e-4, 0.0])


def test_tau_trajectories_names_missing_file_and_truncated_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        analysis.tau_trajectories(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "tau/a": 2.0}\n{"epoch": 1, "ta')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        analysis.tau_trajectories(tmp_path)


def test_paper_taus_cover_the_six_datasets_with_one_tau_per_spiking_layer():
    # One tau per spiking layer of each paper net (the counts tests/core/test_models.py checks).
    taus = {name: analysis.paper_taus(name) for name in PAPER_NUM_SPIKING}
    assert {name: len(t) for name, t in taus.items()} == PAPER_NUM_SPIKING
    assert all(t > 1 for run in taus.values() for t in run)
    # The logs' last epoch of the CIFAR-10 main run: the hidden FC layer's tau is ~55.
    assert 54.0 < taus["cifar10"][6] < 56.0
    for name, run in taus.items():
        # Abstract (shape-only) model at paper size: no 36M-parameter allocation.
        model = nnx.eval_shape(lambda name=name: models.create_model(name, rngs=nnx.Rngs(0)))
        assert len(models.spiking_layers(model)) == len(run), name


def _border_fan_in_counts(size: int) -> np.ndarray:
    """How many outputs of a 3x3 'SAME' conv each input position of a size x size map drives."""
    per_axis = np.full(size, 3)
    per_axis[[0, -1]] = 2
    return np.outer(per_axis, per_axis)


def test_record_forward_on_a_paper_network_matches_its_traces_and_pooled_fan_out():
    from plif_jax import models

    model = models.create_model("nmnist", rngs=nnx.Rngs(0), channels=3, hidden=8)
    model.named_layers()["conv1"].kernel[...] *= 8.0  # eval-mode BN: make sn1 fire too
    model.eval()
    rng = np.random.default_rng(0)
    x = (rng.random((3, 2, 2, 34, 34)) < 0.3).astype(np.float32) * 4.0  # [T, B, 2, H, W]
    rec = analysis.record_forward(model, jnp.asarray(x))
    assert list(rec.layers) == ["sn0", "sn1", "sn2", "sn3"]
    np.testing.assert_array_equal(rec.output, np.asarray(model(jnp.asarray(x))))
    for name, neuron in models.spiking_layers(model):
        # The recorded spikes and membranes are the neuron's dynamics on the recorded current.
        layer = rec.layers[name]
        spikes, trace = neuron.dynamics(jnp.asarray(layer.current), return_membrane=True)
        np.testing.assert_array_equal(layer.spikes, np.asarray(spikes))
        np.testing.assert_array_equal(layer.h, np.asarray(trace.h))
        np.testing.assert_array_equal(layer.v, np.asarray(trace.v))
    s0 = rec.layers["sn0"].spikes  # [T, B, 34, 34, 3]
    assert s0.sum() > 0 and rec.layers["sn1"].spikes.sum() > 0
    # sn0 -> max pool 2x2 -> conv1 (3x3 SAME, 3 output channels) on a 17x17 map.
    pooled = s0.reshape(3, 2, 17, 2, 17, 2, 3).max(axis=(3, 5))
    per_position = _border_fan_in_counts(17)[None, None, :, :, None]
    expected0 = (pooled * per_position * 3).sum(axis=(2, 3, 4))
    np.testing.assert_array_equal(rec.layers["sn0"].synops, expected0)
    # sn1 -> max pool -> flatten -> fc0 (8 outputs): 8 operations per pooled spike.
    pooled1 = rec.layers["sn1"].spikes[:, :, :16, :16].reshape(3, 2, 8, 2, 8, 2, 3).max((3, 5))
    np.testing.assert_array_equal(rec.layers["sn1"].synops, pooled1.sum(axis=(2, 3, 4)) * 8)
    assert rec.layers["sn1"].fan_out == "Linear -> 8"
    assert rec.layers["sn2"].fan_out == "Linear -> 100"


def test_record_forward_on_a_rematerialised_model_records_the_same_layers():
    # remat_chunk runs the neurons inside a time-chunked scan; the record must still hold every
    # layer, equal to the same weights without remat.
    from plif_jax import models

    rng = np.random.default_rng(1)
    x = jnp.asarray((rng.random((4, 2, 2, 16, 16)) < 0.3).astype(np.float32) * 4.0)
    records = []
    for chunk in (None, 2):
        model = models.create_model(
            "nmnist", rngs=nnx.Rngs(0), channels=3, hidden=8, input_size=16, remat_chunk=chunk
        )
        model.named_layers()["conv1"].kernel[...] *= 8.0
        records.append(analysis.record_forward(model, x))
    plain, remat = records
    assert list(remat.layers) == list(plain.layers) == ["sn0", "sn1", "sn2", "sn3"]
    assert plain.layers["sn0"].spikes.sum() > 0
    for name in plain.layers:
        np.testing.assert_array_equal(remat.layers[name].spikes, plain.layers[name].spikes)
        np.testing.assert_array_equal(remat.layers[name].synops, plain.layers[name].synops)


def test_tau_trajectories_of_a_several_seed_run_give_each_member_and_the_mean(tmp_path):
    records = [
        {"epoch": e, "tau/sn0": 2.0 + e, "tau/sn0/std": 0.5, "tau/sn0/m0": 1.5 + e,
         "tau/sn0/m1": 2.5 + e, "lr": 1e-3, "lr/m0": 1e-3}
        for e in range(3)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    traj = analysis.tau_trajectories(tmp_path)
    assert list(traj) == ["sn0"]  # the mean; '/std' and the members are not layers
    np.testing.assert_array_equal(traj["sn0"][1], [2.0, 3.0, 4.0])
    assert sorted(traj.members) == ["m0", "m1"]
    np.testing.assert_array_equal(traj.members["m1"]["sn0"][0], [0, 1, 2])
    np.testing.assert_array_equal(traj.members["m1"]["sn0"][1], [2.5, 3.5, 4.5])
