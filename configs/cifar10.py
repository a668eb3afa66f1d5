"""CIFAR-10 with the paper's settings: PLIF (tau_0 = 2), max pooling, detached reset.

T = 8, 256 channels, 8 PLIF layers; MSE on the firing rate, Adam 1e-3, cosine T_max 64 per epoch,
batch 16, 1024 epochs.

Command (protocol A)::

    python -m experiments.train --config configs/cifar10.py

Protocol B (85/15 per-class train/val split)::

    python -m experiments.train --config configs/cifar10.py --config.protocol=B

Paper (plif_jax/analysis/paper_logs): accuracy-A 93.50% (epoch 950); accuracy-B 92.58% (epoch
952).
"""

from __future__ import annotations

import ml_collections

from configs import common
from plif_jax.data import registry


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper configuration for CIFAR-10."""
    config = common.get_config()
    config.dataset = "cifar10"
    config.eval_batch_size = 256  # The reference's test batch (irrelevant in eval mode).
    # Time steps (the image is repeated; direct encoding). The paper's T (plif_jax.data.registry).
    config.data.T = registry.get("cifar10").default_T
    config.model.channels = 256  # Conv channels (codes/models.py).
    return config
