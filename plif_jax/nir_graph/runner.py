"""The generic runner: any feed-forward graph of the supported NIR nodes on ``[T, B, ...]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import neurons
from plif_jax.models import options as options_lib
from plif_jax.nir_graph.common import SUPPORTED_NODES, _meta_str, graph_info

Array = jax.Array


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
