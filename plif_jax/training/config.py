"""Config validation: clear errors for bad settings before anything is built or loaded.

Every check raises :class:`plif_jax.errors.ConfigError` (a ``ValueError``) naming the field and
the fix; the command line prints it as one ``error: ...`` line (:mod:`plif_jax.cli`). The checks
run before any data is read or any model is built, so a mistake costs no compilation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from plif_jax.data import registry
from plif_jax.data.frames import NORMALIZATIONS, SPLIT_BY
from plif_jax.errors import ConfigError
from plif_jax.models import options as model_options

STATIC_DATASETS = registry.STATIC
DATASETS = registry.NAMES
DTYPES = model_options.DTYPES
PROTOCOLS = ("A", "B")
ON_DEVICE = {"auto": "auto", "true": True, "false": False}  # config.data.on_device

# Settings that change the model's parameter shapes, the data it sees or the meaning of the
# saved optimiser state: a checkpoint written under other values cannot be continued.
RESUME_CRITICAL = (
    "dataset", "protocol", "seed", "batch_size", "data", "model", "neuron", "optim",
    "num_seeds", "members",
)  # fmt: skip
# Resume-critical fields added later: a config saved before them had these values.
_ABSENT_DEFAULTS = {
    "num_seeds": 1,
    "members.seeds": None,
    "members.overrides": None,
    "members.data_order": "shared",
}
_NOT_CRITICAL = ("members.layout", "data.on_device")  # same state and results (up to rounding)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    model_options.check_choice(name, value, allowed, flag=name)


def _positive_int(name: str, value: Any, hint: str = "") -> None:
    model_options.check_positive_int(f"config.{name}", value, hint)


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises :class:`ConfigError` naming the bad field and the fix.

    Args:
      config: a run configuration (``configs/common.py`` layout).
      num_devices: number of devices the batch is sharded over (checked for divisibility).
    """
    if config.dataset is None:
        raise ConfigError("config.dataset is not set; use a dataset config, e.g. configs/mnist.py.")
    _choice("dataset", config.dataset, DATASETS)
    _choice("protocol", config.protocol, PROTOCOLS)
    _choice("dtype", config.dtype, DTYPES)
    _choice("precision", config.get("precision", "default"), model_options.PRECISIONS)
    # config.data.T is the one owner of the number of time steps (data frames, model, loss).
    T = config.data.T
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise ConfigError(
            f"config.data.T (time steps) must be a positive integer, got {T}; "
            "the paper uses 8 (static), 10 (N-MNIST) or 20 (CIFAR10-DVS, DVS128 Gesture)."
        )
    _check_frames(config.data)
    # The network's options: the checks of plif_jax.models.options, named as config fields.
    model_options.check_config_options(config)
    if not (math.isfinite(config.optim.lr) and config.optim.lr >= 0):
        raise ConfigError(f"config.optim.lr must be finite and >= 0, got {config.optim.lr}.")
    if int(config.optim.t_max) <= 0:
        raise ConfigError(f"config.optim.t_max must be > 0, got {config.optim.t_max} (paper: 64).")
    for name in ("batch_size", "eval_batch_size", "num_epochs"):
        if int(config[name]) <= 0:
            raise ConfigError(f"config.{name} must be > 0, got {config[name]}.")
    _positive_int("checkpoint.keep", config.checkpoint.keep, " (checkpoints kept in latest/)")
    _check_dispatch(config)
    _check_members(config, num_devices)
    # Multi-host: JAX may not start a backend before jax.distributed.initialize (the mesh checks).
    if not config.get("distributed", False):
        _check_devices(config.num_devices)
    if num_devices is not None:
        for name in ("batch_size", "eval_batch_size"):
            if int(config[name]) % num_devices:
                raise ConfigError(_indivisible(name, int(config[name]), num_devices))


def _indivisible(name: str, batch: int, devices: int) -> str:
    """The one-line error of a batch the devices cannot split: the nearest counts that can."""
    below = max(d for d in range(1, devices) if batch % d == 0)
    above = next((d for d in range(devices + 1, batch + 1) if batch % d == 0), None)
    counts = f"{below}" + (f" or {above}" if above else "")
    multiple = -(-batch // devices) * devices
    return (
        f"config.{name}={batch} is not divisible by the {devices} devices the batch is sharded "
        f"over; the nearest device counts that divide it are {counts} (--config.num_devices="
        f"{below}), or use a multiple of {devices} (--config.{name}={multiple})."
    )


def _check_members(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """``num_seeds`` and ``members``; every member's own config passes :func:`validate`."""
    from plif_jax.training import members as members_lib

    specs = members_lib.members(config)
    if len(specs) > 1 or specs[0].values:  # a member's config has num_seeds 1, no values
        for m in specs:
            validate(members_lib.member_config(config, m), num_devices=num_devices)


def _check_dispatch(config: ml_collections.ConfigDict) -> None:
    """``steps_per_dispatch`` and ``data.on_device``."""
    _positive_int(
        "steps_per_dispatch", config.get("steps_per_dispatch", 1), " (1: one step per dispatch)"
    )
    on_device = config.data.get("on_device", "auto")
    if str(on_device).lower() not in ON_DEVICE:
        raise ConfigError(
            f"config.data.on_device must be 'auto', 'true' or 'false', got {on_device!r} "
            "(e.g. --config.data.on_device=true)."
        )


def on_device_setting(config: ml_collections.ConfigDict) -> bool | str:
    """``config.data.on_device`` as ``'auto'``, True or False (the field is a string)."""
    return ON_DEVICE[str(config.data.get("on_device", "auto")).lower()]


def _check_frames(data: ml_collections.ConfigDict) -> None:
    """The data settings: event-to-frame choices (read by every dataset, used by the event ones)
    and where the event datasets are read from."""
    _choice("data.split_by", data.split_by, SPLIT_BY)
    _choice("data.source", data.source, registry.SOURCE_CHOICES)
    if data.dvsgesture_train not in registry.DVSGESTURE_TRAIN:
        raise ConfigError(
            f"Unknown config.data.dvsgesture_train {data.dvsgesture_train!r}; choose "
            "'all' (1,176 samples) or 'first_78_trials' (936, the paper run's training set)."
        )
    norm = data.normalization
    if norm not in NORMALIZATIONS and str(norm).lower() != "none":
        raise ConfigError(
            f"Unknown data.normalization {norm!r}; choose one of None (the paper), "
            f"{', '.join(repr(n) for n in NORMALIZATIONS if n)} "
            "(e.g. --config.data.normalization=frequency)."
        )


def _check_devices(requested: Any) -> None:
    """``num_devices``: 0 (all) or at most the devices JAX sees."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ConfigError(
            f"config.num_devices must be 0 (all devices) or a positive integer, got {requested!r}."
        )
    if requested:
        import jax  # only here: config checks elsewhere stay free of backend start-up

        visible = jax.device_count()
        if requested > visible:
            raise ConfigError(
                f"config.num_devices={requested} but only {visible} devices are visible "
                f"({jax.default_backend()}); use --config.num_devices=0 for all of them."
            )


def validate_against_data(config: ml_collections.ConfigDict, num_train: int) -> None:
    """Checks settings that depend on the loaded dataset (``num_train`` training samples)."""
    if int(config.batch_size) > num_train:
        raise ConfigError(
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
        if key.split(".")[0] not in RESUME_CRITICAL or key in _NOT_CRITICAL:
            continue
        default = _ABSENT_DEFAULTS.get(key, "<absent>")
        a, b = old.get(key, default), new.get(key, default)
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs
