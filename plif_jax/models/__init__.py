"""The paper's six networks as explicit Flax NNX blocks (Fang et al., ICCV 2021).

* :mod:`plif_jax.models.blocks`: ``ConvBN``, ``SpikingBlock`` (conv-BN-neuron-pool),
  ``SpikingFC`` (dropout-FC-neuron).
* :mod:`plif_jax.models.nets`: ``MNISTNet``, ``CIFAR10Net``, ``NeuromorphicNet`` and their one
  forward body (rematerialised by running it in a scan over time chunks).
* :mod:`plif_jax.models.options`: the option schema, choice lists and checks (one owner each).
* :mod:`plif_jax.models.factory`: ``create_model``, ``from_config``, tau/alpha readers.
* :mod:`plif_jax.models.record`: what a forward pass sows (firing rates, traces).
"""

from plif_jax.models.blocks import ConvBN, SpikingBlock, SpikingFC
from plif_jax.models.factory import (
    build_model,
    count_params,
    create_model,
    from_config,
    layer_alphas,
    layer_taus,
    spec_from_config,
    spiking_layers,
)
from plif_jax.models.nets import VOTE_GROUP, CIFAR10Net, MNISTNet, NeuromorphicNet, SpikingNet
from plif_jax.models.options import (
    NETWORKS,
    NEUROMORPHIC_NETS,
    OPTIONS,
    STATIC_NETS,
    NetConfig,
    resolve,
)
from plif_jax.models.record import FiringRate, LayerTrace, Trace, run_with_rates, run_with_traces

__all__ = [
    "CIFAR10Net", "ConvBN", "FiringRate", "LayerTrace", "MNISTNet", "NETWORKS",
    "NEUROMORPHIC_NETS", "NetConfig", "NeuromorphicNet", "OPTIONS", "STATIC_NETS", "SpikingBlock",
    "SpikingFC", "SpikingNet", "Trace", "VOTE_GROUP", "build_model", "count_params",
    "create_model", "from_config", "layer_alphas", "layer_taus", "resolve", "run_with_rates",
    "run_with_traces", "spec_from_config", "spiking_layers",
]  # fmt: skip
