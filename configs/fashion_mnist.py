"""Fashion-MNIST with the paper's settings: PLIF (tau_0 = 2), max pooling, detached reset.

T = 8, 128 channels, 4 PLIF layers, no augmentation; MSE on the firing rate, Adam 1e-3, cosine T_max
64 per epoch, batch 16, 1024 epochs.

Command (protocol A)::

    python -m experiments.train --config configs/fashion_mnist.py

Protocol B (85/15 per-class train/val split)::

    python -m experiments.train --config configs/fashion_mnist.py --config.protocol=B

Paper (plif_jax/analysis/paper_logs): accuracy-A 94.38% (epoch 809); accuracy-B 93.85% (epoch
835).
"""

from __future__ import annotations

import ml_collections

from configs import common
from plif_jax.data import registry


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper configuration for Fashion-MNIST."""
    config = common.get_config()
    config.dataset = "fashion_mnist"
    config.eval_batch_size = 256  # The reference's test batch (irrelevant in eval mode).
    # Time steps (the image is repeated; direct encoding). The paper's T (plif_jax.data.registry).
    config.data.T = registry.get("fashion_mnist").default_T
    config.model.channels = 128  # Conv channels (codes/models.py).
    return config
