"""Crash anywhere, lose nothing: ``kill -9`` at random moments, rerun, bit-identical results.

The real CLI (``python -m experiments.train``, through :mod:`tools.kill_resume`) trains the
quick-start config shrunk (2 channels, hidden 16, T 4, 3 epochs of 5 steps) on a class-balanced
600-digit subset of ``digits_events`` (60 per class: 500 train / 100 test; the subprocess swaps
the digits for the subset, as tests/support/runs.py swaps in its parsed copy). One run goes
uninterrupted; the other is SIGKILLed (its process group, frame-conversion workers included)
during the frame conversion, at a checkpoint save and at a random time, and rerun after each.
"""

from __future__ import annotations

import pytest

from tests.support.runs import SUBPROCESS_PRELUDE, subprocess_env
from tools import kill_resume

PER_CLASS, TRAIN_PER_CLASS = 60, 50
# The training subprocess: tests.support.runs' prelude (digits from the session's .npz), a
# class-balanced subset of them, then the real CLI.
SUBSET_CLI = f"""
import runpy, sys
import numpy as _np

_all_digits = _digits.load_digits

def _subset():
    images, labels = _all_digits()
    keep = _np.sort(_np.concatenate(
        [_np.flatnonzero(labels == c)[:{PER_CLASS}] for c in range(10)]
    ))
    return images[keep], labels[keep]

_digits.load_digits = _subset
_digits.TRAIN_PER_CLASS = {TRAIN_PER_CLASS}
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""
OVERRIDES = (
    "--config=configs/quickstart.py",
    "--config.model.channels=2",
    "--config.model.hidden=16",
    "--config.data.T=4",
    "--config.num_epochs=3",
    "--config.steps_per_epoch=5",
    "--config.log_every_steps=2",
    "--config.eval_batch_size=50",
    "--config.data.num_workers=2",
    "--config.progress_bar=False",
)
SEED = 11


@pytest.mark.e2e
def test_kill_9_at_random_moments_then_rerun_equals_an_uninterrupted_run(
    tmp_path, jax_cache_dir, digits_npz
):
    report = kill_resume.kill_and_resume(
        str(tmp_path),
        kills=3,  # convert, save, time (KINDS order), moments drawn from SEED
        seed=SEED,
        cli=(kill_resume.sys.executable, "-c", SUBPROCESS_PRELUDE + SUBSET_CLI),
        overrides=OVERRIDES,
        env=subprocess_env(jax_cache_dir, digits_npz),
        num_train=10 * TRAIN_PER_CLASS,
        timeout_s=300,
    )
    print("\n".join(report.lines()))
    kinds = [k.kind for k in report.kills if k.fired]
    assert kinds == ["convert", "save", "time"], report.lines()
    convert, save, _ = report.kills
    # The first kill hit the conversion (incomplete cache) and the second a save: Orbax's
    # temporary directory was there, or the checkpoint had just appeared.
    assert not convert.cache_complete and 0 < convert.cache_samples < 10 * TRAIN_PER_CLASS
    assert save.temporary or save.checkpoints
    assert report.starts == 4
    for item, diffs in report.differences.items():
        assert diffs == [], f"{item} differs: {diffs}"
    assert set(report.differences) == {
        "frame cache files",
        "latest checkpoint arrays",
        "best checkpoint arrays",
        "metrics.jsonl rows",
        "TensorBoard scalars",
        "summary.json",
        "checkpoint steps",
    }


def test_kill_plan_is_seeded_and_cycles_through_the_kinds():
    a = kill_resume.plan_kills(7, seed=3, num_train=500)
    b = kill_resume.plan_kills(7, seed=3, num_train=500)
    assert [(k.kind, k.param) for k in a] == [(k.kind, k.param) for k in b]
    assert [k.kind for k in a] == ["convert", "save", "time"] * 2 + ["convert"]
    assert all(1 <= k.param <= 499 for k in a if k.kind == "convert")
    assert all(0.0 <= k.param <= 0.05 for k in a if k.kind == "save")
    assert all(0.05 <= k.param <= 0.95 for k in a if k.kind == "time")
    other = kill_resume.plan_kills(7, seed=4, num_train=500)
    assert [k.param for k in other] != [k.param for k in a]


@pytest.mark.parametrize("kills", [-1])
def test_script_rejects_a_negative_kill_count(kills, capsys):
    with pytest.raises(SystemExit) as e:
        kill_resume.main([f"--kills={kills}", "--dir=/nonexistent/never/created"])
    assert e.value.code == 2
    assert "--kills must be >= 0" in capsys.readouterr().err
