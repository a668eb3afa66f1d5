"""Looking inside a trained PLIF network: time constants, membrane traces, firing, accuracy.

Everything the ``experiments/explore_tau.ipynb`` notebook shows comes from here, so that any script
can compute the same numbers:

* tau of every layer of a model: :func:`plif_jax.models.layer_taus` (restore a workdir's model with
  :func:`plif_jax.checkpoint.restore`).
* :func:`tau_trajectories`: tau of every layer and the learning rate per epoch, from the workdir's
  ``metrics.jsonl``.
* :func:`record_forward`: one forward pass that keeps each spiking layer's input current, membrane
  potential (``h`` before firing, ``v`` after the reset), spikes, firing rate per time step and the
  number of synaptic operations its spikes cause downstream.
* :func:`evaluate_split`: accuracy and confusion matrix of a model on a ``BatchSource``.
* :func:`paper_taus`: the learned tau per layer of the paper's main runs, for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import metrics, models, neurons, paper_runs, parallel, steps

Array = jax.Array


def paper_taus(dataset: str, protocol: str = "A") -> tuple[float, ...]:
    """Final learned tau per PLIF layer (depth order) of the paper's main run on ``dataset``.

    Read from the original repository's logs shipped in ``plif_jax/paper_logs``
    (:func:`plif_jax.paper_runs.main_run`: PLIF, tau_0 2, max pooling, the paper's T), the value
    after the last logged epoch.

    Raises:
      plif_jax.paper_runs.NoPaperRunError: the paper has no run on ``dataset``.
    """
    run = paper_runs.main_run(dataset, protocol)
    return tuple(float(taus[-1]) for taus in run.curves.tau.values())


# --------------------------------------------------------------------------------------------------
# Trajectories from metrics.jsonl


@dataclasses.dataclass(frozen=True)
class TauTrajectories:
    """Per-epoch tau of every layer and the learning rate, from ``metrics.jsonl``.

    Attributes:
      taus: ``{layer: (epochs, taus)}``, two float arrays of equal length, layers in the order in
        which they first appear in the file (the trainer writes them in depth order).
      lr: ``(epochs, lrs)``, the learning rate each epoch trained with (empty if never logged).
      members: a several-seed run's (``config.num_seeds``) per-member taus, ``{'m0': {layer:
        (epochs, taus)}, ...}``; then ``taus`` holds the members' mean. Empty for one seed.
    """

    taus: dict[str, tuple[np.ndarray, np.ndarray]]
    lr: tuple[np.ndarray, np.ndarray]
    members: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = dataclasses.field(
        default_factory=dict
    )

    def __getitem__(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        return self.taus[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.taus)


def tau_trajectories(workdir: str | os.PathLike) -> TauTrajectories:
    """Tau of every layer and the learning rate per epoch, read from ``<workdir>/metrics.jsonl``.

    Every record holding an ``epoch`` and keys ``tau/<layer>`` contributes one point per layer
    (``tau/<layer>/m<i>``: member ``i`` of a several-seed run; ``.../std`` is skipped); a
    record with ``lr`` gives that epoch's learning rate. When an epoch appears more than once (a
    resumed run re-logs it) the last record wins.

    Args:
      workdir: a training workdir (or the path of a ``metrics.jsonl`` file).

    Returns:
      A :class:`TauTrajectories`: ``result.taus[layer] == (epochs, taus)`` and ``result.lr``.
    """
    path = os.fspath(workdir)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: tau_trajectories reads the metrics.jsonl that "
            "plif_jax.train.train_and_evaluate writes into its workdir; pass that workdir."
        )
    taus: dict[str, dict[int, float]] = {}
    members: dict[str, dict[str, dict[int, float]]] = {}
    lrs: dict[int, float] = {}
    for rec in metrics.read_metrics(path):
        if "epoch" not in rec:
            continue
        epoch = int(rec["epoch"])
        for key, value in rec.items():
            if not key.startswith("tau/") or value is None:
                continue
            layer, _, member = key[len("tau/") :].partition("/")
            if not member:
                taus.setdefault(layer, {})[epoch] = float(value)
            elif member != "std":
                members.setdefault(member, {}).setdefault(layer, {})[epoch] = float(value)
        if rec.get("lr") is not None:
            lrs[epoch] = float(rec["lr"])
    if not taus:
        raise ValueError(
            f"{path} holds no 'tau/<layer>' values: was the run trained with neuron kind 'plif' "
            "(LIF layers have no learned tau)?"
        )

    def arrays(points: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        epochs = sorted(points)
        return np.asarray(epochs, np.int64), np.asarray([points[e] for e in epochs], np.float64)

    return TauTrajectories(
        taus={layer: arrays(points) for layer, points in taus.items()},
        lr=arrays(lrs),
        members={
            m: {layer: arrays(points) for layer, points in layers.items()}
            for m, layers in members.items()
        },
    )


# --------------------------------------------------------------------------------------------------
# One recorded forward pass


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """What one spiking layer did during :func:`record_forward` (numpy arrays, time-major).

    Attributes:
      name: the layer's name.
      tau: its time constant; v_threshold, v_reset: its threshold and reset potential.
      current: input current ``X[t]`` ``[T, B, ...]``.
      h: membrane potential after charging, before firing (compare with the threshold).
      v: membrane potential after the reset.
      spikes: ``[T, B, ...]``, 0/1.
      firing_rate: ``[T]``, mean of the spikes over the batch and the layer's neurons per step.
      synops: ``[T, B]`` synaptic operations that the spikes cause in the next synaptic layer (see
        :func:`record_forward`); zero for the output layer, whose spikes go to the vote.
      fan_out: the next synaptic layer's description, e.g. ``'Conv 3x3 -> 16'``, or ``None``.
    """

    name: str
    tau: float
    v_threshold: float
    v_reset: float
    current: np.ndarray
    h: np.ndarray
    v: np.ndarray
    spikes: np.ndarray
    firing_rate: np.ndarray
    synops: np.ndarray
    fan_out: str | None


@dataclasses.dataclass(frozen=True)
class ForwardRecord:
    """Result of :func:`record_forward`: the model output and one :class:`LayerRecord` per layer."""

    output: np.ndarray
    layers: dict[str, LayerRecord]

    @property
    def total_synops(self) -> float:
        """Synaptic operations of the whole network, summed over time and batch."""
        return float(sum(rec.synops.sum() for rec in self.layers.values()))


def _as_tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * n


def _conv_pads(layer: nnx.Conv, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (low, high) zero padding per spatial axis, as ``nnx.Conv`` applies it."""
    n = len(spatial)
    kernel = _as_tuple(layer.kernel_size, n)
    strides = _as_tuple(layer.strides or 1, n)
    dilation = _as_tuple(layer.kernel_dilation or 1, n)
    padding = layer.padding
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise NotImplementedError(
                f"synaptic_ops counts zero-padded convolutions ('SAME', 'VALID', explicit pads), "
                f"not padding={padding!r}"
            )
        window = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
        return list(jax.lax.padtype_to_pads(spatial, window, strides, padding))
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def conv_fan_out_map(layer: nnx.Conv, spatial: tuple[int, ...]) -> np.ndarray:
    """How many output positions of ``layer`` each input position drives, ``[*spatial]`` int64.

    Exact for any kernel size, stride, dilation and zero padding: a 3x3 'SAME' stride-1 conv
    gives 9 inside, 6 on an edge and 4 in a corner.
    """
    if any(d != 1 for d in _as_tuple(layer.input_dilation or 1, len(spatial))):
        raise NotImplementedError("synaptic_ops does not count input-dilated convolutions")
    n = len(spatial)
    kernel = _as_tuple(layer.kernel_size, n)
    strides = _as_tuple(layer.strides or 1, n)
    dilation = _as_tuple(layer.kernel_dilation or 1, n)
    per_axis = []
    for size, k, s, d, (lo, hi) in zip(
        spatial, kernel, strides, dilation, _conv_pads(layer, spatial), strict=True
    ):
        out_size = (size + lo + hi - (k - 1) * d - 1) // s + 1
        taps = np.arange(out_size)[:, None] * s - lo + np.arange(k)[None, :] * d
        per_axis.append(np.bincount(taps[(taps >= 0) & (taps < size)], minlength=size))
    fan = per_axis[0]
    for counts in per_axis[1:]:
        fan = np.multiply.outer(fan, counts)
    return fan.astype(np.int64)


def synaptic_ops(layer: nnx.Module, x: Array) -> Array:
    """Exact synaptic operations per sample of ``layer`` (``nnx.Conv`` / ``nnx.Linear``) on ``x``.

    One operation = one (non-zero input, output unit) connection that the input drives. A linear
    layer's non-zero input drives ``out_features`` operations; a convolution's drives
    ``out_features / feature_group_count`` times the number of output positions its window
    reaches (:func:`conv_fan_out_map`): for a 3x3 'SAME' stride-1 convolution ``C * 9`` inside
    the map, ``C * 6`` on an edge and ``C * 4`` in a corner.

    The count is arithmetic on ``x != 0`` (no product with a matrix of ones: XLA:CPU in
    jax 0.10.2 miscompiles ``jit(lambda x: jnp.sum(x @ jnp.ones((512, 128))))`` to NaN for 32 or
    more rows).

    Args:
      layer: the synaptic layer.
      x: its input ``[N, ...]`` (leading axis = samples, e.g. ``T*B`` folded; channels last).

    Returns:
      ``[N]`` float32 operation counts.
    """
    nonzero = (x != 0).astype(jnp.float32)
    if isinstance(layer, nnx.Conv):
        if getattr(layer, "mask", None) is not None:
            raise NotImplementedError("synaptic_ops does not count masked (sparse) convolutions")
        spatial = tuple(x.shape[1:-1])
        fan = jnp.asarray(conv_fan_out_map(layer, spatial), jnp.float32)[..., None]
        per_input = layer.out_features // layer.feature_group_count
        return per_input * jnp.sum((nonzero * fan).reshape(x.shape[0], -1), axis=1)
    if isinstance(layer, nnx.Linear):
        return layer.out_features * jnp.sum(nonzero.reshape(x.shape[0], -1), axis=1)
    raise TypeError(f"synaptic_ops counts nnx.Conv and nnx.Linear layers, got {type(layer)}")


def _describe(layer: nnx.Module) -> str:
    if isinstance(layer, nnx.Conv):
        k = "x".join(str(s) for s in layer.kernel_size)
        return f"Conv {k} -> {layer.out_features}"
    return f"Linear -> {layer.out_features}"


def record_forward(model: nnx.Module, x: Array) -> ForwardRecord:
    """Runs ``model`` on ``x`` in eval mode and records every spiking layer.

    The record is what the network sows under ``nnx.capture`` with ``record='traces'``
    (:func:`plif_jax.models.run_with_traces`), one compiled program.

    What is counted as synaptic operations (the usual SNN energy proxy, accumulates instead of
    multiply-accumulates): for each spiking layer, the operations its output causes in the next
    synaptic layer (conv or linear) of the forward pass, counted exactly by :func:`synaptic_ops` on
    that layer's actual input: after pooling (max pooling of 0/1 spikes gives 0/1; an average-pooled
    input is non-zero where any spike fell in the window) and flattening. A conv with
    ``out_channels`` C drives ``C * 9`` operations per interior input spike, fewer at the image
    border; a linear layer ``out_features`` per spike. The encoder layer (fed by the image or the
    event frames, not by spikes) and the vote after the last layer are not counted.

    Args:
      model: a paper network, or any model that records the same way (``spiking_layers()``,
        ``next_synapses()``, a ``set_view(record=...)`` hook and
        :func:`plif_jax.models.record.sow_layers` at the end of its forward); it is switched
        to eval mode (``model.eval()``) and left there.
      x: one model input, e.g. ``[T, B, 2, H, W]`` event frames or ``[B, C, H, W]`` images.

    Returns:
      A :class:`ForwardRecord`; ``record.layers`` is keyed by layer name in depth order.
    """
    model.eval()
    named = models.spiking_layers(model)
    synapses = [model.next_synapses()[name] for name, _ in named]
    graphdef, state = nnx.split(model)

    def run(state, x):
        # A merged copy: nothing the forward sows stays in ``model``.
        output, traces = models.run_with_traces(nnx.merge(graphdef, state), x)
        arrays = {}
        for (name, _), synapse in zip(named, synapses, strict=True):
            tr = traces[name]
            t, b = tr.spikes.shape[:2]
            synops = jnp.zeros((t, b), jnp.float32)
            if synapse is not None:
                synops = synaptic_ops(synapse, tr.next_input).reshape(t, b)
            arrays[name] = dict(
                current=tr.current, h=tr.h, v=tr.v, spikes=tr.spikes,
                firing_rate=neurons.firing_rate(tr.spikes), synops=synops,
            )  # fmt: skip
        return output, arrays

    output, arrays = jax.jit(run)(state, x)
    layers = {}
    for (name, neuron), synapse in zip(named, synapses, strict=True):
        layers[name] = LayerRecord(
            name=name,
            tau=float(np.asarray(neuron.tau)),
            v_threshold=neuron.v_threshold,
            v_reset=neuron.v_reset,
            fan_out=None if synapse is None else _describe(synapse),
            **{k: np.asarray(v) for k, v in arrays[name].items()},
        )
    return ForwardRecord(output=np.asarray(output), layers=layers)


# --------------------------------------------------------------------------------------------------
# Accuracy and confusion matrix


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 counts; row = true label, column = prediction.

    Samples whose ``mask`` is 0 (evaluation padding) are left out.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions differ in length: {labels.shape[0]} vs {predictions.shape[0]}"
        )
    keep = np.ones(labels.shape, bool) if mask is None else np.asarray(mask).reshape(-1) > 0
    for what, values in (("labels", labels), ("predictions", predictions)):
        bad = values[keep][(values[keep] < 0) | (values[keep] >= num_classes)]
        if bad.size:
            raise ValueError(f"{what} must lie in [0, {num_classes}), found {bad[0]}")
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels[keep], predictions[keep]), 1)
    return counts


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) and confusion matrix (rows: true, columns: predicted).

    ``num_silent``: samples whose output layer did not spike at all (all counts 0); the argmax
    assigns them class 0.
    """

    accuracy: float
    confusion: np.ndarray
    num_samples: int
    num_silent: int


def evaluate_split(
    model: nnx.Module,
    source: Any,
    preprocess: Callable[..., Array],
    *,
    num_classes: int | None = None,
) -> EvalResult:
    """Accuracy and confusion matrix of ``model`` on every sample of ``source``.

    The evaluation is the training loop's own (:func:`plif_jax.steps.eval_step` and
    :func:`plif_jax.steps.evaluate`, on one device).

    Args:
      model: a network; switched to eval mode (``model.eval()``) and left there.
      source: a ``plif_jax.data`` ``BatchSource`` (``source.batches()`` yields dicts with ``x``,
        ``y`` and ``mask``; padded samples have mask 0 and are not counted).
      preprocess: the data bundle's ``preprocess(x, *, train, rng)``, run with ``train=False``.
      num_classes: defaults to ``model.num_classes``.

    Returns:
      An :class:`EvalResult`. The prediction is the argmax of the spike counts; ties (e.g. no
      output spike at all) go to the lowest class index, as ``jnp.argmax`` breaks them.
    """
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError("model has no num_classes attribute; pass num_classes=...")
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    eval_fn = jax.jit(
        functools.partial(
            steps.eval_step,
            graphdef=graphdef,
            preprocess=preprocess,
            num_classes=num_classes,
            time_steps=getattr(model, "T", None) or 1,  # scales the loss only (unused here)
        )
    )
    state = steps.TrainState(params, rest, None)
    result = steps.evaluate(
        eval_fn, state, source.batches(), parallel.create_mesh(1), predictions=True
    )
    if result["count"] == 0:
        raise ValueError("the source yielded no (unmasked) sample; nothing to evaluate")
    counts = confusion_matrix(result["y"], result["pred"], num_classes)
    return EvalResult(
        accuracy=float(np.trace(counts)) / int(counts.sum()),
        confusion=counts,
        num_samples=int(counts.sum()),
        num_silent=int(np.sum(result["silent"])),
    )
