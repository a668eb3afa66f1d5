"""CIFAR10-DVS with the paper's settings: PLIF (tau_0 = 2), max pooling, detached reset.

T = 20 frames, 128 channels, 4 conv blocks, 6 PLIF layers, per-class 90/10 train/test file split;
MSE on the firing rate, Adam 1e-3, cosine T_max 64 per epoch, batch 16, 1024 epochs.

Command (protocol A)::

    python -m experiments.train --config configs/cifar10dvs.py

Protocol B (85/15 per-class train/val split)::

    python -m experiments.train --config configs/cifar10dvs.py --config.protocol=B

Paper (plif_jax/analysis/paper_logs): accuracy-A 74.80% (epoch 457); accuracy-B 69.00% (epoch
552).
"""

from __future__ import annotations

import ml_collections

from configs import common
from plif_jax.data import registry


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper configuration for CIFAR10-DVS."""
    config = common.get_config()
    config.dataset = "cifar10dvs"
    config.eval_batch_size = 16  # The reference's test batch (irrelevant in eval mode).
    # Frames per sample = time steps. The paper's T (plif_jax.data.registry).
    config.data.T = registry.get("cifar10dvs").default_T
    config.data.split_by = "number"  # Equal-event-count frames (`-split_by number`).
    config.data.normalization = None  # Raw per-pixel event counts.
    config.model.channels = 128  # Conv channels (codes/models.py).
    config.model.number_layer = 4  # Conv blocks (codes/models.py).
    return config
