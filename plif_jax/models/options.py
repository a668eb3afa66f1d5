"""The networks' options: one schema, each choice list and each check defined once.

:func:`resolve` fills in the paper's defaults (Fang et al., ICCV 2021, Sec. 4.1 and the original
repository's ``codes/models.py``) and validates; :data:`CONFIG_FIELDS` maps every option that a
run config sets to its one config field (``config.model.*`` / ``config.neuron.*``), so that
:func:`plif_jax.training.config.validate` and :func:`create_model` run the same checks with the
name the
caller knows (``config.neuron.init_tau`` on the command line, ``init_tau`` in Python). The input
options (``T``, ``input_size``, ``in_channels``, ``num_classes``, ``input_layout``, ``dtype``)
come from the data and ``config.data.T`` / ``config.dtype``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from plif_jax.data import registry
from plif_jax.errors import ConfigError

STATIC_NETS = ("mnist", "fashion_mnist", "cifar10")
NEUROMORPHIC_NETS = ("nmnist", "cifar10dvs", "dvsgesture")
NETWORKS = STATIC_NETS + NEUROMORPHIC_NETS
NEURON_KINDS = ("plif", "lif")
# The names a config may use; plif_jax.layers and plif_jax.surrogate implement exactly these
# (tests/core/test_models.py checks it). Kept here, free of JAX, for the run config's checks.
POOLINGS = ("max", "avg")
BN_MODES = ("per_step", "folded")
SURROGATES = ("atan", "sigmoid")
INPUT_LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "bfloat16")  # of a run config; create_model also takes float64 (parity)
# Precision of convolutions and matmuls (jax.default_matmul_precision) a run config may ask for:
# 'default' is the backend's (float32 on XLA:CPU, TF32 on NVIDIA sm_80+, one bfloat16 pass on
# TPU), 'highest' full float32 everywhere; training.steps applies it.
PRECISIONS = ("default", "high", "highest")

# The paper's network sizes (codes/models.py); the inputs (side, channels, classes) are the
# datasets' (plif_jax.data.registry). ``hidden`` of the neuromorphic nets is derived (c*h*w/4,
# ``create_2fc``), ``T`` of the static nets is the number of times the image is fed (8).
_SIZES: dict[str, dict[str, Any]] = {
    "mnist": dict(channels=128, hidden=2048),
    "fashion_mnist": dict(channels=128, hidden=2048),
    "cifar10": dict(channels=256, hidden=2048),
    "nmnist": dict(channels=128, number_layer=2),
    "cifar10dvs": dict(channels=128, number_layer=4),
    "dvsgesture": dict(channels=128, number_layer=5),
}


def _paper(name: str) -> dict[str, Any]:
    row = registry.for_network(name)
    inputs = dict(
        in_channels=row.in_channels, input_size=row.input_size, num_classes=row.num_classes
    )
    return {**_SIZES[name], **inputs, **(dict(T=row.default_T) if row.is_static else {})}


PAPER: dict[str, dict[str, Any]] = {name: _paper(name) for name in NETWORKS}


# option -> the run config's field (one to one; tests/training/test_configs.py checks both
# directions).
CONFIG_FIELDS: dict[str, str] = {
    "channels": "model.channels",
    "number_layer": "model.number_layer",
    "hidden": "model.hidden",
    "pooling": "model.pooling",
    "bn_mode": "model.bn_mode",
    "dropout": "model.dropout",
    "remat_chunk": "model.remat_chunk",
    "neuron": "neuron.kind",
    "init_tau": "neuron.init_tau",
    "detach_reset": "neuron.detach_reset",
    "surrogate": "neuron.surrogate",
    "surrogate_alpha": "neuron.alpha",
    "alpha_learnable": "neuron.alpha_learnable",
}
INPUT_OPTIONS = ("T", "input_layout", "num_classes", "input_size", "in_channels", "dtype")
OPTIONS = tuple(CONFIG_FIELDS) + INPUT_OPTIONS
"""Every keyword option :func:`plif_jax.models.create_model` accepts."""


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """The resolved options of a network (defaults filled in, validated)."""

    name: str
    channels: int
    number_layer: int | None
    pooling: str
    neuron: str
    init_tau: float
    detach_reset: bool
    surrogate: str
    surrogate_alpha: float | None
    alpha_learnable: bool
    bn_mode: str
    dropout: float
    T: int | None
    hidden: int
    input_layout: str
    num_classes: int
    input_size: int
    in_channels: int
    dtype: Any
    remat_chunk: int | None = None

    @property
    def is_static(self) -> bool:
        return self.name in STATIC_NETS


# --- the checks (each once; `label` is the name the caller used) ---------------------------------
def check_choice(label: str, value: Any, allowed: tuple, flag: str | None = None) -> None:
    """``value`` must be one of ``allowed``; ``flag`` (``--config.x``) adds an example fix."""
    if value not in allowed:
        example = f" (e.g. --config.{flag}={allowed[0]})" if flag else ""
        raise ConfigError(
            f"Unknown {label} {value!r}; choose one of {', '.join(map(repr, allowed))}{example}."
        )


def check_positive_int(label: str, value: Any, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{label} must be a positive integer, got {value!r}{hint}.")
    return value


def check_init_tau(label: str, value: Any) -> float:
    if not float(value) > 1.0:
        raise ConfigError(
            f"{label} must be > 1 (tau = 1 + exp(-w)), got {value}; the paper uses 2.0 "
            "(ablation: 16.0)."
        )
    return float(value)


def check_dropout(label: str, value: Any) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{label} must be in [0, 1), got {value}.")
    return float(value)


def check_alpha(label: str, value: Any) -> float:
    if not float(value) > 0.0:
        raise ConfigError(
            f"{label} (surrogate sharpness) must be > 0, got {value}; the paper uses 2.0."
        )
    return float(value)


def check_remat(chunk: Any, bn_mode: str, T: int | None, *, prefix: str = "") -> int | None:
    """``remat_chunk``: None, or a positive divisor of T with per-step BatchNorm.

    ``prefix`` is ``'config.model.'`` for a run config (messages then name the flags).
    """
    if chunk is None:
        return None
    flag = prefix.startswith("config.")
    off = "--config.model.remat_chunk=None" if flag else "remat_chunk=None"
    check_positive_int(
        f"{prefix}remat_chunk", chunk, " (time steps per recomputed chunk) or None (off)"
    )
    if bn_mode != "per_step":
        per_step = "--config.model.bn_mode=per_step" if flag else "bn_mode='per_step'"
        raise ConfigError(
            f"{prefix}remat_chunk={chunk} needs {per_step} (folded BatchNorm statistics span all "
            f"T steps, so a chunk cannot be normalised alone); or set {off}."
        )
    if T is not None and T % chunk:
        divisors = [d for d in range(1, T + 1) if T % d == 0]
        t_name = "config.data.T" if flag else "the number of time steps T"
        raise ConfigError(
            f"{prefix}remat_chunk={chunk} does not divide {t_name}={T}; use a divisor of T "
            f"({divisors}) or {off}."
        )
    return chunk


def check_config_options(config: Any) -> None:
    """The checks of :func:`resolve` on a run config's ``model`` / ``neuron`` sections."""

    def field(option):
        section, key = CONFIG_FIELDS[option].split(".")
        return config[section].get(key)

    def label(option):
        return f"config.{CONFIG_FIELDS[option]}"

    for option, allowed in (
        ("neuron", NEURON_KINDS),
        ("surrogate", SURROGATES),
        ("pooling", POOLINGS),
        ("bn_mode", BN_MODES),
    ):
        check_choice(CONFIG_FIELDS[option], field(option), allowed, CONFIG_FIELDS[option])
    check_init_tau(label("init_tau"), field("init_tau"))
    check_alpha(label("surrogate_alpha"), field("surrogate_alpha"))
    check_dropout(label("dropout"), field("dropout"))
    check_positive_int(label("channels"), field("channels"), " (paper: 128; CIFAR-10: 256)")
    check_positive_int(label("number_layer"), field("number_layer"), " (N-MNIST: 2)")
    if field("hidden") is not None:
        check_positive_int(label("hidden"), field("hidden"), " or None (the paper's width)")
    check_remat(field("remat_chunk"), field("bn_mode"), config.data.T, prefix="config.model.")


def options_from_config(config: Any) -> dict[str, Any]:
    """``{option: value}`` of every :data:`CONFIG_FIELDS` option, read from a run config."""
    out = {}
    for option, path in CONFIG_FIELDS.items():
        section, key = path.split(".")
        out[option] = config[section].get(key)  # .get: configs saved before an option existed
    return out


# --- resolve -----------------------------------------------------------------------------------
def final_spatial_size(name: str, input_size: int, number_layer: int | None) -> int:
    """The feature map's side after the net's 2x2 poolings (VALID, floor)."""
    size = input_size
    for _ in range(2 if name in STATIC_NETS else number_layer):
        size //= 2
    return size


def _check(name: str, opts: dict[str, Any], *, number_layer_given: bool) -> None:
    """Validates the merged options of ``name`` in place (fills ``hidden`` and, for the static
    nets, ``number_layer=None``)."""
    static = name in STATIC_NETS
    for option, allowed in (
        ("pooling", POOLINGS),
        ("neuron", NEURON_KINDS),
        ("bn_mode", BN_MODES),
        ("surrogate", SURROGATES),
        ("input_layout", INPUT_LAYOUTS),
    ):
        check_choice(option, opts[option], allowed)
    for key in ("channels", "num_classes", "input_size", "in_channels"):
        check_positive_int(key, opts[key])
    if static:
        if number_layer_given:
            raise ConfigError(
                f"number_layer applies to the neuromorphic nets {list(NEUROMORPHIC_NETS)}, not "
                f"{name!r} (its depth is fixed by the paper); drop the option"
            )
        opts["number_layer"] = None
        if opts.get("T") is None:
            raise ConfigError(f"T must be a positive int for {name!r}, got None")
    else:
        check_positive_int("number_layer", opts["number_layer"])
    if opts.get("T") is not None:
        check_positive_int("T", opts["T"])
    check_dropout("dropout", opts["dropout"])
    check_init_tau("init_tau", opts["init_tau"])
    if opts.get("surrogate_alpha") is not None:
        check_alpha("surrogate_alpha", opts["surrogate_alpha"])
    spatial = final_spatial_size(name, opts["input_size"], opts["number_layer"])
    if spatial < 1:
        n_pool = 2 if static else opts["number_layer"]
        deepest = max(1, int(opts["input_size"]).bit_length() - 1)  # halvings leaving >= 1
        fewer = "" if static else f", or at most {deepest} (--config.model.number_layer={deepest})"
        raise ConfigError(
            f"input_size {opts['input_size']} is too small for {n_pool} 2x2 poolings of "
            f"{name!r}; use input_size >= {2**n_pool}{fewer}"
        )
    if opts.get("hidden") is None:
        opts["hidden"] = PAPER[name]["hidden"] if static else opts["channels"] * spatial**2 // 4
        if opts["hidden"] < 1:
            raise ConfigError(
                f"the hidden FC width channels*h*w//4 = {opts['channels']}*{spatial}*"
                f"{spatial}//4 is 0 for {name!r}; pass hidden=<width> or more channels"
            )
    check_positive_int("hidden", opts["hidden"])
    check_remat(opts.get("remat_chunk"), opts["bn_mode"], opts.get("T"))


def _dtype(value: Any) -> Any:
    import jax.numpy as jnp  # only here: the config checks above stay free of JAX

    return jnp.dtype(value)


def resolve(name: str, **options: Any) -> NetConfig:
    """Fills in the paper defaults for ``name`` and validates every option.

    Options (``None`` = the default): ``channels`` (conv width; 128, CIFAR-10 256),
    ``number_layer`` (conv blocks, neuromorphic nets only: N-MNIST 2, CIFAR10-DVS 4, DVS128
    Gesture 5), ``pooling`` ('max' | 'avg'), ``neuron`` ('plif' | 'lif'), ``init_tau`` (2.0),
    ``detach_reset`` (True), ``surrogate`` ('atan' | 'sigmoid'), ``surrogate_alpha`` (None = the
    surrogate's default), ``alpha_learnable`` (False), ``bn_mode`` ('per_step' | 'folded'),
    ``dropout`` (0.5), ``remat_chunk`` (None), ``T`` (static nets: time steps, 8; neuromorphic
    nets: the expected input T or None), ``hidden`` (hidden FC width; static 2048, neuromorphic
    c*h*w/4), ``input_layout`` ('NCHW' | 'NHWC'), ``num_classes`` (10; DVS128 Gesture 11),
    ``input_size`` (28, 32, 34, 128), ``in_channels`` (1, 3, 2), ``dtype`` (float32).

    Raises:
      ConfigError (a ValueError): an unknown name or option, or an invalid value.
    """
    if name not in NETWORKS:
        raise ConfigError(f"unknown model {name!r}; valid names: {list(NETWORKS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for create_model; valid options: {sorted(OPTIONS)}"
        )
    opts: dict[str, Any] = dict(
        pooling="max", neuron="plif", init_tau=2.0, detach_reset=True, surrogate="atan",
        alpha_learnable=False, bn_mode="per_step", dropout=0.5, input_layout="NCHW",
        dtype="float32",
    )  # fmt: skip
    opts.update({k: v for k, v in PAPER[name].items() if k != "hidden"})
    # Explicit None keeps the default, so a config can pass every field uniformly.
    opts.update({k: v for k, v in options.items() if v is not None})
    _check(name, opts, number_layer_given=options.get("number_layer") is not None)
    return NetConfig(
        name=name,
        channels=opts["channels"],
        number_layer=opts["number_layer"],
        pooling=opts["pooling"],
        neuron=opts["neuron"],
        init_tau=float(opts["init_tau"]),
        detach_reset=bool(opts["detach_reset"]),
        surrogate=opts["surrogate"],
        surrogate_alpha=(
            None if opts.get("surrogate_alpha") is None else float(opts["surrogate_alpha"])
        ),
        alpha_learnable=bool(opts["alpha_learnable"]),
        bn_mode=opts["bn_mode"],
        dropout=float(opts["dropout"]),
        T=opts.get("T"),
        hidden=opts["hidden"],
        input_layout=opts["input_layout"],
        num_classes=opts["num_classes"],
        input_size=opts["input_size"],
        in_channels=opts["in_channels"],
        dtype=_dtype(opts["dtype"]),
        remat_chunk=opts.get("remat_chunk"),
    )
