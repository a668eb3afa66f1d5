"""The end-of-run summary (``summary.json``, the printed lines) and the run-info record."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from plif_jax import models
from plif_jax.runtime import allocator, disk
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training.progress import Progress
from plif_jax.training.spec import RunSpec
from plif_jax.training.steps import Steps


def record_run_info(workdir: str, config: ml_collections.ConfigDict, mesh) -> str:
    """Writes ``config.json`` and ``run_info.txt`` (devices, versions) to ``workdir``."""
    import flax
    import orbax.checkpoint as ocp

    lines = [
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"python: {platform.python_version()} ({platform.platform()})",
        f"jax: {jax.__version__}, flax: {flax.__version__}, optax: {optax.__version__}, "
        f"orbax-checkpoint: {getattr(ocp, '__version__', '?')}, numpy: {np.__version__}",
        f"backend: {jax.default_backend()}, processes: {jax.process_count()}, "
        f"devices: {jax.device_count()} ({', '.join(str(d) for d in jax.devices())})",
        f"mesh: {dict(mesh.shape)}",
        f"malloc: {allocator.in_effect()}",
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}",
    ]
    text = "\n".join(lines)
    if jax.process_index() == 0:
        checkpoint_lib.write_json_atomic(
            os.path.join(workdir, "config.json"), json.loads(config.to_json())
        )
        info = os.path.join(workdir, "run_info.txt")
        with disk.writing(info), open(info, "a", encoding="utf-8") as f:
            f.write(text + "\n\n")
    return text


def aggregate(name: str, values) -> dict[str, float]:
    """The scalars of the members' ``values``: ``{name: mean}`` for one member (the value), and
    for k > 1 also ``name/std`` (ddof 1) and ``name/m<i>`` (member i)."""
    values = [float(v) for v in values]
    out = {name: float(np.mean(values))}
    if len(values) > 1:
        out[f"{name}/std"] = _std(values)
        out.update({f"{name}/m{i}": v for i, v in enumerate(values)})
    return out


def _std(values) -> float:
    """The sample standard deviation (ddof 1; 0 for one value)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def learnable_taus(model) -> dict[str, float]:
    """The learnable (PLIF) taus: what ``tau/<layer>`` and the summary's ``tau`` report."""
    return models.layer_taus(model, learnable_only=True)


def run_summary(
    spec: RunSpec,
    progress: Progress,
    steps: Steps,
    state: Any,
    *,
    status: str,
    wall: float,
    workdir: str,
) -> dict[str, Any]:
    """The run's summary (``summary.json``).

    The run-level records are ``progress``'s: for k > 1 members those of the members' MEAN
    accuracy curve (the best checkpoint's epoch). A run of k > 1 members adds each member's own
    records and their mean and std (ddof 1): ``accuracy_A`` (and ``accuracy_B``) of each
    member's accuracy-A (B) at its own best epoch, ``tau`` is the members' mean.
    """
    p, several = progress, spec.k > 1
    out: dict[str, Any] = {
        "dataset": spec.dataset,
        "protocol": spec.protocol,
        "status": status,
        "epochs_completed": p.epoch,
        "global_step": p.global_step,
        "best_test_accuracy": p.best_test_accuracy,
        "best_test_epoch": p.best_test_epoch,
        "final_test_accuracy": p.last_test_accuracy,
    }
    if spec.protocol == "B":
        out.update(_protocol_b(p))
    taus = [learnable_taus(m) for m in steps.member_models(state)]
    if several:
        out.update(_members_records(spec, progress, taus))
    out["tau"] = {k: float(np.mean([t[k] for t in taus])) for k in taus[0]}
    if several:
        out["tau_std"] = {k: _std([t[k] for t in taus]) for k in taus[0]}
    out["wall_seconds"] = wall
    out["train_samples_per_sec"] = p.train_samples / max(p.train_seconds, 1e-9)
    out["compilations"] = dict(steps.traces)
    if several:
        out["seed_samples_per_sec"] = out["train_samples_per_sec"] * spec.k
    out["workdir"] = workdir
    return out


def _protocol_b(p: Progress) -> dict[str, Any]:
    return {
        "test_at_best_val": p.test_at_best_val,
        "best_val_accuracy": p.best_val_accuracy,
        "best_val_epoch": p.best_val_epoch,
    }


def _members_records(spec: RunSpec, progress: Progress, taus: list[dict]) -> dict[str, Any]:
    """k > 1 members: each member's records, and the mean +- std of accuracy-A (and B)."""
    members = []
    for m, p, tau in zip(spec.members, progress.members, taus, strict=True):
        record = {
            "seed": m.seed,
            "data_seed": m.data_seed,
            "values": dict(m.values),
            "best_test_accuracy": p.best_test_accuracy,
            "best_test_epoch": p.best_test_epoch,
            "final_test_accuracy": p.last_test_accuracy,
        }
        if spec.protocol == "B":
            record.update(_protocol_b(p))
        record["tau"] = tau
        members.append(record)

    def stats(key):
        values = [m[key] for m in members]
        return {"mean": float(np.mean(values)), "std": _std(values), "per_member": values}

    out: dict[str, Any] = {
        "num_seeds": len(members),
        "final_test_accuracy_std": _std([m["final_test_accuracy"] for m in members]),
        "accuracy_A": stats("best_test_accuracy"),
    }
    if spec.protocol == "B":
        out["accuracy_B"] = stats("test_at_best_val")
    out["members"] = members
    return out


def _members_lines(summary: Mapping[str, Any]) -> list[str]:
    """The per-member and mean +- std lines of a k-member run's printed summary."""
    k, protocol = summary["num_seeds"], summary["protocol"]
    lines = [f"{k} members ({summary['seed_samples_per_sec']:.1f} seed-samples/s):"]
    for i, m in enumerate(summary["members"]):
        values = "".join(f", {f} {v:g}" for f, v in m["values"].items())
        if m["best_test_epoch"] < 0:
            lines.append(f"  member {i} (seed {m['seed']}{values}): no epoch completed yet")
            continue
        text = (
            f"  member {i} (seed {m['seed']}{values}): accuracy-A "
            f"{100 * m['best_test_accuracy']:.2f}% at epoch {m['best_test_epoch']}"
        )
        if protocol == "B" and m["best_val_epoch"] >= 0:
            text += (
                f", accuracy-B {100 * m['test_at_best_val']:.2f}% at epoch {m['best_val_epoch']}"
            )
        text += f"; final {100 * m['final_test_accuracy']:.2f}%"
        if m["tau"]:
            text += "; tau " + " ".join(f"{n} {v:.3f}" for n, v in m["tau"].items())
        lines.append(text)
    for key, label in (("accuracy_A", "accuracy-A (best test)"),
                       ("accuracy_B", "accuracy-B (test at best val)")):  # fmt: skip
        if key in summary and summary["best_test_epoch"] >= 0:
            st = summary[key]
            lines.append(
                f"{label}, mean +- std over {k} members: {100 * st['mean']:.2f} +- "
                f"{100 * st['std']:.2f}%"
            )
    if summary["best_test_epoch"] >= 0:
        lines.append(
            f"members' mean test accuracy: best {100 * summary['best_test_accuracy']:.2f}% at "
            f"epoch {summary['best_test_epoch']} (the best checkpoint); final "
            f"{100 * summary['final_test_accuracy']:.2f}%"
        )
    if summary["tau"]:
        taus = ", ".join(
            f"{n} {v:.3f} +- {summary['tau_std'][n]:.3f}" for n, v in summary["tau"].items()
        )
        lines.append(f"tau per PLIF layer, mean +- std: {taus}")
    return lines


def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable end-of-run lines printed by ``experiments/train.py``."""
    lines = [
        f"{summary['dataset']} (protocol {summary['protocol']}): {summary['status']} after "
        f"{summary['epochs_completed']} epochs, {summary['global_step']} steps, "
        f"{summary['wall_seconds']:.1f} s wall, {summary['train_samples_per_sec']:.1f} train "
        "samples/s",
    ]
    if summary["best_test_epoch"] < 0:
        lines.append("no epoch completed yet: no test accuracy")
    else:
        lines.append(
            f"accuracy-A (best test): {100 * summary['best_test_accuracy']:.2f}% at epoch "
            f"{summary['best_test_epoch']}; final test {100 * summary['final_test_accuracy']:.2f}%"
        )
    if summary["protocol"] == "B" and summary["best_val_epoch"] >= 0:
        lines.append(
            f"accuracy-B (test at best val): {100 * summary['test_at_best_val']:.2f}% at epoch "
            f"{summary['best_val_epoch']} (val {100 * summary['best_val_accuracy']:.2f}%)"
        )
    if summary.get("members"):
        lines[1:] = _members_lines(summary)
    elif summary["tau"]:
        taus = ", ".join(f"{k} {v:.3f}" for k, v in summary["tau"].items())
        lines.append(f"tau per PLIF layer: {taus}")
    lines.append(f"summary: {os.path.join(summary['workdir'], 'summary.json')}")
    return "\n".join(lines)
