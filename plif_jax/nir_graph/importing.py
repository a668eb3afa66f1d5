"""``nir.NIRGraph`` -> plif_jax module (see :mod:`plif_jax.nir_graph`)."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import neurons
from plif_jax.models import factory, nets
from plif_jax.nir_graph.common import _meta_str, _nir, graph_info
from plif_jax.nir_graph.exporting import _fold, _neuron_tau
from plif_jax.nir_graph.runner import NIRNetwork

Array = jax.Array


def strip_metadata(graph):
    """A copy of ``graph`` without any metadata (graph and nodes): a graph as another tool
    would write it."""
    nir = _nir()
    d = graph.to_dict()

    def drop(node: dict) -> dict:
        node = dict(node)
        node["metadata"] = {}
        if node.get("type") == "NIRGraph":
            node["nodes"] = {k: drop(v) for k, v in node["nodes"].items()}
        return node

    return nir.dict2NIRNode(drop(d))


def _set(var, value) -> None:
    value = np.asarray(value)
    old = var[...]
    if value.size != old.size or (value.ndim > 1 and tuple(old.shape) != tuple(value.shape)):
        raise ValueError(f"shape {value.shape} does not fit parameter {old.shape}")
    var[...] = jnp.asarray(value.reshape(old.shape), dtype=old.dtype)


def _rebuild(graph, info: dict[str, Any]) -> nets.SpikingNet:
    """The exported network from its graph (see the module docstring); raises ValueError where
    the graph's NIR parameters are not what its metadata was folded into."""
    options = dict(info["options"])
    model = factory.create_model(info["name"], rngs=nnx.Rngs(0), **options)
    model.eval()
    nodes = graph.nodes

    def node(name):
        if name not in nodes:
            raise ValueError(f"node {name!r} missing")
        return nodes[name]

    def fill_conv(conv_bn, name):
        n = node(name)
        m = n.metadata
        _set(conv_bn.conv.kernel, m["plif_jax_kernel_hwio"])
        bn = conv_bn.bn
        for key, var in (("scale", bn.scale), ("bias", bn.bias), ("mean", bn.mean),
                         ("var", bn.var)):  # fmt: skip
            _set(var, m[f"plif_jax_bn_{key}"])
        weight, bias = _fold(conv_bn)
        if not (np.array_equal(weight, np.asarray(n.weight)) and
                np.array_equal(bias, np.asarray(n.bias))):  # fmt: skip
            raise ValueError(f"{name}: the Conv2d weight/bias are not the fold of its metadata")

    def fill_neuron(neuron, name):
        n = node(name)
        m = n.metadata
        if isinstance(neuron, neurons.PLIF):
            _set(neuron.w, m["plif_jax_w"])
        if neuron.alpha is not None:
            _set(neuron.alpha, m["plif_jax_alpha"])
        dt = float(_meta_str(graph.metadata.get("dt", 1.0)))
        tau = np.asarray(n.tau, dtype=np.float64)
        if not np.all(tau == _neuron_tau(neuron) * dt):
            raise ValueError(f"{name}: the LIF tau is not the layer's tau * dt")
        for arr, want in ((n.v_threshold, neuron.v_threshold), (n.v_reset, neuron.v_reset),
                          (n.v_leak, neuron.v_reset), (n.r, 1.0)):  # fmt: skip
            if not np.all(np.asarray(arr) == want):
                raise ValueError(f"{name}: LIF parameters differ from the network's")

    if model.encoder is not None:
        fill_conv(model.encoder, "encoder")
    for i, block in enumerate(model.features):
        if block.synapse is not None:
            fill_conv(block.synapse, f"conv{i}")
        fill_neuron(block.neuron, f"sn{i}")
    flat = np.asarray(node("flatten").input_type["input"]).astype(int)
    c, h, w = (int(v) for v in flat)
    perm = np.transpose(np.arange(c * h * w).reshape(h, w, c), (2, 0, 1)).reshape(-1)
    for j, block in enumerate(model.classifier):
        i = len(model.features) + j
        kernel = np.asarray(node(f"fc{i}").weight).T
        if j == 0:
            restored = np.empty_like(kernel)
            restored[perm] = kernel
            kernel = restored
        _set(block.fc.kernel, kernel)
        fill_neuron(block.neuron, f"sn{i}")
    return model


def import_graph(
    graph,
    *,
    generic: bool = False,
    dt: float | None = None,
    threshold_rule: str | None = None,
    dtype: Any = jnp.float32,
) -> nnx.Module:
    """A runnable plif_jax module from a ``nir.NIRGraph`` (e.g. ``nir.read(path)``).

    A graph plif_jax exported comes back as the same network (class, options, parameters; eval
    mode). Any other graph, or ``generic=True``, becomes a :class:`NIRNetwork`.

    Args:
      graph: the ``nir.NIRGraph``.
      generic: run through :class:`NIRNetwork` even where the graph holds a plif_jax network.
      dt, threshold_rule, dtype: for :class:`NIRNetwork` (``dt`` default: the graph's
        ``metadata['dt']``, else 1; ``threshold_rule`` default: the metadata's, else NIR's
        ``'>'``).
    """
    info = graph_info(graph)
    if info is not None and not generic:
        try:
            return _rebuild(graph, info)
        except (KeyError, ValueError) as err:
            warnings.warn(
                f"NIR graph of plif_jax network {info.get('name')!r} does not match its "
                f"metadata ({err}); running it through the generic NIRNetwork",
                stacklevel=2,
            )
    return NIRNetwork(graph, dt=dt, threshold_rule=threshold_rule, dtype=dtype)
