"""The GPU plan's projections and its markdown table (:mod:`benchmarks.gpu_plan`).

The bound on a step's time is a PROJECTION from the compiled program, not a measurement:
``max(FLOPs / peak, bytes / bandwidth, launches x launch cost)`` with the target's published
peak rates (:mod:`benchmarks.gpu_targets`). A real step is slower (kernels below peak, launch
gaps, the input pipeline); the bound says what the program cannot beat. The 1024-epoch
projection multiplies it by the paper's steps: ``1024 x (train steps x train bound + eval
steps x eval bound)``, train batches dropping the last partial batch, eval batches padding it.
"""

from __future__ import annotations

import math
import platform
import time

EPOCHS = 1024
_GIB = 1 << 30


def run_meta(jax_version: str, fingerprint: str, command: str) -> dict:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jax": jax_version,
        "fingerprint": fingerprint,
        "command": command,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "label": "PROJECTION: compiled for compile-only devices; nothing ran on an accelerator",
    }


def peak_key(record: dict) -> str:
    if record["dtype"] == "bfloat16":
        return "bf16"
    return "f32" if record.get("precision") == "highest" else "tf32"


def bound(record: dict, target) -> dict:
    """The step-time bound of a compiled entry (seconds), or {} for the CPU target."""
    if target is None:
        return {}
    c = record["census"]
    peak = target.peak_flops[peak_key(record)]
    compute = c["flops"] / peak
    memory = c["bytes"] / target.bandwidth
    launch = c["launches"] * target.launch_s
    return {
        "compute_s": compute,
        "memory_s": memory,
        "launch_s": launch,
        "step_s": max(compute, memory, launch),
        "limited_by": max(
            (("compute", compute), ("memory", memory), ("launches", launch)), key=lambda x: x[1]
        )[0],
        "fits": record["memory"]["peak"] <= target.memory_bytes,
        "peak_key": peak_key(record),
    }


def run_projection(train: dict, evaluation: dict | None, sizes: tuple[int, int]) -> float | None:
    """Seconds of the paper's 1024 epochs from a train and an eval entry (None: missing)."""
    if not train.get("ok") or not train.get("bound") or evaluation is None:
        return None
    if not evaluation.get("ok") or not evaluation.get("bound"):
        return None
    n_train, n_test = sizes
    train_steps = n_train // int(train["batch"])
    eval_steps = math.ceil(n_test / int(evaluation["batch"]))
    per_epoch = train_steps * train["bound"]["step_s"] + eval_steps * evaluation["bound"]["step_s"]
    return EPOCHS * per_epoch


def one_line(key: str, r: dict) -> str:
    if not r.get("ok"):
        return f"{key}: FAILED {r.get('error', '')[:160]}"
    c, m = r["census"], r["memory"]
    b = r.get("bound") or {}
    step = f", bound {b['step_s'] * 1e3:.2f} ms ({b['limited_by']})" if b else ""
    return (
        f"{key}: {r['compile_s']} s compile, temp {m['temp'] / _GIB:.2f} GiB, peak "
        f"{m['peak'] / _GIB:.2f} GiB, {c['launches']:.0f} launches, {c['bytes'] / 1e9:.2f} GB, "
        f"{c['flops'] / 1e9:.1f} GFLOP{step}, warnings {r.get('warning_count', 0)}"
    )


def _fmt_hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f} h"


def markdown(results: dict, targets: dict) -> str:
    """The plan table (one row per entry) and the 1024-epoch projections (per target/net/dtype)."""
    from benchmarks.gpu_plan import DATASET_SIZES, entry_key

    meta = results.get("meta", {})
    lines = [
        f"Plan of {meta.get('date', '?')}, jax {meta.get('jax', '?')}, source fingerprint "
        f"{meta.get('fingerprint', '?')}. **Projections**: compiled for compile-only devices, "
        "nothing ran on an accelerator. Bound = max(FLOPs / peak, bytes / bandwidth, "
        "launches x 2 us); float32 at TF32 peak (XLA's default precision), bfloat16 at its "
        "tensor-core peak.",
        "",
        "| target | net | step | dtype | remat | k | devices | temp GiB | peak GiB | fits | "
        "launches | GB/step | GFLOP/step | bound ms | limited by |",
        "|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    entries = results.get("entries", {})
    for key in sorted(entries):
        r = entries[key]
        k = f"{r['k']} {r['layout']}" if r["k"] > 1 else "1"
        head = (
            f"| {r['target']} | {r['net']} | {r['kind']} | {r['dtype']} | "
            f"{'on' if r['remat'] else 'off'} | {k} | {r['devices']} "
        )
        if not r.get("ok"):
            lines.append(head + f"| compile failed: {r.get('error', '')[:80]} ||||||||")
            continue
        m, c, b = r["memory"], r["census"], r.get("bound") or {}
        fits = "-" if not b else ("yes" if b["fits"] else "**no**")
        step = f"{b['step_s'] * 1e3:.2f}" if b else "-"
        lines.append(
            head + f"| {m['temp'] / _GIB:.2f} | {m['peak'] / _GIB:.2f} | {fits} | "
            f"{c['launches']:.0f} | {c['bytes'] / 1e9:.2f} | {c['flops'] / 1e9:.1f} | {step} | "
            f"{b.get('limited_by', '-')} |"
        )
    lines += [
        "",
        "Projected 1024-epoch run (train + test every epoch; bound, not a measurement):",
        "",
        "| target | net | dtype | remat | train steps/epoch | projected 1024 epochs |",
        "|---|---|---|---|---:|---:|",
    ]
    for key in sorted(entries):
        r = entries[key]
        if r["kind"] != "train" or r["k"] != 1 or r["devices"] != 1:
            continue
        ev = entries.get(entry_key({**r, "kind": "eval"}))
        total = run_projection(r, ev, DATASET_SIZES[r["net"]])
        if total is None:
            continue
        steps = DATASET_SIZES[r["net"]][0] // int(r["batch"])
        lines.append(
            f"| {r['target']} | {r['net']} | {r['dtype']} | {'on' if r['remat'] else 'off'} | "
            f"{steps} | {_fmt_hours(total)} |"
        )
    lines += ["", "Targets:", ""]
    lines += [f"- `{t.name}`: {t.description}" for t in targets.values()]
    return "\n".join(lines) + "\n"
