"""DVS128 Gesture with the paper's settings: PLIF (tau_0 = 2), max pooling, detached reset.

T = 20 frames, 128 channels, 5 conv blocks, 7 PLIF layers; MSE on the firing rate, Adam 1e-3, cosine
T_max 64 per epoch, batch 16, 1024 epochs.

Command (protocol A)::

    python -m experiments.train --config configs/dvsgesture.py

Protocol B (85/15 per-class train/val split)::

    python -m experiments.train --config configs/dvsgesture.py --config.protocol=B

Paper (plif_jax/analysis/paper_logs): accuracy-A 97.57% (epoch 321); accuracy-B 96.53% (epoch
867; val reached 100% at 405, 416, 422, 867).
"""

from __future__ import annotations

import ml_collections

from configs import common
from plif_jax.data import registry


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper configuration for DVS128 Gesture."""
    config = common.get_config()
    config.dataset = "dvsgesture"
    config.eval_batch_size = 16  # The reference's test batch (irrelevant in eval mode).
    # Frames per sample = time steps. The paper's T (plif_jax.data.registry).
    config.data.T = registry.get("dvsgesture").default_T
    config.data.split_by = "number"  # Equal-event-count frames (`-split_by number`).
    config.data.normalization = None  # Raw per-pixel event counts.
    config.model.channels = 128  # Conv channels (codes/models.py).
    config.model.number_layer = 5  # Conv blocks (codes/models.py).
    return config
