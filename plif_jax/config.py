"""Config validation: clear errors for bad settings before anything is built or loaded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections

DATASETS = (
    "mnist",
    "fashion_mnist",
    "cifar10",
    "nmnist",
    "cifar10dvs",
    "dvsgesture",
    "digits_events",
    "digits_static",
)
NEURON_KINDS = ("plif", "lif")
SURROGATES = ("atan", "sigmoid")
POOLINGS = ("max", "avg")
BN_MODES = ("per_step", "folded")
DTYPES = ("float32", "bfloat16")
PROTOCOLS = ("A", "B")

# Settings that change the model's parameter shapes, the data it sees or the meaning of the
# saved optimiser state: a checkpoint written under other values cannot be continued.
RESUME_CRITICAL = ("dataset", "protocol", "seed", "batch_size", "data", "model", "neuron", "optim")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))} "
            f"(e.g. --config.{name}={allowed[0]})."
        )


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises ``ValueError`` naming the bad field and the fix.

    Args:
      config: a run configuration (``configs/common.py`` layout).
      num_devices: number of devices the batch is sharded over (checked for divisibility).
    """
    if config.dataset is None:
        raise ValueError("config.dataset is not set; use a dataset config, e.g. configs/mnist.py.")
    _choice("dataset", config.dataset, DATASETS)
    _choice("protocol", config.protocol, PROTOCOLS)
    _choice("neuron.kind", config.neuron.kind, NEURON_KINDS)
    _choice("neuron.surrogate", config.neuron.surrogate, SURROGATES)
    _choice("model.pooling", config.model.pooling, POOLINGS)
    _choice("model.bn_mode", config.model.bn_mode, BN_MODES)
    _choice("dtype", config.dtype, DTYPES)
    if int(config.data.T) <= 0:
        raise ValueError(
            f"config.data.T (time steps) must be a positive integer, got {config.data.T}; "
            "the paper uses 8 (static), 10 (N-MNIST) or 20 (CIFAR10-DVS, DVS128 Gesture)."
        )
    if not float(config.neuron.init_tau) > 1.0:
        raise ValueError(
            f"config.neuron.init_tau must be > 1 (tau = 1 + exp(-w)), got "
            f"{config.neuron.init_tau}; the paper uses 2.0 (ablation: 16.0)."
        )
    if not (math.isfinite(config.optim.lr) and config.optim.lr >= 0):
        raise ValueError(f"config.optim.lr must be finite and >= 0, got {config.optim.lr}.")
    if int(config.optim.t_max) <= 0:
        raise ValueError(f"config.optim.t_max must be > 0, got {config.optim.t_max} (paper: 64).")
    for name in ("batch_size", "eval_batch_size", "num_epochs"):
        if int(config[name]) <= 0:
            raise ValueError(f"config.{name} must be > 0, got {config[name]}.")
    if not 0.0 <= float(config.model.dropout) < 1.0:
        raise ValueError(f"config.model.dropout must be in [0, 1), got {config.model.dropout}.")
    if num_devices is not None:
        for name in ("batch_size", "eval_batch_size"):
            if int(config[name]) % num_devices:
                raise ValueError(
                    f"config.{name}={config[name]} is not divisible by the {num_devices} "
                    f"devices the batch is sharded over; use a multiple of {num_devices} "
                    "or set --config.num_devices to a divisor of it."
                )


def validate_against_data(config: ml_collections.ConfigDict, num_train: int) -> None:
    """Checks settings that depend on the loaded dataset (``num_train`` training samples)."""
    if int(config.batch_size) > num_train:
        raise ValueError(
            f"config.batch_size={config.batch_size} is larger than the training set "
            f"({num_train} samples of {config.dataset!r}); with drop_last no step would run. "
            f"Use --config.batch_size<={num_train}."
        )


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Lists the resume-critical fields (``a.b: saved -> current``) that differ between configs."""
    old, new = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] not in RESUME_CRITICAL:
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs
