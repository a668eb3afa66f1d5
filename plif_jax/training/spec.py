"""A run's config, checked and resolved once into a frozen :class:`RunSpec`.

:func:`resolve` is called once, at the top of
:func:`plif_jax.training.run.train_and_evaluate`: it validates the config
(:func:`plif_jax.training.config.validate`) and resolves its members
(:mod:`plif_jax.training.members`). Everything after it reads the spec; the raw config is only
saved (``config.json``, the resume check).

Each member's own one-member config (:func:`plif_jax.training.members.member_config`, frozen)
is what the two readers that own their fields see: the data layer
(:func:`plif_jax.data.get_datasets`, member 0's: ``config.seed`` is its data seed) and the model
factory (:func:`plif_jax.models.spec_from_config`, which completes the network's options with
the dataset's input shape). ``config.data.T`` is the one owner of the number of time steps: the
frames, the model and the loss all read it (:attr:`RunSpec.T`).

Pure Python (no JAX).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import ml_collections

from plif_jax.training import config as config_lib
from plif_jax.training import members as members_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemberSpec:
    """One member of a run (one for ``num_seeds=1``).

    ``seed`` initialises the model (``params``; dropout ``seed + 1``), ``data_seed`` shuffles and
    augments its batches, ``values`` are its per-member fields, ``lr`` its base learning rate and
    ``config`` the member as a frozen one-member config.
    """

    index: int
    seed: int
    data_seed: int
    values: Mapping[str, float]
    lr: float
    config: ml_collections.FrozenConfigDict


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything a run reads from its config, resolved and checked."""

    dataset: str
    protocol: str  # 'A' or 'B'
    T: int  # time steps: frames, model and loss
    num_epochs: int
    steps_per_epoch: int  # a cap on the training batches of an epoch; 0: all of them
    batch_size: int
    log_every_steps: int
    steps_per_dispatch: int  # K: training steps per dispatch (plif_jax.training.blocks)
    on_device: bool | str  # the training split on the device: 'auto', True or False
    progress_bar: bool
    t_max: int  # the cosine schedule's half period (epochs)
    members: tuple[MemberSpec, ...]
    per_member_data: bool  # each member its own shuffle and augmentation
    layout: str  # k > 1: 'loop' or 'vmap' (plif_jax.training.member_steps)
    precision: str | None  # of the steps' convolutions and matmuls (None: the backend's)
    num_devices: int  # 0: all
    checkpoint_keep: int
    checkpoint_keep_best: bool

    @property
    def k(self) -> int:
        """The number of members."""
        return len(self.members)


def resolve(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> RunSpec:
    """Validates ``config`` and resolves it into a :class:`RunSpec`.

    Args:
      config: a run configuration (``configs/common.py`` layout); not modified.
      num_devices: the devices the batch is sharded over (checked for divisibility).

    Raises:
      ConfigError: an invalid config (names the field and the fix).
    """
    config_lib.validate(config, num_devices=num_devices)
    members = tuple(
        _member_spec(m, members_lib.member_config(config, m)) for m in members_lib.members(config)
    )
    return RunSpec(
        dataset=str(config.dataset),
        protocol=str(config.protocol),
        T=int(config.data.T),
        num_epochs=int(config.num_epochs),
        steps_per_epoch=max(0, int(config.steps_per_epoch)),
        batch_size=int(config.batch_size),
        log_every_steps=max(1, int(config.log_every_steps)),
        steps_per_dispatch=int(config.get("steps_per_dispatch", 1)),
        on_device=config_lib.on_device_setting(config),
        progress_bar=bool(config.progress_bar),
        t_max=config.optim.t_max,
        members=members,
        per_member_data=members_lib.data_order(config) == "per_member",
        layout=members_lib.layout(config),
        precision=config.get("precision"),
        num_devices=int(config.num_devices),
        checkpoint_keep=int(config.checkpoint.keep),
        checkpoint_keep_best=bool(config.checkpoint.keep_best),
    )


def _member_spec(member: members_lib.Member, config: ml_collections.ConfigDict) -> MemberSpec:
    return MemberSpec(
        index=member.index,
        seed=member.seed,
        data_seed=member.data_seed,
        values=types.MappingProxyType(dict(member.values)),
        lr=config.optim.lr,
        config=ml_collections.FrozenConfigDict(config),
    )
