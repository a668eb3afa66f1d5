"""The house's rules that a test can hold: light config checks, one owner per dataset fact."""

import subprocess
import sys

import pytest

from plif_jax import layers, surrogate
from plif_jax.data import registry
from plif_jax.models import options

HEAVY = ("jax", "flax", "tonic", "orbax", "tensorflow_datasets")


def after_in_a_fresh_interpreter(code: str, *args: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (nothing imported before it), then asserts that none
    of :data:`HEAVY` was imported; returns the finished process (stderr captured)."""
    check = f"\nheavy = [m for m in {HEAVY!r} if m in sys.modules]\nassert not heavy, heavy\n"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code + check, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.e2e
def test_validating_a_config_loads_neither_jax_nor_flax_nor_tonic():
    # The CLI's promise: a config mistake is reported before JAX and the data libraries load.
    after_in_a_fresh_interpreter(
        "from configs import dvsgesture\n"
        "from plif_jax.training import config\n"
        "config.validate(dvsgesture.get_config())\n"
    )


@pytest.mark.e2e
def test_the_train_cli_reports_a_config_mistake_before_jax_loads():
    proc = after_in_a_fresh_interpreter(
        "import runpy\n"
        "sys.argv = ['experiments.train', '--config=configs/quickstart.py', "
        "'--config.dataset=imagenet', '--workdir=' + sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('experiments.train', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert e.code == 2, e.code\n"
        "else:\n"
        "    raise AssertionError('no error')\n",
        "/nonexistent/never_created",
    )
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Unknown dataset 'imagenet'")


def test_the_config_vocabulary_is_what_layers_and_surrogates_implement():
    assert set(options.POOLINGS) == set(layers.POOLINGS)
    assert set(options.BN_MODES) == set(layers.BN_MODES)
    assert set(options.SURROGATES) == set(surrogate.SPIKE_FUNCTIONS)


def test_the_paper_nets_take_their_inputs_from_the_dataset_table():
    for name in options.NETWORKS:
        row = registry.get(name)
        paper = options.PAPER[name]
        assert (paper["input_size"], paper["in_channels"], paper["num_classes"]) == (
            row.input_size,
            row.in_channels,
            row.num_classes,
        )
    assert options.PAPER["dvsgesture"]["num_classes"] == 11
    assert registry.get("digits_events").network == "nmnist"
    assert registry.STATIC == ("mnist", "fashion_mnist", "cifar10", "digits_static")
