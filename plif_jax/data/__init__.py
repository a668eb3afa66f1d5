"""The paper's six datasets and the offline quick-start digits, as batches (``docs/design.md``).

The face of the data layer; its parts load on first use, so ``import plif_jax.data`` (or the
JAX-free :mod:`plif_jax.data.registry`) loads neither tonic nor JAX:

* :func:`get_datasets` (:mod:`plif_jax.data.datasets`): a run config's train / val / test
  :class:`BatchSource` splits, its :class:`DatasetInfo` and the jittable ``preprocess``;
* :mod:`plif_jax.data.registry`: the datasets' facts, one row each;
* :func:`integrate_events` (:mod:`plif_jax.data.frames`): events to frames, as the paper did;
* :func:`accuracy_b_split` (:mod:`plif_jax.data.splits`): protocol B's validation split.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "get_datasets": "plif_jax.data.datasets",
    "DataBundle": "plif_jax.data.datasets",
    "DatasetInfo": "plif_jax.data.datasets",
    "BatchSource": "plif_jax.data.loader",
    "integrate_events": "plif_jax.data.frames",
    "NORMALIZATIONS": "plif_jax.data.frames",
    "SPLIT_BY": "plif_jax.data.frames",
    "accuracy_b_split": "plif_jax.data.splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
