"""Two training runs compared bit for bit: frame caches, checkpoints, metrics, TensorBoard
scalars and summary.json (used by :mod:`tools.kill_resume`)."""

from __future__ import annotations

import json
import os
from typing import Any

# summary.json fields that differ between two identical runs: wall-clock figures, the run's own
# path, and the compilations of the last process (a restarted process compiles again; one that
# starts after the last save has nothing to compile).
SUMMARY_PROCESS_FIELDS = ("wall_seconds", "train_samples_per_sec", "workdir", "compilations")


def _model_arrays(workdir: str, which: str) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from plif_jax.training import checkpoint

    model, _ = checkpoint.restore(workdir, which)
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {
        "/".join(map(str, p)): np.asarray(jax.tree.leaves(v)[0])
        for p, v in nnx.to_flat_state(state)
    }


def _cache_files(cache: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(cache):
        for f in files:
            if f.endswith(".npy") and not f.startswith("."):
                path = os.path.join(dirpath, f)
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, cache)] = fh.read()
    return out


def compare(reference: Any, killed: Any) -> dict[str, list[str]]:
    """Differences per item (an empty list: bit-identical); each item is checked non-empty.

    ``reference`` and ``killed`` have a ``workdir`` and a frame ``cache`` directory.
    """
    import numpy as np

    from plif_jax.training import metrics

    out: dict[str, list[str]] = {}
    want, got = _cache_files(reference.cache), _cache_files(killed.cache)
    diffs = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    out["frame cache files"] = diffs[:5] if want else ["reference cache is empty"]
    for which in ("latest", "best"):
        a, b = _model_arrays(reference.workdir, which), _model_arrays(killed.workdir, which)
        diffs = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b]
        diffs += [k for k in sorted(set(a) & set(b)) if not np.array_equal(a[k], b[k])]
        out[f"{which} checkpoint arrays"] = diffs[:5] if a else ["no arrays"]

    def jsonl(run):
        rows = metrics.read_metrics(run.workdir)
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    a, b = jsonl(reference), jsonl(killed)
    out["metrics.jsonl rows"] = (
        ([] if a == b else [f"{len(a)} rows vs {len(b)}"]) if a else ["no rows"]
    )

    def tb(run):
        scalars = metrics.read_tensorboard_scalars(run.workdir)
        return {k: v for k, v in scalars.items() if not k.startswith("perf/")}

    a, b = tb(reference), tb(killed)
    out["TensorBoard scalars"] = (
        [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)][:5] if a else ["none"]
    )

    def summary(run):
        with open(os.path.join(run.workdir, "summary.json")) as f:
            s = json.load(f)
        return {k: v for k, v in s.items() if k not in SUMMARY_PROCESS_FIELDS}

    a, b = summary(reference), summary(killed)
    out["summary.json"] = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    latest = [
        sorted(os.listdir(os.path.join(r.workdir, "checkpoints", "latest")))
        for r in (reference, killed)
    ]
    out["checkpoint steps"] = [] if latest[0] == latest[1] else [f"{latest[0]} vs {latest[1]}"]
    return out
