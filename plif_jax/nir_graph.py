"""NIR (Neuromorphic Intermediate Representation, PyPI ``nir`` 1.0.x) export and import.

:func:`export` turns one of the paper's six networks (eval mode) into a ``nir.NIRGraph``;
:func:`import_graph` turns a graph back into a runnable plif_jax module. Files: ``nir.write`` /
``nir.read``.

The mapping (NIR is channel-first, shapes without the batch axis, every node one time step)::

    plif_jax                              NIR
    ConvBN (3x3, no bias) + BN (eval)     Conv2d, BN folded: W' = W g/sqrt(var+eps),
                                          b' = beta - g mean/sqrt(var+eps); padding (1, 1)
    PLIF / LIF (hard reset, decay_input)  LIF: tau = 1/sigmoid(w) (LIF: its tau) times dt,
                                          r = 1, v_leak = v_reset = V_reset, v_threshold = V_th,
                                          full arrays of the layer's (C, H, W) / (N,) shape
    2x2 max pooling of spikes             SumPool2d(2, 2) then Threshold(0.5): the OR of 0/1
    2x2 average pooling                   AvgPool2d(2, 2)
    dropout (eval)                        nothing (identity)
    flatten (NHWC order)                  Flatten(start_dim=0) over (C, H, W); the first FC's
                                          columns permuted from the HWC to the CHW order
    FC (no bias), kernel [in, out]        Linear, weight [out, in]
    voting readout (mean of 10)           Linear with a block matrix of 1/10
    static nets' encoder (image once)     the same Conv2d applied to the image at every step

The time step: NIR's LIF is ``tau dv/dt = (v_leak - v) + r I``. Forward Euler with step ``dt``
gives ``v <- v + dt/tau (v_leak - v + r I)``; with ``tau_nir = tau * dt`` (``dt = 1`` by default,
recorded in the graph's metadata) that is the paper's charge
``H = V + (X - (V - V_reset)) / tau`` exactly. NIR fires at ``v > v_threshold``, the paper at
``H >= V_th``; the metadata records ``threshold_rule='>='`` and this module's runner follows the
metadata (NIR's ``>`` for a graph without it).

Exactness. A graph that plif_jax exported carries, in its nodes' metadata, the values the NIR
parameters were computed from and cannot be recovered from exactly in floating point: each
Conv2d node the unfolded kernel and the four BatchNorm vectors, each LIF node of a PLIF layer its
``w``. :func:`import_graph` rebuilds the same network class from the graph's ``plif_jax`` entry
(name and options), fills in those values and the Linear weights (a transpose and a permutation,
exact), and checks that the NIR parameters are what they were folded into (else the graph was
edited: it then runs through the generic runner). The rebuilt network is the exported one: same
class, same parameters bit for bit, so the same spikes.

Any other feed-forward graph of the supported nodes (Input, Output, Conv2d, Linear, Affine, LIF,
IF, Threshold, SumPool2d, AvgPool2d, Flatten, Scale), or a plif_jax graph with
``generic=True``, runs through :class:`NIRNetwork`: the nodes in topological order on
``[T, B, ...]`` (channel-first), the neurons through :func:`plif_jax.neurons.lif_multistep` where
a layer's parameters are uniform. It computes the folded convolution, so its currents differ
from the network's in the last bits (``tests/test_nir.py`` shows the spikes do not).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import layers, neurons
from plif_jax.models import blocks as blocks_lib
from plif_jax.models import factory, nets
from plif_jax.models import options as options_lib

Array = jax.Array

FORMAT = "plif_jax.nir/1"
METADATA_KEY = "plif_jax"
EULER = (
    "forward Euler, v <- v + dt/tau * (v_leak - v + r*I), hard reset to v_reset after a spike; "
    "dt is metadata['dt'] (LIF tau is the layer's tau in time steps times dt)"
)
SUPPORTED_NODES = (
    "Input", "Output", "Conv2d", "Linear", "Affine", "LIF", "IF", "Threshold", "SumPool2d",
    "AvgPool2d", "Flatten", "Scale",
)  # fmt: skip


def _nir():
    try:
        import nir
    except ModuleNotFoundError as err:  # pragma: no cover - nir is a test dependency
        raise ModuleNotFoundError(
            "plif_jax.nir_graph needs the NIR package: pip install 'nir>=1.0'"
        ) from err
    return nir


# --- export ------------------------------------------------------------------------------------
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
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


# --- import ------------------------------------------------------------------------------------
def _meta_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _meta_str(value.item())
    return str(value)


def graph_info(graph) -> dict[str, Any] | None:
    """The ``plif_jax`` entry of a graph's metadata (name, class, options), or None."""
    meta = getattr(graph, "metadata", None) or {}
    if METADATA_KEY not in meta:
        return None
    info = json.loads(_meta_str(meta[METADATA_KEY]))
    return info if info.get("format") == FORMAT else None


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


# --- the generic runner ------------------------------------------------------------------------
def _uniform(a: np.ndarray) -> float | None:
    a = np.asarray(a)
    flat = a.reshape(-1)
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else None


def _pair(v: Any) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1).astype(int)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _topological(graph) -> list[str]:
    nodes, edges = graph.nodes, [tuple(e) for e in graph.edges]
    preds = {k: [] for k in nodes}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise ValueError(f"edge {(a, b)} names a node the graph does not have")
        preds[b].append(a)
    order, done = [], set()
    pending = list(nodes)
    while pending:
        ready = [k for k in pending if all(p in done for p in preds[k])]
        if not ready:
            raise ValueError(
                f"NIR graph has a cycle through {sorted(pending)}: recurrent graphs are not "
                "supported by NIRNetwork (feed-forward only)"
            )
        for k in ready:
            order.append(k)
            done.add(k)
            pending.remove(k)
    return order


def _neuron_op(node, kind: str, dt: float, rule: str, dtype: Any) -> tuple[tuple, dict]:
    """A LIF/IF node as ``(static op, arrays)``: parameters in the compute dtype, Python
    floats where uniform over the layer (then :func:`plif_jax.neurons.lif_multistep` runs it)."""
    dtype = jnp.dtype(dtype)
    r = np.asarray(node.r, np.float64) * (dt if kind == "IF" else 1.0)
    v_reset = np.asarray(node.v_reset, np.float64)
    thr = np.asarray(node.v_threshold, np.float64).astype(dtype)
    if rule == ">":  # h > thr  <=>  h >= the next representable value above thr
        thr = np.nextafter(thr, np.array(np.inf, dtype))
    elif rule != ">=":
        raise ValueError(f"threshold_rule must be '>' or '>=', got {rule!r}")
    if kind == "LIF":
        decay = dt / np.asarray(node.tau, np.float64)
        # The charge takes the current r*I + (v_leak - v_reset): v + (that - (v - v_reset))/tau.
        offset = np.asarray(node.v_leak, np.float64) - v_reset
    else:
        decay, offset = None, np.zeros(())
    values = {"r": r, "offset": offset, "thr": thr, "v_reset": v_reset, "decay": decay}
    static, arrays = {}, {}
    for key, value in values.items():
        if value is None:
            static[key] = None
            continue
        u = _uniform(value)
        if u is not None:
            static[key] = u
        else:
            static[key] = "array"
            arrays[key] = np.asarray(value).astype(dtype)
    return (kind, tuple(sorted(static.items()))), arrays


def _run_neuron(op: tuple, arrays: Mapping[str, Array], x_seq: Array) -> Array:
    kind, static = op[0], dict(op[1])
    dt_ = x_seq.dtype
    get = lambda k: arrays[k] if static[k] == "array" else static[k]
    if not (static["r"] == 1.0 and static["offset"] == 0.0):
        x_seq = x_seq * jnp.asarray(get("r"), dt_) + jnp.asarray(get("offset"), dt_)
    scalar = lambda k: static[k] is None or static[k] != "array"
    if kind == "LIF" and scalar("thr") and scalar("v_reset"):
        decay = jnp.asarray(get("decay"), dt_)
        return neurons.lif_multistep(
            x_seq, decay, v_threshold=static["thr"], v_reset=static["v_reset"]
        )
    decay = None if kind == "IF" else jnp.asarray(get("decay"), dt_)
    thr_a = jnp.asarray(get("thr"), dt_)
    vr_a = jnp.asarray(get("v_reset"), dt_)

    def step(v, x):
        h = v + x if decay is None else v + (x - (v - vr_a)) * decay
        s = h - thr_a >= 0
        return jnp.where(s, vr_a, h), s.astype(dt_)

    v0 = jnp.broadcast_to(vr_a, x_seq.shape[1:]).astype(dt_)
    return jax.lax.scan(step, v0, x_seq)[1]


class NIRNetwork(nnx.Module):
    """A feed-forward NIR graph run on ``[T, B, ...]`` (channel-first, as NIR).

    ``__call__(x)`` returns the output summed over time (for a plif_jax graph: the spike counts
    per class ``[B, classes]``); :meth:`run` the output per step and, with ``record=True``, the
    output of every LIF / IF node. ``x``: ``[T, B, *input_shape]``; with ``T`` given (a static
    net's steps; default from a plif_jax graph's metadata) also ``[B, *input_shape]``, fed at
    every step. ``input_layout='NHWC'`` takes channels-last input (as the data pipeline's
    static images).
    """

    def __init__(
        self,
        graph,
        *,
        dt: float | None = None,
        threshold_rule: str | None = None,
        dtype: Any = jnp.float32,
        T: int | None = None,
        input_layout: str | None = None,
    ):
        meta = getattr(graph, "metadata", None) or {}
        self.dt = float(_meta_str(meta.get("dt", 1.0)) if dt is None else dt)
        self.threshold_rule = (
            _meta_str(meta.get("threshold_rule", ">")) if threshold_rule is None else threshold_rule
        )
        self.dtype = jnp.dtype(dtype)
        info = graph_info(graph)
        if T is None and info is not None and info["name"] in options_lib.STATIC_NETS:
            T = int(info["options"]["T"])
        if input_layout is None:
            input_layout = "NCHW" if info is None else info["options"]["input_layout"]
        self.T = T
        self.input_layout = input_layout
        self.num_classes = None
        self.order = _topological(graph)
        preds: dict[str, list[str]] = {k: [] for k in graph.nodes}
        for a, b in graph.edges:
            preds[b].append(a)
        self.preds = preds
        inputs = [k for k, n in graph.nodes.items() if type(n).__name__ == "Input"]
        outputs = [k for k, n in graph.nodes.items() if type(n).__name__ == "Output"]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"NIRNetwork needs one Input and one Output node, got {inputs}, {outputs}"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        ops, params = {}, {}
        for name in self.order:
            op, arrays = self._op(name, graph.nodes[name])
            ops[name] = op
            if arrays:
                params[name] = nnx.Dict(
                    {k: nnx.Param(jnp.asarray(v, self.dtype)) for k, v in arrays.items()}
                )
        self.ops = ops  # static: kinds, strides, uniform scalars (hashable)
        self.params = nnx.Dict(params)
        out_shape = graph.nodes[self.output_name].output_type.get("output")
        if out_shape is not None and len(np.asarray(out_shape).reshape(-1)) == 1:
            self.num_classes = int(np.asarray(out_shape).reshape(-1)[0])

    def _op(self, name: str, node) -> tuple[tuple, dict[str, np.ndarray]]:
        kind = type(node).__name__
        f = lambda a: np.asarray(a, dtype=self.dtype)
        if kind in ("Input", "Output"):
            return (kind,), {}
        if kind == "Conv2d":
            if isinstance(node.padding, str):
                pad = node.padding.upper()
            else:
                ph, pw = _pair(node.padding)
                pad = ((ph, ph), (pw, pw))
            op = (kind, _pair(node.stride), pad, _pair(node.dilation), int(node.groups))
            return op, {"weight": f(node.weight), "bias": f(node.bias)}
        if kind == "Linear":
            return ("Linear", False), {"weight": np.ascontiguousarray(f(node.weight).T)}
        if kind == "Affine":
            w = np.ascontiguousarray(f(node.weight).T)
            return ("Linear", True), {"weight": w, "bias": f(node.bias)}
        if kind in ("LIF", "IF"):
            return _neuron_op(node, kind, self.dt, self.threshold_rule, self.dtype)
        if kind == "Threshold":
            return (kind,), {"threshold": f(node.threshold)}
        if kind == "Scale":
            return (kind,), {"scale": f(node.scale)}
        if kind in ("SumPool2d", "AvgPool2d"):
            ph, pw = _pair(node.padding)
            op = (kind, _pair(node.kernel_size), _pair(node.stride), ((ph, ph), (pw, pw)))
            return op, {}
        if kind == "Flatten":
            shape = node.input_type.get("input") if node.input_type else None
            rank = None if shape is None else len(np.asarray(shape).reshape(-1))
            return (kind, int(node.start_dim), int(node.end_dim), rank), {}
        raise NotImplementedError(
            f"NIR node {name!r} of type {kind} is not supported by NIRNetwork; supported: "
            f"{', '.join(SUPPORTED_NODES)}"
        )

    def _apply(self, name: str, x: Array, t: int) -> Array:
        op = self.ops[name]
        kind = op[0]
        p = {k: v[...] for k, v in self.params[name].items()} if name in self.params else {}
        if kind in ("Input", "Output"):
            return x
        if kind in ("LIF", "IF"):
            seq = x.reshape(t, x.shape[0] // t, *x.shape[1:])
            return _run_neuron(op, p, seq).reshape(x.shape)
        if kind == "Conv2d":
            _, stride, pad, dil, groups = op
            y = jax.lax.conv_general_dilated(
                x, p["weight"], stride, pad, rhs_dilation=dil,
                dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=groups,
            )  # fmt: skip
            return y + p["bias"].reshape(1, -1, 1, 1)
        if kind == "Linear":
            y = x @ p["weight"]
            return y + p["bias"] if op[1] else y
        if kind == "Threshold":
            return (x > p["threshold"]).astype(x.dtype)
        if kind == "Scale":
            return x * p["scale"]
        if kind in ("SumPool2d", "AvgPool2d"):
            _, k, s, pad = op
            y = jax.lax.reduce_window(
                x, jnp.zeros((), x.dtype), jax.lax.add, (1, 1, *k), (1, 1, *s),
                ((0, 0), (0, 0), *pad),
            )  # fmt: skip
            return y if kind == "SumPool2d" else y / (k[0] * k[1])
        if kind == "Flatten":
            _, start, end, rank = op
            rank = x.ndim - 1 if rank is None else rank
            start = start % rank if start < 0 else start
            end = end % rank if end < 0 else end
            # Graphs from torch tools may count the batch axis (start_dim=1 over (B, C, H, W)).
            if rank == x.ndim - 1:
                lo, hi = start + 1, end + 1
            else:
                lo, hi = start, end
            return x.reshape(*x.shape[:lo], -1, *x.shape[hi + 1 :])
        raise NotImplementedError(kind)  # pragma: no cover

    def run(self, x_seq: Array, *, record: bool = False):
        """``(output [T, B, ...], {node: spikes [T, B, ...]} of every LIF/IF if record)``."""
        x_seq = jnp.asarray(x_seq, self.dtype)
        t, batch = x_seq.shape[0], x_seq.shape[1]
        values: dict[str, Array] = {}
        spikes: dict[str, Array] = {}
        for name in self.order:
            if name == self.input_name:
                x = x_seq.reshape(t * batch, *x_seq.shape[2:])
            else:
                ins = [values[p] for p in self.preds[name]]
                if not ins:
                    raise ValueError(f"node {name!r} has no input")
                x = ins[0]
                for other in ins[1:]:
                    x = x + other
            values[name] = self._apply(name, x, t)
            if self.ops[name][0] in ("LIF", "IF") and record:
                spikes[name] = values[name].reshape(t, batch, *values[name].shape[1:])
        out = values[self.output_name]
        out = out.reshape(t, batch, *out.shape[1:])
        return (out, spikes) if record else out

    def sequence(self, x: Array) -> Array:
        """``x`` as ``[T, B, C, H, W]``: a static batch repeated ``T`` times, channels first."""
        x = jnp.asarray(x)
        static = self.T is not None and x.ndim == 4
        if self.input_layout == "NHWC" and x.ndim >= 4:
            x = jnp.moveaxis(x, -1, -3)
        if static:
            x = jnp.broadcast_to(x[None], (self.T, *x.shape))
        return x

    def __call__(self, x: Array) -> Array:
        return jnp.sum(self.run(self.sequence(x)), axis=0)


def plif_jax_options(graph) -> Mapping[str, Any] | None:
    """The network options a plif_jax graph was exported with (None for other graphs)."""
    info = graph_info(graph)
    return None if info is None else dict(info["options"])
