"""plif_jax network -> ``nir.NIRGraph`` (see :mod:`plif_jax.nir_graph`)."""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import layers, neurons
from plif_jax.models import blocks as blocks_lib
from plif_jax.models import nets
from plif_jax.models import options as options_lib
from plif_jax.nir_graph.common import EULER, FORMAT, METADATA_KEY, _nir

Array = jax.Array


def _check_exportable(model: nnx.Module) -> None:
    if not isinstance(model, nets.SpikingNet):
        raise TypeError(
            f"export takes one of the paper networks (plif_jax.models.SpikingNet), got "
            f"{type(model).__name__}"
        )
    for path, module in nnx.iter_modules(model):
        where = "/".join(map(str, path)) or "model"
        if isinstance(module, layers.BatchNorm) and not module.use_running_average:
            raise ValueError(
                f"NIR cannot express BatchNorm in training mode (batch statistics; {where}): "
                "call model.eval() before export"
            )
        if (
            isinstance(module, layers.TimeSharedDropout)
            and not module.deterministic
            and module.rate > 0
        ):
            raise ValueError(
                f"NIR cannot express dropout in training mode ({where}): call model.eval() "
                "before export"
            )


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _fold(conv_bn: blocks_lib.ConvBN) -> tuple[np.ndarray, np.ndarray]:
    """The BatchNorm (eval) folded into the bias-free conv: ``(weight OIHW, bias)``, float32,
    computed in float64 from the stored values."""
    bn = conv_bn.bn
    kernel = _f64(conv_bn.conv.kernel[...])  # HWIO
    s = _f64(bn.scale[...]) / np.sqrt(_f64(bn.var[...]) + bn.epsilon)
    weight = np.transpose(kernel * s, (3, 2, 0, 1))
    bias = _f64(bn.bias[...]) - _f64(bn.mean[...]) * s
    return weight.astype(np.float32), bias.astype(np.float32)


def _conv_node(conv_bn: blocks_lib.ConvBN, size: int):
    nir = _nir()
    weight, bias = _fold(conv_bn)
    bn = conv_bn.bn
    meta = {
        "plif_jax_kernel_hwio": np.asarray(conv_bn.conv.kernel[...]),
        "plif_jax_bn_scale": np.asarray(bn.scale[...]),
        "plif_jax_bn_bias": np.asarray(bn.bias[...]),
        "plif_jax_bn_mean": np.asarray(bn.mean[...]),
        "plif_jax_bn_var": np.asarray(bn.var[...]),
        "plif_jax_bn_epsilon": float(bn.epsilon),
    }
    return nir.Conv2d(
        input_shape=(size, size), weight=weight, stride=(1, 1), padding=(1, 1),
        dilation=(1, 1), groups=1, bias=bias, metadata=meta,
    )  # fmt: skip


def _neuron_tau(neuron: nnx.Module) -> float:
    """The layer's tau in float64 as the forward uses it: ``1 / decay`` (decay in its dtype)."""
    return float(1.0 / _f64(neuron.decay()))


def _lif_node(neuron: nnx.Module, shape: tuple[int, ...], dt: float):
    nir = _nir()
    full = lambda v: np.full(shape, v, dtype=np.float64)
    meta: dict[str, Any] = {}
    if isinstance(neuron, neurons.PLIF):
        meta["plif_jax_w"] = np.asarray(neuron.w[...]).reshape(1)  # h5: no 0-d
    if neuron.alpha is not None:
        meta["plif_jax_alpha"] = np.asarray(neuron.alpha[...]).reshape(1)
    return nir.LIF(
        tau=full(_neuron_tau(neuron) * dt), r=full(1.0), v_leak=full(neuron.v_reset),
        v_threshold=full(neuron.v_threshold), v_reset=full(neuron.v_reset), metadata=meta,
    )  # fmt: skip


def _options(cfg: options_lib.NetConfig) -> dict[str, Any]:
    out = {}
    for key in options_lib.OPTIONS:
        value = getattr(cfg, key)
        out[key] = str(jnp.dtype(value)) if key == "dtype" else value
    if cfg.is_static:
        out.pop("number_layer")
    return out


def _feature_nodes(model: nets.SpikingNet, nodes: dict[str, Any], dt: float) -> tuple[int, int]:
    """Adds the encoder and the feature blocks' nodes; returns the final (side, channels)."""
    nir = _nir()
    cfg = model.config
    size, channels = cfg.input_size, cfg.in_channels
    if model.encoder is not None:
        nodes["encoder"] = _conv_node(model.encoder, size)
        channels = model.encoder.conv.out_features
    for i, block in enumerate(model.features):
        if block.synapse is not None:
            nodes[f"conv{i}"] = _conv_node(block.synapse, size)
            channels = block.synapse.conv.out_features
        nodes[f"sn{i}"] = _lif_node(block.neuron, (channels, size, size), dt)
        if block.pooling is not None:
            two = np.array([2, 2])
            out = size // 2
            if block.pooling == "max":
                nodes[f"pool{i}"] = nir.SumPool2d(
                    kernel_size=two, stride=two, padding=np.zeros(2, dtype=np.int64)
                )
                nodes[f"pool{i}_or"] = nir.Threshold(
                    threshold=np.full((channels, out, out), 0.5, dtype=np.float32),
                    metadata={"plif_jax": "max pooling of 0/1 spikes = OR = SumPool2d > 0.5"},
                )
            else:
                nodes[f"pool{i}"] = nir.AvgPool2d(
                    kernel_size=two, stride=two, padding=np.zeros(2, dtype=np.int64)
                )
            size = out
    return size, channels


def _graph_metadata(model: nets.SpikingNet, dt: float, shape: tuple[int, ...]) -> dict[str, Any]:
    """The graph's metadata: plif_jax's name/options, dt, the Euler and threshold conventions."""
    cfg = model.config
    info = {
        "format": FORMAT,
        "name": cfg.name,
        "class": type(model).__name__,
        "options": _options(cfg),
    }
    notes = []
    if any(n.alpha is not None for _, n in model.spiking_layers()):
        notes.append(
            "learnable surrogate alpha: training only, not part of the NIR dynamics (kept in "
            "the LIF nodes' metadata for plif_jax)"
        )
    metadata = {
        METADATA_KEY: json.dumps(info, sort_keys=True),
        "net": cfg.name,
        "dt": dt,
        "integration": EULER,
        "threshold_rule": ">=",
        "threshold_note": (
            "plif_jax fires at v >= v_threshold, NIR's LIF at v > v_threshold; they differ only "
            "for a membrane exactly at the threshold"
        ),
        "input_shape": np.array(shape),
        "input": (
            f"static image {list(shape)} fed at each of T={cfg.T} steps"
            if cfg.is_static
            else f"event frames {list(shape)} per time step"
        ),
        "time_steps": -1 if cfg.T is None else int(cfg.T),
        "readout": "output: per-step class votes; summed over time = spike counts",
        "notes": "; ".join(notes) or "none",
    }
    return metadata


def export(
    model: nnx.Module,
    *,
    input_shape: tuple[int, ...] | None = None,
    dt: float = 1.0,
    flatten_start_dim: int = 0,
):
    """``model`` (a paper network in eval mode) as a ``nir.NIRGraph``.

    Args:
      model: ``MNISTNet``, ``CIFAR10Net`` or ``NeuromorphicNet`` (any options), in eval mode.
      input_shape: ``(C, H, W)`` of one time step; checked against the model's (the default).
      dt: the time step the graph's ``tau`` is expressed in: ``tau_nir = tau * dt``. ``1``
        (time steps) by default; ``1e-4`` for snnTorch's importer, which discretises with a
        fixed ``dt = 1e-4`` (see the README's NIR section).
      flatten_start_dim: ``0`` (default) or ``-3``: the ``Flatten`` node's ``start_dim``. Both
        flatten the whole ``(C, H, W)`` in NIR (shapes without the batch axis); torch importers
        that map it to ``torch.nn.Flatten`` on a batched ``[B, C, H, W]`` tensor (snnTorch,
        nirtorch) flatten the batch too with ``0``, correctly with ``-3``.

    Raises:
      ValueError: the model is in training mode (batch statistics or active dropout),
        ``input_shape`` is not the model's, or ``flatten_start_dim`` is not 0 or -3.
    """
    nir = _nir()
    _check_exportable(model)
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    if input_shape is not None and tuple(int(s) for s in input_shape) != shape:
        raise ValueError(
            f"{cfg.name} takes inputs of shape (C, H, W) = {shape} per time step, got "
            f"input_shape={tuple(input_shape)}"
        )
    if not float(dt) > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    dt = float(dt)
    if flatten_start_dim not in (0, -3):
        raise ValueError(f"flatten_start_dim must be 0 or -3, got {flatten_start_dim}")
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    size, channels = _feature_nodes(model, nodes, dt)
    flat_shape = np.array([channels, size, size])
    nodes["flatten"] = nir.Flatten(
        input_type={"input": flat_shape}, start_dim=int(flatten_start_dim), end_dim=-1
    )
    # plif_jax flattens (H, W, C); NIR (C, H, W): nir_column[k] = plif_row[perm[k]].
    perm = np.arange(channels * size * size).reshape(size, size, channels)
    perm = np.transpose(perm, (2, 0, 1)).reshape(-1)
    n_features = len(model.features)
    for j, block in enumerate(model.classifier):
        i = n_features + j
        kernel = np.asarray(block.fc.kernel[...])  # [in, out]
        if j == 0:
            kernel = kernel[perm]
        nodes[f"fc{i}"] = nir.Linear(weight=np.ascontiguousarray(kernel.T))
        nodes[f"sn{i}"] = _lif_node(block.neuron, (block.fc.out_features,), dt)
    n_out = model.classifier[-1].fc.out_features
    groups = n_out // nets.VOTE_GROUP
    vote = np.zeros((groups, n_out), dtype=np.float32)
    for k in range(groups):
        vote[k, k * nets.VOTE_GROUP : (k + 1) * nets.VOTE_GROUP] = 1.0 / nets.VOTE_GROUP
    nodes["vote"] = nir.Linear(
        weight=vote, metadata={"plif_jax": "voting readout: mean of each group of 10"}
    )
    nodes["output"] = nir.Output(output_type={"output": np.array([groups])})
    names = list(nodes)
    edges = list(zip(names[:-1], names[1:], strict=True))
    metadata = _graph_metadata(model, dt, shape)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
