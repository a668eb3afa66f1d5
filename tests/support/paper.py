"""The paper's network facts the tests check against, and loading a config file as the CLI does."""

from __future__ import annotations

import os
import types

from absl import flags
from ml_collections import config_flags

from tests.support.runs import ROOT

CONFIG_DIR = os.path.join(ROOT, "configs")

# Parameter counts of the paper's networks (codes/models.py: conv + BN affine + FC + w).
PAPER_PARAM_COUNTS = {
    "mnist": 13_198_980,
    "fashion_mnist": 13_198_980,
    "cifar10": 36_718_344,
    "nmnist": 17_132_292,
    "cifar10dvs": 17_427_718,
    "dvsgesture": 1_698_311,
}
# Spiking (PLIF) layers per network.
PAPER_NUM_SPIKING = {
    "mnist": 4,
    "fashion_mnist": 4,
    "cifar10": 8,
    "nmnist": 4,
    "cifar10dvs": 6,
    "dvsgesture": 7,
}


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
