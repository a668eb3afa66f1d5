"""Looking inside a trained PLIF network: time constants, membrane traces, firing, accuracy.

Everything the ``experiments/explore_tau.ipynb`` notebook shows comes from here, so that any script
can compute the same numbers:

* :func:`layer_taus`: tau (and PLIF's ``w``) of every spiking layer, by name, in depth order, from a
  model or from a training workdir's Orbax checkpoint.
* :func:`tau_trajectories`: tau of every layer and the learning rate per epoch, from the workdir's
  ``metrics.jsonl``.
* :func:`record_forward`: one forward pass that keeps each spiking layer's input current, membrane
  potential (``h`` before firing, ``v`` after the reset), spikes, firing rate per time step and the
  number of synaptic operations its spikes cause downstream.
* :func:`evaluate_split`: accuracy and confusion matrix of a model on a ``BatchSource``.
* :data:`PAPER_TAUS`: the learned tau per layer of the paper's runs, for comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import neurons

Array = jax.Array

PAPER_TAUS_SOURCE = (
    "fangwei123456/Parametric-Leaky-Integrate-and-Fire-Spiking-Neuron@f644ff6, logs/ (TensorBoard "
    "scalars w0..w{L-1} after the last of 1024 epochs, tau = 1 + exp(-w)), tabulated in "
    "spec/plif_reference.md section 6"
)
"""Where :data:`PAPER_TAUS` and :data:`PAPER_TAU_RUNS` come from."""

PAPER_TAU_RUNS: dict[str, tuple[float, ...]] = {
    "mnist A": (2.056, 1.564, 23.61, 2.542),
    "fashion_mnist A": (1.744, 1.776, 29.72, 3.432),
    "cifar10 A": (1.929, 1.237, 1.577, 1.637, 1.674, 2.060, 55.00, 2.747),
    "cifar10 A, init_tau=16": (2.551, 1.521, 1.766, 1.735, 1.848, 2.245, 55.43, 2.602),
    "nmnist A (T=10)": (1.468, 2.576, 9.550, 7.479),
    "cifar10dvs A": (1.417, 1.515, 1.675, 1.639, 9.537, 2.050),
    "dvsgesture A": (1.613, 1.513, 2.007, 1.916, 1.672, 3.994, 1.794),
    "dvsgesture A, init_tau=16": (2.764, 2.696, 2.737, 2.769, 2.942, 6.576, 1.931),
    "dvsgesture B": (1.671, 1.207, 2.381, 1.951, 1.657, 4.101, 1.709),
    "cifar10 B": (1.853, 1.228, 1.524, 1.576, 1.670, 1.992, 48.39, 2.679),
}
"""Final learned tau per PLIF layer (depth order: conv layers, hidden FC, output FC) of every paper
run in the reference logs, keyed by ``"<dataset> <protocol>[, variant]"``. Source:
:data:`PAPER_TAUS_SOURCE`."""

PAPER_TAUS: dict[str, tuple[float, ...]] = {
    "mnist": PAPER_TAU_RUNS["mnist A"],
    "fashion_mnist": PAPER_TAU_RUNS["fashion_mnist A"],
    "cifar10": PAPER_TAU_RUNS["cifar10 A"],
    "nmnist": PAPER_TAU_RUNS["nmnist A (T=10)"],
    "cifar10dvs": PAPER_TAU_RUNS["cifar10dvs A"],
    "dvsgesture": PAPER_TAU_RUNS["dvsgesture A"],
}
"""Learned tau per layer of the paper's main run (protocol A, init_tau 2, PLIF, max pooling) for
each of the six datasets, keyed by dataset name. Source: :data:`PAPER_TAUS_SOURCE`."""


# --------------------------------------------------------------------------------------------------
# Spiking layers and their time constants


def spiking_layers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """The spiking (LIF / PLIF) layers of ``model`` as ``(name, module)`` in depth order.

    Uses the model's own ``spiking_layers()`` when it has one (the paper networks do); otherwise
    the modules of the NNX graph that are LIF or PLIF neurons, named by their path.
    """
    own = getattr(model, "spiking_layers", None)
    if callable(own):
        return [(str(name), module) for name, module in own()]
    return [
        ("/".join(str(p) for p in path), module)
        for path, module in nnx.iter_modules(model)
        if isinstance(module, neurons.LIF | neurons.PLIF)
    ]


def _restore(workdir: str | os.PathLike, which: str) -> tuple[nnx.Module, Any]:
    from plif_jax import checkpoint  # lazy: checkpoint pulls in orbax and the training stack

    return checkpoint.restore(os.fspath(workdir), which=which)


def layer_taus(
    model_or_workdir: nnx.Module | str | os.PathLike, *, which: str = "latest"
) -> dict[str, dict[str, float | None]]:
    """Time constant of every spiking layer, by name, in depth order.

    Args:
      model_or_workdir: a model, or a training workdir whose Orbax checkpoint is restored with
        ``plif_jax.checkpoint.restore(workdir, which=which)``.
      which: ``'latest'`` (end of training) or ``'best'`` checkpoint, for a workdir.

    Returns:
      ``{layer: {'tau': tau, 'w': w}}``; PLIF layers report ``tau = 1 + exp(-w)`` and their ``w``,
      LIF layers their fixed tau and ``w = None``.
    """
    if isinstance(model_or_workdir, str | os.PathLike):
        model, _ = _restore(model_or_workdir, which)
    else:
        model = model_or_workdir
    layers = spiking_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no LIF/PLIF layer; layer_taus needs a spiking network "
            "(e.g. plif_jax.models.create_model(...))."
        )
    out: dict[str, dict[str, float | None]] = {}
    for name, layer in layers:
        if isinstance(layer, neurons.PLIF):
            w = float(np.asarray(layer.w[...]))
            # tau = 1/sigmoid(w) = 1 + exp(-w), computed in float64 from the stored float32 w.
            out[name] = {"tau": 1.0 + math.exp(-w), "w": w}
        else:
            out[name] = {"tau": float(np.asarray(layer.tau)), "w": None}
    return out


# --------------------------------------------------------------------------------------------------
# Trajectories from metrics.jsonl


@dataclasses.dataclass(frozen=True)
class TauTrajectories:
    """Per-epoch tau of every layer and the learning rate, from ``metrics.jsonl``.

    Attributes:
      taus: ``{layer: (epochs, taus)}``, two float arrays of equal length, layers in the order in
        which they first appear in the file (the trainer writes them in depth order).
      lr: ``(epochs, lrs)``, the learning rate each epoch trained with (empty if never logged).
    """

    taus: dict[str, tuple[np.ndarray, np.ndarray]]
    lr: tuple[np.ndarray, np.ndarray]

    def __getitem__(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        return self.taus[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.taus)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (one JSON object per line; blank lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                # A run killed mid-write leaves a truncated last line: say where.
                raise ValueError(
                    f"{path}:{i} is not valid JSON ({e.msg}); delete that line (a run killed while "
                    "writing leaves a truncated last line) and retry."
                ) from e
    return records


def tau_trajectories(workdir: str | os.PathLike) -> TauTrajectories:
    """Tau of every layer and the learning rate per epoch, read from ``<workdir>/metrics.jsonl``.

    Every record holding an ``epoch`` and keys ``tau/<layer>`` contributes one point per layer; a
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
    lrs: dict[int, float] = {}
    for rec in read_metrics(path):
        if "epoch" not in rec:
            continue
        epoch = int(rec["epoch"])
        for key, value in rec.items():
            if key.startswith("tau/") and value is not None:
                taus.setdefault(key[len("tau/") :], {})[epoch] = float(value)
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
        taus={layer: arrays(points) for layer, points in taus.items()}, lr=arrays(lrs)
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


_SYNAPTIC_TYPES: tuple[type, ...] = (nnx.Conv, nnx.Linear)


@contextlib.contextmanager
def _patched_calls(wrappers: Mapping[type, Callable[[Callable], Callable]]) -> Iterator[None]:
    """Replaces ``cls.__call__`` by ``wrap(cls.__call__)`` for each class; restores them on exit.

    Patching the class, not the instances: Python looks ``__call__`` up on the type. A class
    that only inherited ``__call__`` gets it removed again, not a copy left behind.
    """
    saved = {cls: cls.__dict__.get("__call__") for cls in wrappers}
    originals = {cls: cls.__call__ for cls in wrappers}
    try:
        for cls, wrap in wrappers.items():
            cls.__call__ = wrap(originals[cls])
        yield
    finally:
        for cls, own in saved.items():
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own


def _recording(
    neuron_types: set[type], events: list[tuple[str, Any, Any]]
) -> contextlib.AbstractContextManager[None]:
    """Logs every neuron and synaptic-layer call, in call order, into ``events``.

    The models call their neurons without ``return_membrane``; the patched neurons ask for the
    trace and still return what the caller asked for, so no model needs a recording mode.
    """

    def wrap_neuron(original: Callable) -> Callable:
        def recording_neuron_call(self, x_seq, *, return_membrane=False):
            spikes, trace = original(self, x_seq, return_membrane=True)
            events.append(("neuron", self, (x_seq, spikes, trace)))
            return (spikes, trace) if return_membrane else spikes

        return recording_neuron_call

    def wrap_synapse(original: Callable) -> Callable:
        def recording_syn_call(self, x, *args, **kwargs):
            events.append(("synapse", self, x))
            return original(self, x, *args, **kwargs)

        return recording_syn_call

    wrappers: dict[type, Callable[[Callable], Callable]] = {
        cls: wrap_synapse for cls in _SYNAPTIC_TYPES
    }
    wrappers.update({cls: wrap_neuron for cls in neuron_types})
    return _patched_calls(wrappers)


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

    What is counted as synaptic operations (the usual SNN energy proxy, accumulates instead of
    multiply-accumulates): for each spiking layer, the operations its output causes in the next
    synaptic layer (conv or linear) of the forward pass, counted exactly by :func:`synaptic_ops` on
    that layer's actual input: after pooling (max pooling of 0/1 spikes gives 0/1; an average-pooled
    input is non-zero where any spike fell in the window) and flattening. A conv with
    ``out_channels`` C drives ``C * 9`` operations per interior input spike, fewer at the image
    border; a linear layer ``out_features`` per spike. The encoder layer (fed by the image or the
    event frames, not by spikes) and the vote after the last layer are not counted.

    Args:
      model: a spiking network; it is switched to eval mode (``model.eval()``) and left there.
      x: one model input, e.g. ``[T, B, 2, H, W]`` event frames or ``[B, C, H, W]`` images.

    Returns:
      A :class:`ForwardRecord`; ``record.layers`` is keyed by layer name in depth order.
    """
    model.eval()
    named = spiking_layers(model)
    if not named:
        raise ValueError(f"{type(model).__name__} has no LIF/PLIF layer to record.")
    neuron_types = {type(module) for _, module in named}
    graphdef, state = nnx.split(model)
    static: dict[str, dict[str, Any]] = {}  # filled while tracing: names, thresholds, fan-out

    def run(state, x):
        # A merged copy: the firing rates its neurons sow are dropped with it.
        m = nnx.merge(graphdef, state)
        config = getattr(m, "config", None)
        if getattr(config, "remat_chunk", None) is not None:
            # The rematerialised forward runs the neurons inside a time-chunked scan, out of the
            # recorder's reach; the default forward gives the same spikes and counts exactly.
            m.config = dataclasses.replace(config, remat_chunk=None)
        names = {id(module): name for name, module in spiking_layers(m)}
        events: list[tuple[str, Any, Any]] = []
        with _recording(neuron_types, events):
            output = m(x)
        arrays: dict[str, dict[str, Array]] = {}
        last: str | None = None
        for kind, module, payload in events:
            if kind == "neuron":
                name = names.get(id(module))
                if name is None:  # a neuron outside spiking_layers(): not a network layer
                    continue
                if name in arrays:
                    raise ValueError(
                        f"spiking layer {name!r} was called twice in one forward pass; "
                        "record_forward expects each layer to run once over all T steps."
                    )
                current, spikes, trace = payload
                arrays[name] = dict(
                    current=current,
                    h=trace.h,
                    v=trace.v,
                    spikes=spikes,
                    firing_rate=neurons.firing_rate(spikes),
                    synops=jnp.zeros(spikes.shape[:2], jnp.float32),
                )
                static[name] = dict(
                    name=name,
                    tau=module.tau,
                    v_threshold=module.v_threshold,
                    v_reset=module.v_reset,
                    fan_out=None,
                )
                last = name
            elif last is not None and static[last]["fan_out"] is None:
                t, b = arrays[last]["spikes"].shape[:2]
                # Fold every leading axis (T*B, or T and B) into one: [N, *features].
                feature_ndim = len(module.kernel_size) + 1 if isinstance(module, nnx.Conv) else 1
                flat = payload.reshape(-1, *payload.shape[payload.ndim - feature_ndim :])
                arrays[last]["synops"] = synaptic_ops(module, flat).reshape(t, b)
                static[last]["fan_out"] = _describe(module)
        taus = {name: jnp.asarray(info.pop("tau"), jnp.float32) for name, info in static.items()}
        return output, arrays, taus

    # One compiled program: much faster than dispatching every op of the network eagerly.
    output, arrays, taus = jax.jit(run)(state, x)
    ordered = {}
    for name, _ in named:
        if name in arrays:
            fields = {k: np.asarray(v) for k, v in arrays[name].items()}
            ordered[name] = LayerRecord(tau=float(taus[name]), **static[name], **fields)
    return ForwardRecord(output=np.asarray(output), layers=ordered)


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
    seed: int = 0,
) -> EvalResult:
    """Accuracy and confusion matrix of ``model`` on every sample of ``source``.

    Args:
      model: a network; switched to eval mode (``model.eval()``) and left there.
      source: a ``plif_jax.data`` ``BatchSource`` (``source.batches()`` yields dicts with ``x``,
        ``y`` and ``mask``; padded samples have mask 0 and are not counted).
      preprocess: the data bundle's ``preprocess(x, *, train, rng)``, run with ``train=False``.
      num_classes: defaults to ``model.num_classes``.
      seed: seeds the (unused in eval) preprocessing rng.

    Returns:
      An :class:`EvalResult`. The prediction is the argmax of the spike counts; ties (e.g. no
      output spike at all) go to the lowest class index, as ``jnp.argmax`` breaks them.
    """
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError("model has no num_classes attribute; pass num_classes=...")
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, x, rng):
        # A merged copy: the firing rates it sows are dropped with it, so the model is unchanged.
        m = nnx.merge(graphdef, state)
        counts = m(preprocess(x, train=False, rng=rng))
        return jnp.argmax(counts, axis=-1), jnp.all(counts == 0, axis=-1)

    rng = jax.random.key(seed)
    counts = np.zeros((num_classes, num_classes), np.int64)
    silent = 0
    for batch in source.batches():
        pred, no_spike = predict(state, jnp.asarray(batch["x"]), rng)
        mask = batch.get("mask")
        keep = np.ones(len(batch["y"]), bool) if mask is None else np.asarray(mask) > 0
        counts += confusion_matrix(batch["y"], np.asarray(pred), num_classes, keep)
        silent += int(np.sum(np.asarray(no_spike) & keep))
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the source yielded no (unmasked) sample; nothing to evaluate")
    return EvalResult(
        accuracy=float(np.trace(counts)) / total,
        confusion=counts,
        num_samples=total,
        num_silent=silent,
    )
