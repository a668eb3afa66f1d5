"""The run spec (``plif_jax.training.spec``): the config resolved once, frozen, k >= 1 members.

In-process and without data or compilation: resolving a config is pure Python.
"""

from __future__ import annotations

import dataclasses

import pytest

from configs import common
from plif_jax.errors import ConfigError
from plif_jax.training import spec as spec_lib
from plif_jax.training.summary import aggregate


def _config(**fields):
    c = common.get_config()
    c.dataset = "digits_static"
    c.data.T = 3
    c.steps_per_epoch = -1
    for key, value in fields.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def test_one_member_spec_is_frozen_and_owns_T():
    config = _config()
    before = config.to_json()
    spec = spec_lib.resolve(config)
    assert config.to_json() == before  # the config is not touched
    assert (spec.k, spec.T, spec.dataset, spec.protocol) == (1, 3, "digits_static", "A")
    assert spec.steps_per_epoch == 0  # no cap
    (m,) = spec.members
    assert (m.seed, m.data_seed, dict(m.values), m.lr) == (2020, 2020, {}, config.optim.lr)
    assert m.config.data.T == 3 and m.config.num_seeds == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.T = 4
    with pytest.raises(AttributeError):  # a FrozenConfigDict
        m.config.data.T = 4


def test_k_member_spec_resolves_each_member_once():
    spec = spec_lib.resolve(
        _config(
            num_seeds=2,
            **{
                "members.overrides": "neuron.init_tau=2,4;optim.lr=0.01,0.02",
                "members.data_order": "per_member",
                "members.seeds": "7,9",
            },
        )
    )
    assert spec.k == 2 and spec.per_member_data and spec.layout == "loop"
    assert [(m.seed, m.data_seed, m.lr) for m in spec.members] == [(7, 7, 0.01), (9, 9, 0.02)]
    assert spec.members[1].config.neuron.init_tau == 4.0
    assert spec.members[1].config.seed == 9  # its data seed


def test_resolve_validates():
    with pytest.raises(ConfigError, match=r"config.data.T"):
        spec_lib.resolve(_config(**{"data.T": 0}))


def test_aggregate_of_one_member_is_its_value():
    assert aggregate("test/accuracy", [0.1 + 0.2]) == {"test/accuracy": 0.1 + 0.2}
    two = aggregate("lr", [1.0, 3.0])
    assert list(two) == ["lr", "lr/std", "lr/m0", "lr/m1"] and two["lr"] == 2.0
