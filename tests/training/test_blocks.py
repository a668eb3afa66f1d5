"""Several train steps per dispatch and the training split on the device
(:mod:`plif_jax.training.blocks`): the same run as the one-step host loop, bit for bit.

The static runs are ``tests.support.runs.tiny_config()`` (4 steps per epoch, a log window every
2 steps) against its one-step host loop (``host_loop``): with 3 steps per dispatch an epoch is a
block of 3 (crossing a log window's end) and a single step. The event run is the same tiny net
on 100 real digits as emulated events (frames travel as uint8 counts): host loop against blocks
of 2 on the device.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from plif_jax.data import digits as digits_lib
from plif_jax.errors import ConfigError
from plif_jax.training import blocks as blocks_lib
from plif_jax.training import config as config_lib
from plif_jax.training import run as train
from tests.support.runs import (
    EPOCHS,
    STEPS,
    jsonl_without_timing,
    model_arrays,
    tb_without_timing,
    tiny_config,
)

# XLA:CPU's default fusion emitters, as users compile: with the loop emitters the tests' other
# modules use (tests/conftest.py) a K-step program's fusions differ from one step's in the last
# bits (BatchNorm's bias after 12 steps: 7e-8), so the bit-identity is checked where it is claimed.
pytestmark = pytest.mark.usefixtures("fast", "default_emitters")


@pytest.fixture(scope="module")
def host_loop(fast, default_emitters, tmp_path_factory):
    """The uninterrupted one-step host loop of ``tiny_config()`` (the session's ``baseline``),
    compiled as this module compiles: ``(workdir, summary)``."""
    workdir = str(tmp_path_factory.mktemp("host_loop"))
    return workdir, train.train_and_evaluate(tiny_config(), workdir)


def _latest(workdir: str) -> list[int]:
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", "latest")))


def assert_same_run(got_dir: str, ref_dir: str, *, stopped: bool = False) -> None:
    """Parameters and BatchNorm statistics (latest and best), metrics rows, TensorBoard scalars
    and (a run never stopped) the steps of the checkpoints kept all equal."""
    for which in ("latest", "best"):
        ref, got = model_arrays(ref_dir, which), model_arrays(got_dir, which)
        assert sorted(got) == sorted(ref)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{which}: {key}")
    assert jsonl_without_timing(got_dir) == jsonl_without_timing(ref_dir)
    assert tb_without_timing(got_dir) == tb_without_timing(ref_dir)
    if not stopped:  # a stopped run also saved where it stopped
        assert _latest(got_dir) == _latest(ref_dir)


@pytest.mark.parametrize(
    "overrides, programs",
    [
        ({"steps_per_dispatch": 3}, {"train_block_3": 1, "train_step": 1}),
        (
            {"steps_per_dispatch": 3, "data.on_device": "true"},
            {"train_block_3": 1, "train_step": 1, "gather_3": 1, "gather_1": 1},
        ),
        ({"data.on_device": "True"}, {"train_step": 1, "gather_1": 1}),
    ],
    ids=["blocks", "blocks_on_device", "on_device"],
)
def test_blocks_and_device_data_equal_the_host_loop_bit_for_bit(
    host_loop, tmp_path, overrides, programs
):
    ref_dir, ref_summary = host_loop
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(tiny_config(**overrides), workdir)
    assert summary["global_step"] == EPOCHS * STEPS
    assert_same_run(workdir, ref_dir)
    for key in ("best_test_accuracy", "best_test_epoch", "final_test_accuracy", "tau"):
        assert summary[key] == ref_summary[key], key
    assert summary["compilations"] == {**programs, "eval_step": 1}  # once over the epochs


def test_a_stop_inside_a_block_saves_at_its_end_and_any_step_resumes_exactly(host_loop, tmp_path):
    ref_dir, _ = host_loop
    blocks = {"steps_per_dispatch": 3, "data.on_device": "true"}
    workdir = str(tmp_path / "run")
    # Epoch 1's first block is steps 4-6: a stop asked after step 5 stops after step 6.
    first = train.train_and_evaluate(tiny_config(**blocks), workdir, stop_after_steps=STEPS + 2)
    assert first["status"] == "interrupted" and first["global_step"] == STEPS + 3
    # Resumed at step 3 of the epoch (not a block boundary) with the data from the host: the
    # single step 7, then epoch 2's first block (8-10), inside which it is stopped again.
    second = train.train_and_evaluate(
        tiny_config(steps_per_dispatch=3), workdir, stop_after_steps=2
    )
    assert second["global_step"] == 2 * STEPS + 3
    third = train.train_and_evaluate(tiny_config(), workdir)  # and the one-step loop
    assert third["status"] == "completed"
    assert_same_run(workdir, ref_dir, stopped=True)


def test_event_frames_as_counts_in_blocks_on_the_device_equal_the_host_loop(tmp_path, monkeypatch):
    images, labels = digits_lib.load_digits()
    ids = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(10)])
    monkeypatch.setattr(digits_lib, "load_digits", lambda: (images[ids], labels[ids]))
    monkeypatch.setattr(digits_lib, "TRAIN_PER_CLASS", 8)  # 80 train, 20 test digits

    def config(**overrides):
        return tiny_config(
            dataset="digits_events", eval_batch_size=20, num_epochs=2,
            **{"data.cache_dir": str(tmp_path / "cache"), "data.num_workers": 1}, **overrides,
        )  # fmt: skip

    ref_dir, got_dir = str(tmp_path / "host"), str(tmp_path / "blocks")
    ref = train.train_and_evaluate(config(**{"data.on_device": "false"}), ref_dir)
    got = train.train_and_evaluate(
        config(steps_per_dispatch=2, **{"data.on_device": "true"}), got_dir
    )
    assert_same_run(got_dir, ref_dir)
    assert got["final_test_accuracy"] == ref["final_test_accuracy"]
    (cache,) = (tmp_path / "cache" / "digits_events").glob("train-*")
    assert (cache / "dtype").read_text() == "uint8"  # the frames travelled as counts


def test_plan_cuts_blocks_that_never_cross_the_epoch_end():
    assert list(blocks_lib.plan(0, 8, 3)) == [(0, 3), (3, 3), (6, 1), (7, 1)]
    assert list(blocks_lib.plan(5, 8, 3)) == [(5, 3)]
    assert list(blocks_lib.plan(2, 4, 1)) == [(2, 1), (3, 1)]
    assert list(blocks_lib.plan(4, 4, 3)) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps_per_dispatch": 0}, "config.steps_per_dispatch must be a positive integer, got 0"),
        ({"data.on_device": "yes"}, "config.data.on_device must be 'auto', 'true' or 'false'"),
    ],
)
def test_bad_dispatch_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_lib.validate(tiny_config(**overrides))
    assert "\n" not in str(err.value)


def test_device_data_when_the_split_fits_and_not_resume_critical():
    from configs import common

    assert config_lib.on_device_setting(common.get_config()) == "auto"  # the default
    config = tiny_config()
    assert config_lib.on_device_setting(config) is False  # the tests' host-loop reference
    from plif_jax.runtime import parallel

    mesh = parallel.create_mesh(1)
    memory = blocks_lib.device_memory(mesh)  # the machine's memory on CPU
    assert memory and memory > 0

    def data(kind: str, nbytes: int):  # a bundle whose training split is one sample of nbytes
        split = types.SimpleNamespace(sample_shape=(nbytes,), dtype=np.uint8, labels=[0])
        return types.SimpleNamespace(info=types.SimpleNamespace(kind=kind), train=split)

    assert blocks_lib.keep_on_device("auto", data("static", 10), mesh) is True
    assert blocks_lib.keep_on_device("auto", data("static", memory), mesh) is False
    assert blocks_lib.keep_on_device("auto", data("events", 10), mesh) is True
    assert blocks_lib.keep_on_device("auto", data("events", memory), mesh) is False
    assert blocks_lib.keep_on_device(True, data("static", memory), mesh) is True
    assert blocks_lib.keep_on_device(False, data("events", 10), mesh) is False
    saved = tiny_config(**{"data.on_device": "true", "steps_per_dispatch": 8}).to_dict()
    assert config_lib.resume_conflicts(saved, config.to_dict()) == []
