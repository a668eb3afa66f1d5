"""Several seeds in one run: who the members are (``config.num_seeds``, ``config.members``).

A run with ``config.num_seeds = k`` trains k *members* in one compiled step over stacked states
(:mod:`plif_jax.training.member_steps`). Member ``i`` has

- its own ``seed`` (``config.members.seeds``, a comma list such as ``"7,8,9"``; default
  ``config.seed, config.seed + 1, ...``): the parameter initialisation (``params`` stream) and
  the dropout stream (``seed + 1``), as :func:`plif_jax.models.build_model` uses a run's seed;
- its ``data_seed``: with ``config.members.data_order = 'shared'`` (default) every member trains
  on the same batches, shuffled and augmented with ``config.seed`` (one pipeline); with
  ``'per_member'`` member ``i`` shuffles and augments with its own ``seed``;
- its own values of the fields that keep the compiled step's shapes and structure
  (``config.members.overrides``, e.g. ``"neuron.init_tau=2,16;optim.lr=1e-3,5e-4"``):
  ``neuron.init_tau`` (PLIF: only the initial ``w`` differs), ``optim.lr`` (an input of the
  step) and ``neuron.alpha`` (only with ``neuron.alpha_learnable=True``: a fixed surrogate alpha
  is a constant compiled into the step, a learnable one is a parameter that each member starts
  at its own value).

:func:`member_config` is member ``i`` as an ordinary one-member config: a ``num_seeds=1`` run of
it trains exactly what member ``i`` trains (up to the float rounding of the vmapped step).

Pure Python (no JAX).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from plif_jax.errors import ConfigError

DATA_ORDERS = ("shared", "per_member")
LAYOUTS = ("vmap", "loop")
# The per-member fields, and what each needs.
PER_MEMBER_FIELDS = ("neuron.init_tau", "optim.lr", "neuron.alpha")


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a run: its index, init/dropout seed, data seed and per-member values."""

    index: int
    seed: int
    data_seed: int
    values: dict[str, float]


def num_seeds(config: Any) -> int:
    """``config.num_seeds`` (1 for configs written before the field existed)."""
    return int(config.get("num_seeds", 1))


def _members_section(config: Any) -> Any:
    return config.get("members", None) or ml_collections.ConfigDict()


def _split(text: str, sep: str) -> list[str]:
    return [part.strip() for part in str(text).split(sep) if part.strip()]


def parse_seeds(text: Any, k: int, base_seed: int) -> list[int]:
    """The members' seeds from ``config.members.seeds`` (None: ``base_seed + i``)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return [int(base_seed) + i for i in range(k)]
    parts = _split(text, ",")
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"config.members.seeds={text!r} is not a comma list of integers "
            '(e.g. --config.members.seeds="7,8,9").'
        ) from None
    if len(seeds) != k:
        raise ConfigError(
            f"config.members.seeds={text!r} lists {len(seeds)} seeds but config.num_seeds={k}; "
            "give one seed per member."
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.members.seeds={text!r} repeats a seed; members would be equal.")
    return seeds


def _field_exists(config: Any, path: str) -> bool:
    node = config
    for key in path.split("."):
        if not hasattr(node, "keys") or key not in node:
            return False
        node = node[key]
    return True


def parse_values(text: Any, k: int, config: Any) -> dict[str, list[float]]:
    """``{field: [value per member]}`` from ``config.members.overrides`` (None: no field)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    out: dict[str, list[float]] = {}
    for item in _split(text, ";"):
        field, eq, values = item.partition("=")
        field = field.strip().removeprefix("config.")
        if not eq:
            raise ConfigError(
                f"config.members.overrides: {item!r} is not FIELD=V1,V2,... "
                '(e.g. --config.members.overrides="neuron.init_tau=2,16").'
            )
        if field not in PER_MEMBER_FIELDS:
            what = (
                "is not a field of the config"
                if not _field_exists(config, field)
                else "would change the network's shapes or compiled structure"
            )
            raise ConfigError(
                f"config.members.overrides: {field} {what}; members may differ only in "
                f"{', '.join(PER_MEMBER_FIELDS)} (values that keep the one compiled step's "
                "shapes). Train other settings as separate runs."
            )
        if field in out:
            raise ConfigError(f"config.members.overrides names {field} twice.")
        try:
            nums = [float(v) for v in _split(values, ",")]
        except ValueError:
            raise ConfigError(
                f"config.members.overrides: {field}={values!r} is not a comma list of numbers."
            ) from None
        if len(nums) != k:
            raise ConfigError(
                f"config.members.overrides: {field} lists {len(nums)} values but "
                f"config.num_seeds={k}; give one value per member."
            )
        if not all(math.isfinite(v) for v in nums):
            raise ConfigError(f"config.members.overrides: {field} has a non-finite value {nums}.")
        out[field] = nums
    if "neuron.init_tau" in out and config.neuron.kind != "plif":
        raise ConfigError(
            "config.members.overrides: per-member neuron.init_tau needs neuron.kind='plif' (LIF's "
            "tau is a constant compiled into the step, not a parameter); train LIF taus as "
            "separate runs."
        )
    if "neuron.alpha" in out and not config.neuron.alpha_learnable:
        raise ConfigError(
            "config.members.overrides: per-member neuron.alpha needs "
            "--config.neuron.alpha_learnable=True (a fixed surrogate alpha is a constant "
            "compiled into the step; a learnable one is a parameter each member starts at its "
            "own value); train fixed alphas as separate runs."
        )
    return out


def members(config: Any) -> list[Member]:
    """The run's members (one for ``num_seeds=1``: ``config.seed``, no per-member values).

    Raises:
      ConfigError: ``num_seeds < 1``, a list of the wrong length, an unknown or shape-changing
        per-member field, an unknown ``data_order`` or ``layout``.
    """
    raw = config.get("num_seeds", 1)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(
            f"config.num_seeds must be an integer >= 1 (members trained together), got {raw!r}."
        )
    k = int(raw)
    section = _members_section(config)
    order = section.get("data_order", "shared")
    if order not in DATA_ORDERS:
        raise ConfigError(
            f"config.members.data_order must be one of {', '.join(map(repr, DATA_ORDERS))}, "
            f"got {order!r}."
        )
    layout = section.get("layout", "loop")
    if layout not in LAYOUTS:
        raise ConfigError(
            f"config.members.layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}."
        )
    seeds = parse_seeds(section.get("seeds", None), k, int(config.seed))
    values = parse_values(section.get("overrides", None), k, config)
    return [
        Member(
            index=i,
            seed=s,
            data_seed=s if order == "per_member" else int(config.seed),
            values={f: v[i] for f, v in values.items()},
        )
        for i, s in enumerate(seeds)
    ]


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """Member ``member`` as a one-member config (its seeds and values, ``num_seeds=1``).

    ``seed`` is the member's data seed and ``members.seeds`` its init/dropout seed, so training
    this config reproduces the member.
    """
    c = ml_collections.ConfigDict(config.to_dict())  # an unlocked deep copy
    c.seed = int(member.data_seed)
    c.num_seeds = 1
    if "members" not in c:
        c.members = ml_collections.ConfigDict()
    c.members.seeds = str(member.seed)
    c.members.overrides = None
    for field, value in member.values.items():
        section, key = field.split(".")
        c[section][key] = float(value)
    return c


def layout(config: Any) -> str:
    return _members_section(config).get("layout", "loop")


def data_order(config: Any) -> str:
    return _members_section(config).get("data_order", "shared")
