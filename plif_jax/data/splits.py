"""The accuracy-B train/validation split of the original repository's ``codes/train_val.py``."""

from __future__ import annotations

import math

import numpy as np

from plif_jax.errors import ConfigError


def accuracy_b_split(labels: np.ndarray, val_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Splits a training set per class, deterministically, in index order.

    For each class ``c`` with ``n_c`` samples (taken in increasing index order), the first
    ``ceil((1 - val_ratio) * n_c)`` go to training and the rest to validation, as the
    reference's ``split_dataset`` did (MNIST: 51,005 / 8,995 with ``val_ratio=0.15``).

    Args:
      labels: ``[N]`` integer labels of the original training set.
      val_ratio: fraction held out for validation, in ``[0, 1)``.

    Returns:
      ``(train_indices, val_indices)``, each sorted ascending.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ConfigError(f"val_ratio must be in [0, 1), got {val_ratio!r}.")
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = math.ceil(len(idx) * (1.0 - val_ratio))
        train.append(idx[:k])
        val.append(idx[k:])
    train_idx, val_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    if val_idx.size == 0:
        smallest = min(len(np.flatnonzero(labels == c)) for c in np.unique(labels))
        raise ConfigError(
            f"config.data.val_ratio={val_ratio!r} leaves protocol B no validation sample (each "
            f"class keeps ceil((1 - val_ratio) * n) of its n samples for training; the smallest "
            f"class has {smallest}). Use a val_ratio of at least {1 / smallest:.3g} (the paper: "
            "--config.data.val_ratio=0.15), or protocol A (--config.protocol=A)."
        )
    return train_idx, val_idx
