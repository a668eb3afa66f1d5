"""The peers suite: plif_jax beside Spyx, SpikingJelly, Norse and snnTorch, and the matmul floor.

The Open Neuromorphic "SNN library benchmarks" workload: one Linear(n -> n) layer then one LIF
layer, batch 16, float32, forward + backward of the sum of the output spikes (gradients of the
parameters: the weight and, where learnable, the time constant; the input needs none unless
``--peers-input-grad``). Also the neuron alone (no Linear; then the input current's gradient is
taken). CPU grid: n in {1024, 4096} x T in {100, 500} (``--quick``: n = 64, T = 8).

Every peer is optional: a missing package is skipped with the reason printed. Before timing,
each library's spikes and gradient are checked on a small input (:mod:`benchmarks.peer_check`).
Each measurement runs in a fresh process (:mod:`benchmarks.peer_worker`), one library after the
other at each grid point, every timed call guarded against other processes' CPU use
(:mod:`benchmarks.quiet`). ``--peers-rounds R`` repeats that sequence R times at each point
(the library order reversed every other round): a library's time is the median of its rounds'
medians, and plif_jax's speed-up the median of the rounds' paired ratios, with their range (on
a machine whose speed drifts between processes one round can move a ratio by 2x). The floor is
the layer's matmuls alone (forward and dW; dx too with ``--peers-input-grad``), timed in XLA and
in torch in the same run. A library's overhead is its time minus its framework's floor, measured
in the library's own process (its step and the floor's matmuls called alternately after its
timing and RSS: :func:`benchmarks.peer_worker.paired_overhead`), so that one process's speed
does not enter the difference; the difference of the two processes' medians is kept beside it
(``overhead_unpaired_s``). Memory:
XLA's plan for the JAX libraries, the fresh process's peak RSS above its baseline (imports +
input data) for all.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from benchmarks import peer_check, peer_libs, peer_worker, peers_report, quiet

CPU_GRID = [(n, t) for n in (1024, 4096) for t in (100, 500)]
QUICK_GRID = [(64, 8)]
CHECK_SIZE = dict(T=16, batch=4, n=64)
BATCH = 16
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_arguments(p) -> None:
    """The suite's options on the benchmark CLI's parser."""
    p.add_argument("--peers", default=",".join(peer_libs.PEERS), help="peers suite: libraries")
    p.add_argument("--peers-grid", default=None, help="peers suite: n:T,n:T (default: CPU grid)")
    p.add_argument("--peers-variants", default="linear,neuron", help="peers suite: linear,neuron")
    p.add_argument(
        "--peers-input-grad", action="store_true", help="peers suite: the input needs a gradient"
    )
    p.add_argument(
        "--peers-max-share",
        type=float,
        default=0.10,
        help="peers suite: a timed call is redone if other processes used more than this share "
        "of the cores during it",
    )
    p.add_argument(
        "--peers-max-redo",
        type=int,
        default=20,
        help="peers suite: tries per timed call before one made under load is kept (and counted)",
    )
    p.add_argument(
        "--peers-rounds",
        type=int,
        default=1,
        help="peers suite: measure every library this many times at each point, alternating the "
        "order (the speed-up is then the median of the rounds' paired ratios)",
    )
    p.add_argument(
        "--peers-inprocess",
        action="store_true",
        help="peers suite: measure in this process instead of a fresh one each (a smoke run: "
        "no RSS figures of its own, libraries share threads and heap)",
    )


def _log(msg: str) -> None:
    print(msg, flush=True)


def _grid(args) -> list[tuple[int, int]]:
    if args.peers_grid:
        return [tuple(int(v) for v in item.split(":")) for item in args.peers_grid.split(",")]
    return QUICK_GRID if args.quick else CPU_GRID


def _worker(spec: dict[str, Any], inprocess: bool = False) -> dict[str, Any]:
    """Runs :mod:`benchmarks.peer_worker` in a fresh process; its result or ``{'error': ...}``."""
    if inprocess:
        return peer_worker.measure(spec)
    path = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, "-m", "benchmarks.peer_worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_ROOT, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(peer_worker.PREFIX):
            return json.loads(line[len(peer_worker.PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exit {proc.returncode}: " + " | ".join(tail)}


def availability(names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        peer = peer_libs.PEERS[name]
        reason = peer.unavailable()
        out[name] = {
            "version": peer.version(),
            "skipped": reason,
            "neuron": peer.neuron,
            "differences": list(peer.differences),
            "framework": peer.framework,
        }
        if reason:
            _log(f"[peers] {name}: skipped: {reason}")
        else:
            _log(f"[peers] {name} {out[name]['version']}: {peer.neuron}")
            if name == "plif_jax":  # which CPU time loops its workers trace
                from plif_jax.ops import lif_native

                out[name]["cpu_loops"] = lif_native.status()
                _log(f"[peers]     CPU loops: {out[name]['cpu_loops']}")
            for diff in peer.differences:
                _log(f"[peers]     differs from PLIF: {diff}")
    return out


def cross_check(names: list[str], variants: list[str]) -> dict[str, Any]:
    data = peer_libs.inputs(CHECK_SIZE["T"], CHECK_SIZE["batch"], CHECK_SIZE["n"], seed=1)
    # Stronger currents than the timed inputs: ~10% of the neurons fire at each step (1-4% with
    # the timed scale), so both branches of every reset are exercised.
    data["x"], data["kernel"] = data["x"] * 2.0, data["kernel"] * 1.5
    out: dict[str, Any] = {}
    for name in names:
        for variant in variants:
            r = peer_check.check(peer_libs.PEERS[name], data, with_linear=variant == "linear")
            out[f"{name}/{variant}"] = r
            extra = ""
            if "spikes_differing_from_plif_jax" in r:
                extra = f"; vs plif_jax {r['spikes_differing_from_plif_jax']} spikes differ"
            _log(
                f"[peers] check {name:<12} {variant:<6} against {r['against']}: "
                f"{r['spikes_differing']}/{r['spikes_total']} spikes differ, d{r['grad_key']} "
                f"rel err {r['grad_rel_err']:.1e}, firing {r['firing_rate']:.3f}{extra} -> "
                f"{'ok' if r['ok'] else 'MISMATCH'}"
            )
    return out


def _floor_s(parts: dict[str, Any], input_grad: bool) -> float:
    return sum(parts[k]["median_s"] for k in peer_worker.floor_keys(input_grad))


def _point(args, names, n: int, T: int, with_linear: bool) -> dict[str, Any]:
    common = dict(
        n=n,
        T=T,
        batch=BATCH,
        repeats=args.repeats or (3 if args.quick else 5),
        warmup=1,
        max_share=args.peers_max_share,
        allocator=args.allocator,
        max_redo=1 if args.quick else args.peers_max_redo,
    )
    rounds = [
        _round(args, common, names if i % 2 == 0 else names[::-1], with_linear)
        for i in range(args.peers_rounds)
    ]
    row: dict[str, Any] = {"n": n, "T": T, "batch": BATCH, **_merge(rounds, names)}
    if len(rounds) > 1:
        row["rounds"] = rounds
    row["verdict"] = verdict(row, with_linear)
    return row


def _round(args, common, names, with_linear: bool) -> dict[str, Any]:
    """Every library (and, for the Linear, each framework's floor) once, in ``names``' order."""
    out: dict[str, Any] = {"results": {}, "floor": {}}
    if with_linear:
        for fw in ("jax", "torch"):
            if fw == "torch" and not any(peer_libs.PEERS[m].framework == fw for m in names):
                continue
            r = _worker(dict(common, peer="floor", framework=fw), args.peers_inprocess)
            if "parts" in r:
                r["floor_s"] = _floor_s(r["parts"], args.peers_input_grad)
            out["floor"][fw] = r
    for name in names:
        spec = dict(
            common,
            peer=name,
            with_linear=with_linear,
            input_grad=args.peers_input_grad,
            paired_floor=with_linear,
        )
        r = _worker(spec, args.peers_inprocess)
        fw = peer_libs.PEERS[name].framework
        floor = out["floor"].get(fw, {}).get("floor_s", 0.0) if with_linear else 0.0
        if "timing" in r:
            r["overhead_s"] = r["timing"]["median_s"] - floor
            r["rss_above_base_mib"] = r["rss_peak_mib"] - r["rss_base_mib"]
        if "paired" in r:  # the overhead measured against the floor in the library's own process
            r["overhead_unpaired_s"] = r["overhead_s"]
            r["overhead_s"] = r["paired"]["overhead_s"]
        out["results"][name] = r
    return out


def _merge(rounds: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One round as it is; several: medians of the rounds' medians (times, floors, overheads),
    the largest RSS, the load guards' counts summed."""
    if len(rounds) == 1:
        return {"results": rounds[0]["results"], "floor": rounds[0]["floor"]}
    results: dict[str, Any] = {}
    for name in names:
        got = [r["results"][name] for r in rounds if "timing" in r["results"][name]]
        if len(got) < len(rounds):  # a failed round: the first failure stands for the library
            results[name] = next(
                r["results"][name] for r in rounds if "timing" not in r["results"][name]
            )
            continue
        medians = [g["timing"]["median_s"] for g in got]
        results[name] = {
            **got[0],
            "timing": {"median_s": statistics.median(medians), "round_medians_s": medians},
            "overhead_s": statistics.median(g["overhead_s"] for g in got),
            "rss_above_base_mib": max(g["rss_above_base_mib"] for g in got),
            "guard": quiet.records_summed(g["guard"] for g in got),
        }
        if all("paired" in g for g in got):
            results[name]["overhead_unpaired_s"] = statistics.median(
                g["overhead_unpaired_s"] for g in got
            )
            results[name]["paired"] = {
                "overhead_s": results[name]["overhead_s"],
                "round_overheads_s": [g["paired"]["overhead_s"] for g in got],
                "guard": quiet.records_summed(g["paired"]["guard"] for g in got),
            }
    floor: dict[str, Any] = {}
    for fw in rounds[0]["floor"]:
        got = [r["floor"][fw] for r in rounds if "parts" in r["floor"].get(fw, {})]
        if len(got) < len(rounds):
            floor[fw] = next(
                r["floor"][fw] for r in rounds if "parts" not in r["floor"].get(fw, {})
            )
            continue
        parts = {
            k: {"median_s": statistics.median(g["parts"][k]["median_s"] for g in got)}
            for k in got[0]["parts"]
        }
        floor[fw] = {
            "parts": parts,
            "floor_s": statistics.median(g["floor_s"] for g in got),
            "round_floor_s": [g["floor_s"] for g in got],
        }
    return {"results": results, "floor": floor}


def verdict(row: dict[str, Any], with_linear: bool) -> dict[str, Any]:
    """Fastest? plif_jax's overhead <= half the best peer's (Linear); >= 2x the best (neuron)."""
    res = {k: v for k, v in row["results"].items() if "timing" in v}
    if "plif_jax" not in res or len(res) < 2:
        return {"note": "plif_jax and at least one peer needed"}
    ours = res.pop("plif_jax")
    best = min(res, key=lambda k: res[k]["timing"]["median_s"])
    out = {
        "best_peer": best,
        "speedup_vs_best_peer": res[best]["timing"]["median_s"] / ours["timing"]["median_s"],
    }
    paired = [
        r["results"][best]["timing"]["median_s"] / r["results"]["plif_jax"]["timing"]["median_s"]
        for r in row.get("rounds", [])
        if all("timing" in r["results"][m] for m in (best, "plif_jax"))
    ]
    if len(paired) > 1:  # several rounds: the median of the paired ratios, and their range
        out["speedup_rounds"] = paired
        out["speedup_vs_best_peer"] = statistics.median(paired)
    out["fastest"] = out["speedup_vs_best_peer"] > 1.0
    if with_linear:
        best_oh = min(res, key=lambda k: res[k]["overhead_s"])
        theirs = res[best_oh]["overhead_s"]
        out["best_overhead_peer"] = best_oh
        # A ratio only means something above a positive overhead (timing noise can make one
        # negative); the target is the inequality itself.
        out["overhead_ratio"] = ours["overhead_s"] / theirs if theirs > 0 else None
        out["target_met"] = out["fastest"] and ours["overhead_s"] <= 0.5 * theirs
    else:
        out["target_met"] = out["speedup_vs_best_peer"] >= 2.0
    return out


def run_peers(args) -> dict[str, Any]:
    """The suite (see the module doc); returns the JSON record."""
    names = [s.strip() for s in args.peers.split(",") if s.strip()]
    bad = sorted(set(names) - set(peer_libs.PEERS))
    if bad:
        from plif_jax.errors import ConfigError

        raise ConfigError(f"unknown peer(s) {bad}; choose from {list(peer_libs.PEERS)}")
    if args.peers_rounds < 1:
        from plif_jax.errors import ConfigError

        raise ConfigError(f"--peers-rounds must be at least 1, got {args.peers_rounds}")
    variants = [s.strip() for s in args.peers_variants.split(",") if s.strip()]
    record: dict[str, Any] = {"libraries": availability(names), "input_grad": args.peers_input_grad}
    names = [m for m in names if not record["libraries"][m]["skipped"]]
    record["check"] = cross_check(names, variants)
    record["rows"] = {}
    for variant in variants:
        rows = []
        for n, T in _grid(args):
            rows.append(_point(args, names, n, T, with_linear=variant == "linear"))
            for line in peers_report.format_row(variant, rows[-1]):
                _log(line)
        record["rows"][variant] = rows
    for line in peers_report.markdown(record):
        _log(line)
    return record
