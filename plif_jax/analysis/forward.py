"""One recorded forward pass: each spiking layer's input, membrane potential, spikes, firing rate
and
the synaptic operations its spikes cause downstream."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import models, neurons

Array = jax.Array


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
