"""The paper's six networks as explicit Flax NNX blocks (Fang et al., ICCV 2021).

* :mod:`plif_jax.models.blocks`: ``ConvBN``, ``SpikingBlock`` (conv-BN-neuron-pool),
  ``SpikingFC`` (dropout-FC-neuron).
* :mod:`plif_jax.models.nets`: ``MNISTNet``, ``CIFAR10Net``, ``NeuromorphicNet`` and their one
  forward body (rematerialised by running it in a scan over time chunks).
* :mod:`plif_jax.models.options`: the option schema, choice lists and checks (one owner each).
* :mod:`plif_jax.models.factory`: ``create_model``, ``from_config``, tau/alpha readers.
* :mod:`plif_jax.models.record`: what a forward pass sows (firing rates, traces).
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so that the option schema (plif_jax.models.options) imports without Flax.
_EXPORTS = {
    "ConvBN": "plif_jax.models.blocks",
    "SpikingBlock": "plif_jax.models.blocks",
    "SpikingFC": "plif_jax.models.blocks",
    "build_model": "plif_jax.models.factory",
    "count_params": "plif_jax.models.factory",
    "create_model": "plif_jax.models.factory",
    "from_config": "plif_jax.models.factory",
    "layer_alphas": "plif_jax.models.factory",
    "layer_taus": "plif_jax.models.factory",
    "spec_from_config": "plif_jax.models.factory",
    "spiking_layers": "plif_jax.models.factory",
    "VOTE_GROUP": "plif_jax.models.nets",
    "CIFAR10Net": "plif_jax.models.nets",
    "MNISTNet": "plif_jax.models.nets",
    "NeuromorphicNet": "plif_jax.models.nets",
    "SpikingNet": "plif_jax.models.nets",
    "NETWORKS": "plif_jax.models.options",
    "NEUROMORPHIC_NETS": "plif_jax.models.options",
    "OPTIONS": "plif_jax.models.options",
    "STATIC_NETS": "plif_jax.models.options",
    "NetConfig": "plif_jax.models.options",
    "resolve": "plif_jax.models.options",
    "FiringRate": "plif_jax.models.record",
    "LayerTrace": "plif_jax.models.record",
    "Trace": "plif_jax.models.record",
    "run_with_rates": "plif_jax.models.record",
    "run_with_traces": "plif_jax.models.record",
}

__all__ = [
    "CIFAR10Net", "ConvBN", "FiringRate", "LayerTrace", "MNISTNet", "NETWORKS",
    "NEUROMORPHIC_NETS", "NetConfig", "NeuromorphicNet", "OPTIONS", "STATIC_NETS", "SpikingBlock",
    "SpikingFC", "SpikingNet", "Trace", "VOTE_GROUP", "build_model", "count_params",
    "create_model", "from_config", "layer_alphas", "layer_taus", "resolve", "run_with_rates",
    "run_with_traces", "spec_from_config", "spiking_layers",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
