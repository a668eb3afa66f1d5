"""plif_jax: PLIF spiking neural networks in JAX / Flax NNX (Fang et al., ICCV 2021).

The public face, loaded on first use (``import plif_jax`` itself imports nothing heavy):

* the neurons: :class:`~plif_jax.neurons.PLIF` (learnable tau), :class:`~plif_jax.neurons.LIF`,
  :class:`~plif_jax.neurons.TauParam` and the pure multi-step function
  :func:`~plif_jax.neurons.lif_multistep`;
* :mod:`plif_jax.surrogate`, the surrogate-gradient spike functions;
* :func:`~plif_jax.models.create_model`, the paper's six networks;
* :func:`~plif_jax.training.run.train_and_evaluate`, one training run with the paper's protocol;
* :func:`~plif_jax.training.checkpoint.restore`, a trained model back from a run's workdir.

Packages by role: :mod:`plif_jax.models`, :mod:`plif_jax.data`, :mod:`plif_jax.training`,
:mod:`plif_jax.analysis`, :mod:`plif_jax.nir_graph`; internals in :mod:`plif_jax.ops` and
:mod:`plif_jax.runtime`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PLIF": ("plif_jax.neurons", "PLIF"),
    "LIF": ("plif_jax.neurons", "LIF"),
    "TauParam": ("plif_jax.neurons", "TauParam"),
    "lif_multistep": ("plif_jax.neurons", "lif_multistep"),
    "surrogate": ("plif_jax.surrogate", None),
    "create_model": ("plif_jax.models", "create_model"),
    "train_and_evaluate": ("plif_jax.training.run", "train_and_evaluate"),
    "restore": ("plif_jax.training.checkpoint", "restore"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attr = _EXPORTS[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
