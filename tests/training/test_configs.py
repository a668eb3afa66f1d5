"""Config files: each loads, validates and builds its paper-size model; bad settings fail."""

from __future__ import annotations

import glob
import os
import types

import jax
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from plif_jax import models
from plif_jax.training import config as config_lib
from plif_jax.training import run as train
from tests.core.test_models import PAPER_PARAM_COUNTS
from tests.training import test_train

# Parsed digits + compilation cache for the one test that loads data.
jax_cache_dir = test_train.jax_cache_dir
digits_npz = test_train.digits_npz
fast = test_train.fast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs")

# Parameter counts of the paper's networks (codes/models.py: conv + BN affine + FC + w).
PAPER_PARAMS = PAPER_PARAM_COUNTS
PAPER_T = {"mnist": 8, "fashion_mnist": 8, "cifar10": 8, "nmnist": 10, "cifar10dvs": 20}
PAPER_T["dvsgesture"] = 20
PAPER_PLIF_LAYERS = {"mnist": 4, "fashion_mnist": 4, "cifar10": 8, "nmnist": 4}
PAPER_PLIF_LAYERS.update(cifar10dvs=6, dvsgesture=7)


def load_config(name: str, *overrides: str):
    """Loads ``configs/<name>.py`` the way the CLI does (absl + ml_collections, locked)."""
    argv = ["prog", f"--config={os.path.join(CONFIG_DIR, name + '.py')}", *overrides]
    fv = flags.FlagValues()
    # sys_argv: the overrides are read from it (by default from sys.argv, pytest's here).
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return fv.config


def dataset_info(dataset: str, T: int):
    """What plif_jax.data reports for a paper dataset (no data needed to build the model)."""
    static = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
    events = {"nmnist": 34, "cifar10dvs": 128, "dvsgesture": 128, "digits_events": 34}
    if dataset in static:
        shape, layout, t = static[dataset], "NHWC", None
    else:
        size = events[dataset]
        shape, layout, t = (T, 2, size, size), "TBCHW", T
    return types.SimpleNamespace(
        model_name="nmnist" if dataset == "digits_events" else dataset,
        num_classes=11 if dataset == "dvsgesture" else 10,
        sample_shape=shape,
        input_layout=layout,
        time_steps=t,
    )


def test_every_config_file_is_covered():
    names = sorted(
        os.path.splitext(os.path.basename(p))[0] for p in glob.glob(f"{CONFIG_DIR}/*.py")
    )
    assert names == sorted([*PAPER_PARAMS, "common", "quickstart", "__init__"])


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
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
    assert sum(p.size for p in jax.tree.leaves(params)) == PAPER_PARAMS[name]
    assert len(abstract.spiking_layers()) == PAPER_PLIF_LAYERS[name]


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


def _tiny():
    return test_train.tiny_config()


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
    config = _tiny()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_device_count_is_rejected():
    config = _tiny()
    config.batch_size = 18
    with pytest.raises(ValueError, match=r"batch_size=18 is not divisible by the 4 devices"):
        config_lib.validate(config, num_devices=4)
    config.batch_size, config.eval_batch_size = 16, 100
    config_lib.validate(config, num_devices=4)  # both divisible: fine
    with pytest.raises(ValueError, match=r"eval_batch_size=100 is not divisible by the 8"):
        config_lib.validate(config, num_devices=8)


@pytest.mark.usefixtures("fast")
def test_batch_larger_than_the_dataset_is_rejected(tmp_path):
    config = _tiny()
    config.batch_size = 4096  # digits_static has 4,000 training digits
    with pytest.raises(ValueError, match=r"batch_size=4096 is larger than the training set"):
        config_lib.validate_against_data(config, num_train=4000)
    with pytest.raises(ValueError, match=r"4096"):
        train.train_and_evaluate(config, str(tmp_path))


def test_more_devices_than_visible_is_rejected(tmp_path):
    config = _tiny()
    config.num_devices = jax.device_count() + 1
    with pytest.raises(ValueError, match=r"num_devices=\d+ but only \d+ devices"):
        train.train_and_evaluate(config, str(tmp_path))


def test_models_options_cover_model_spec():
    # Every option models.spec_from_config passes is one create_model accepts.
    for name in PAPER_PARAMS:
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
