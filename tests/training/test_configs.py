"""Config files: each loads, validates and builds its paper-size model; bad settings fail."""

from __future__ import annotations

import glob
import os

import jax
import pytest
from flax import nnx

from plif_jax import models
from plif_jax.training import config as config_lib
from plif_jax.training import run as train
from tests.support.paper import (
    CONFIG_DIR,
    PAPER_NUM_SPIKING,
    PAPER_PARAM_COUNTS,
    dataset_info,
    load_config,
)
from tests.support.runs import tiny_config

PAPER_T = {"mnist": 8, "fashion_mnist": 8, "cifar10": 8, "nmnist": 10, "cifar10dvs": 20}
PAPER_T["dvsgesture"] = 20


def test_every_config_file_is_covered():
    names = sorted(
        os.path.splitext(os.path.basename(p))[0] for p in glob.glob(f"{CONFIG_DIR}/*.py")
    )
    assert names == sorted([*PAPER_PARAM_COUNTS, "common", "quickstart", "__init__"])


@pytest.mark.parametrize("name", sorted(PAPER_PARAM_COUNTS))
def test_paper_config_builds_the_paper_model(name):
    config = load_config(name)
    config_lib.validate(config, num_devices=1)
    assert config.dataset == name
    assert (config.seed, config.batch_size, config.num_epochs) == (2020, 16, 1024)
    assert (config.optim.lr, config.optim.t_max, config.protocol) == (1e-3, 64, "A")
    assert (config.neuron.kind, config.neuron.init_tau, config.neuron.detach_reset) == (
        "plif",
        2.0,
        True,
    )
    assert (config.model.pooling, config.neuron.surrogate, config.neuron.alpha) == (
        "max",
        "atan",
        2.0,
    )
    assert config.data.T == PAPER_T[name]
    model_name, options = models.spec_from_config(config, dataset_info(name, config.data.T))
    assert model_name == name
    abstract = nnx.eval_shape(lambda: models.build_model(model_name, options, seed=0))
    params = nnx.state(abstract, nnx.Param)
    assert sum(p.size for p in jax.tree.leaves(params)) == PAPER_PARAM_COUNTS[name]
    assert len(abstract.spiking_layers()) == PAPER_NUM_SPIKING[name]


def test_quickstart_config_feeds_the_nmnist_network_at_reduced_width():
    config = load_config("quickstart")
    config_lib.validate(config, num_devices=1)
    assert config.dataset == "digits_events"
    name, options = models.spec_from_config(config, dataset_info("digits_events", config.data.T))
    assert name == "nmnist"
    abstract = nnx.eval_shape(lambda: models.build_model(name, options, seed=0))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    # conv 2->32, 32->32 (3x3, no bias), 2 BN, FC 32*8*8 -> 256 -> 100 (no bias), 4 PLIF w.
    expected = 2 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32 + 2048 * 256 + 256 * 100 + 4
    assert count == expected


def test_ablations_are_command_line_overrides():
    config = load_config(
        "cifar10",
        "--config.neuron.kind=lif",
        "--config.neuron.init_tau=16",
        "--config.model.pooling=avg",
        "--config.neuron.alpha_learnable=True",
        "--config.protocol=B",
        "--config.model.hidden=64",
    )
    config_lib.validate(config, num_devices=1)
    assert config.neuron.kind == "lif" and config.neuron.init_tau == 16.0
    assert config.model.pooling == "avg" and config.neuron.alpha_learnable is True
    assert config.protocol == "B" and config.model.hidden == 64
    _, options = models.spec_from_config(config, dataset_info("cifar10", 8))
    assert options["neuron"] == "lif" and options["pooling"] == "avg"
    assert options["alpha_learnable"] is True and options["hidden"] == 64
    # A locked config rejects a misspelt field instead of silently adding it.
    with pytest.raises(Exception, match="Did you mean .*kind.* instead of .*knd"):
        load_config("cifar10", "--config.neuron.knd=lif")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset", "imagenet", "Unknown dataset 'imagenet'; choose one of 'mnist'"),
        ("neuron.kind", "izhikevich", "Unknown neuron.kind 'izhikevich'; choose one of 'plif'"),
        ("data.T", 0, "config.data.T (time steps) must be a positive integer, got 0"),
        ("neuron.init_tau", 1.0, "config.neuron.init_tau must be > 1"),
        ("protocol", "C", "Unknown protocol 'C'"),
        ("model.pooling", "min", "Unknown model.pooling 'min'"),
        ("optim.lr", float("nan"), "config.optim.lr must be finite"),
    ],
)
def test_bad_settings_are_rejected_with_the_fix(field, value, message, tmp_path):
    config = tiny_config()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_device_count_is_rejected():
    config = tiny_config()
    config.batch_size = 18
    with pytest.raises(ValueError, match=r"batch_size=18 is not divisible by the 4 devices"):
        config_lib.validate(config, num_devices=4)
    config.batch_size, config.eval_batch_size = 16, 100
    config_lib.validate(config, num_devices=4)  # both divisible: fine
    with pytest.raises(ValueError, match=r"eval_batch_size=100 is not divisible by the 8"):
        config_lib.validate(config, num_devices=8)


@pytest.mark.usefixtures("fast")
def test_batch_larger_than_the_dataset_is_rejected(tmp_path):
    config = tiny_config()
    config.batch_size = 4096  # digits_static has 4,000 training digits
    with pytest.raises(ValueError, match=r"batch_size=4096 is larger than the training set"):
        config_lib.validate_against_data(config, num_train=4000)
    with pytest.raises(ValueError, match=r"4096"):
        train.train_and_evaluate(config, str(tmp_path))


def test_more_devices_than_visible_is_rejected(tmp_path):
    config = tiny_config()
    config.num_devices = jax.device_count() + 1
    with pytest.raises(ValueError, match=r"num_devices=\d+ but only \d+ devices"):
        train.train_and_evaluate(config, str(tmp_path))


def test_models_options_cover_model_spec():
    # Every option models.spec_from_config passes is one create_model accepts.
    for name in PAPER_PARAM_COUNTS:
        config = load_config(name)
        _, options = models.spec_from_config(config, dataset_info(name, config.data.T))
        assert set(options) <= set(models.OPTIONS)


def test_model_options_map_one_to_one_onto_config_model_and_neuron():
    config = load_config("dvsgesture")
    fields = {f"model.{k}" for k in config.model if k != "name"}
    fields |= {f"neuron.{k}" for k in config.neuron}
    mapped = list(models.options.CONFIG_FIELDS.values())
    assert len(mapped) == len(set(mapped))  # no config field feeds two options
    assert set(mapped) == fields  # and every model/neuron field reaches the model
    assert set(models.options.CONFIG_FIELDS) <= set(models.OPTIONS)
