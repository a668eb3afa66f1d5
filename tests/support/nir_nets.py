"""Small paper networks with trained-looking parameters, for the NIR tests (every layer fires)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import models, neurons

# name, options, input kind: every net, PLIF and LIF, max and avg, several taus, both BN modes.
CASES = {
    "mnist": dict(channels=4, input_size=12, hidden=24, T=3, neuron="plif", pooling="max"),
    "fashion_mnist": dict(
        channels=4, input_size=12, hidden=24, T=3, neuron="lif", init_tau=3.7, pooling="avg"
    ),
    "cifar10": dict(
        channels=4, input_size=8, hidden=24, T=3, neuron="plif", pooling="avg", bn_mode="folded"
    ),  # fmt: skip
    "nmnist": dict(
        channels=4, input_size=12, number_layer=2, T=4, neuron="lif", init_tau=16.0, pooling="max"
    ),  # fmt: skip
    "cifar10dvs": dict(
        channels=4,
        input_size=16,
        number_layer=3,
        T=4,
        neuron="plif",
        pooling="avg",
        bn_mode="folded",
    ),  # fmt: skip
    "dvsgesture": dict(
        channels=4,
        input_size=16,
        number_layer=3,
        T=None,
        neuron="plif",
        pooling="max",
        num_classes=11,
    ),  # fmt: skip
}


# Per spiking layer, a gain on its input current (BN scale and bias, or the FC weights), found
# once so that every layer of these small random nets fires at a moderate rate.
GAINS = {
    "mnist": [1.0, 1.0, 1.8, 1.0],
    "fashion_mnist": [1.0, 1.8, 1.0, 1.0],
    "cifar10": [1.0, 1.0, 1.8, 3.24, 1.8, 1.0, 3.24, 1.8],
    "nmnist": [3.24, 3.24, 3.24, 5.832],
    "cifar10dvs": [1.0, 1.8, 1.8, 1.0, 3.24],
    "dvsgesture": [1.0, 1.0, 1.0, 1.0, 1.8],
}


def trained_looking(model: models.SpikingNet, seed: int, gains=None) -> models.SpikingNet:
    """Non-trivial parameters: BN statistics and affine, PLIF taus in [1.5, 8], and FC weights
    scaled so that the deeper layers fire too. Eval mode."""
    rng = np.random.default_rng(seed)
    convs = ([model.encoder] if model.encoder is not None else []) + [
        b.synapse for b in model.features if b.synapse is not None
    ]
    for cb in convs:
        c = cb.bn.num_features
        cb.bn.mean[...] = jnp.asarray(rng.normal(0.0, 0.2, c), jnp.float32)
        cb.bn.var[...] = jnp.asarray(rng.uniform(0.1, 1.0, c), jnp.float32)
        cb.bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
        cb.bn.bias[...] = jnp.asarray(rng.uniform(0.2, 0.8, c), jnp.float32)
        cb.conv.kernel[...] = cb.conv.kernel[...] + 0.1
    for block in model.classifier:
        n_in = block.fc.in_features
        block.fc.kernel[...] = block.fc.kernel[...] * 2.0 + 6.0 / n_in
    gains = GAINS.get(model.config.name) if gains is None else gains
    for g, block in zip(gains or [], model.blocks(), strict=False):
        if isinstance(block, models.SpikingFC):
            block.fc.kernel[...] = block.fc.kernel[...] * g
        elif block.synapse is not None:
            block.synapse.bn.scale[...] = block.synapse.bn.scale[...] * g
            block.synapse.bn.bias[...] = block.synapse.bn.bias[...] * g
        else:  # the static nets' first neuron fires on the encoder
            model.encoder.bn.scale[...] = model.encoder.bn.scale[...] * g
            model.encoder.bn.bias[...] = model.encoder.bn.bias[...] * g
    for _, neuron in model.spiking_layers():
        if isinstance(neuron, neurons.PLIF):
            neuron.w[...] = jnp.asarray(neurons.w_from_tau(rng.uniform(1.5, 8.0)), jnp.float32)
    model.eval()
    return model


def make(name: str, seed: int = 0, gains=None) -> models.SpikingNet:
    model = models.create_model(name, rngs=nnx.Rngs(seed), **CASES[name])
    return trained_looking(model, seed, gains)


def nhwc(a) -> np.ndarray:
    a = np.asarray(a)
    return np.moveaxis(a, 2, -1) if a.ndim == 5 else a
