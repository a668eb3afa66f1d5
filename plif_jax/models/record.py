"""What a forward pass records: ``nnx.sow`` under ``nnx.capture``, the one mechanism.

A network viewed with ``nnx.view(model, record='rates')`` sows each spiking layer's firing rate
per time step (:class:`FiringRate`, ``[T]``, the neurons' own type); with ``record='traces'`` also
a :class:`LayerTrace`
(input current, spikes, membrane before and after the reset, and the input of the next synaptic
layer, for synaptic-operation counts). Collect them with ``nnx.capture(view, FiringRate)`` or
``nnx.capture(view, LayerTrace)``; :func:`plif_jax.models.run_with_rates`,
:func:`run_with_traces` and :func:`plif_jax.analysis.record_forward` do exactly that. A plain
call (``record`` unset) sows nothing, so it never changes the module's state. The view sets
``record`` on the network, its blocks and its neurons (each has a ``set_view`` hook); inside a
network the neurons run as :meth:`~plif_jax.neurons.PLIF.dynamics` and the network sows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx

from plif_jax import neurons
from plif_jax.neurons import FiringRate

Array = jax.Array


class LayerTrace(nnx.Intermediate):
    """A :class:`Trace` of one spiking layer."""


class Trace(NamedTuple):
    """What one spiking layer saw and did, each ``[T, B, ...]`` (NHWC).

    ``current``: the input current ``X[t]``; ``spikes``: ``S[t]``; ``h``: the membrane after
    charging (compared with the threshold); ``v``: the membrane after the reset;
    ``next_input``: the input of the next synaptic layer (after pooling / flattening / dropout,
    ``[T*B, ...]``), or None for the output layer.
    """

    current: Array
    spikes: Array
    h: Array
    v: Array
    next_input: Array | None


def sow_layers(net: nnx.Module, taps: dict[str, dict[str, Array]]) -> None:
    """Sows each layer's rate (and, for ``net.record == 'traces'``, its :class:`Trace`) on ``net``.

    ``taps``: ``{layer: {'spikes' (or its per-step 'rate'), and for traces 'current', 'h', 'v',
    'next_input'}}`` in depth order. Any model can record this way: set ``record`` through a
    ``set_view`` hook and call this at the end of its forward.
    """
    for name, tap in taps.items():
        rate = tap["rate"] if "rate" in tap else neurons.firing_rate(tap["spikes"])
        net.sow(FiringRate, name, rate)
        if net.record == "traces":
            trace = Trace(tap["current"], tap["spikes"], tap["h"], tap["v"], tap["next_input"])
            net.sow(LayerTrace, name, trace)


def collected(intermediates: Any) -> dict[str, Any]:
    """``{layer: value}`` from a captured state (each layer is called once per forward)."""
    out = {}
    for path, var in nnx.to_flat_state(intermediates):
        values = var.get_value()
        out[".".join(map(str, path))] = values[0] if len(values) == 1 else values
    return out


def run_with_rates(model: nnx.Module, x: Array) -> tuple[Array, dict[str, Array]]:
    """``model(x)`` and the mean firing rate of every spiking layer (``{name: scalar}``).

    BatchNorm statistics and dropout streams update in ``model`` as in a plain call.
    """
    counts, rates = nnx.capture(nnx.view(model, record="rates"), FiringRate)(x)
    out = {}
    for path, var in nnx.to_flat_state(rates):
        values = var.get_value()  # one [T] array per call of the layer
        out[".".join(map(str, path))] = jax.numpy.mean(
            jax.numpy.stack([jax.numpy.mean(v) for v in values])
        )
    return counts, out


def run_with_traces(model: nnx.Module, x: Array) -> tuple[Array, dict[str, Trace]]:
    """``model(x)`` and every spiking layer's :class:`Trace`, in depth order, in the model's
    current mode (train or eval)."""
    counts, traces = nnx.capture(nnx.view(model, record="traces"), LayerTrace)(x)
    return counts, collected(traces)
