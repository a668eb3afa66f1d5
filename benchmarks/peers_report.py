"""The peers suite's printed lines and markdown tables (the record: :mod:`benchmarks.peers`)."""

from __future__ import annotations

from typing import Any

from benchmarks import quiet


def _speedup(v: dict[str, Any]) -> str:
    """``2.10x``, or with several rounds ``2.10x (1.82-2.43)``: the paired ratios' range."""
    text = f"{v['speedup_vs_best_peer']:.2f}x"
    if "speedup_rounds" in v:
        text += f" ({min(v['speedup_rounds']):.2f}-{max(v['speedup_rounds']):.2f})"
    return text


def _fmt(s: float | None) -> str:
    return "-" if s is None else (f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s")


def format_row(variant: str, row: dict[str, Any]) -> list[str]:
    lines = []
    for fw, f in row["floor"].items():
        if "parts" in f:
            parts = ", ".join(f"{k} {_fmt(v['median_s'])}" for k, v in f["parts"].items())
            lines.append(f"[peers] {variant} n={row['n']} T={row['T']} floor {fw}: {parts}")
    for name, r in row["results"].items():
        if "timing" not in r:
            lines.append(f"[peers] {variant} n={row['n']} T={row['T']} {name}: {r.get('error')}")
            continue
        mem = r.get("xla_memory") or {}
        xla = f", XLA plan {mem['peak_mib']:.0f} MiB" if mem else ""
        g = r["guard"]
        unpaired = ""
        if "paired" in r:
            g = quiet.records_summed([g, r["paired"]["guard"]])
            unpaired = f" (two processes: {_fmt(r['overhead_unpaired_s'])})"
        lines.append(
            f"[peers] {variant} n={row['n']} T={row['T']} {name:<12} "
            f"{_fmt(r['timing']['median_s']):>9}"
            f" overhead {_fmt(r['overhead_s']):>9}{unpaired}"
            f" | RSS +{r['rss_above_base_mib']:.0f} MiB{xla}"
            f" | redone {g['redone']}, loaded {g['accepted_loaded']}"
        )
    v = row["verdict"]
    if "best_peer" in v:
        oh = ""
        if v.get("overhead_ratio") is not None:
            oh = f", overhead ratio {v['overhead_ratio']:.2f} vs {v['best_overhead_peer']}"
        lines.append(
            f"[peers] {variant} n={row['n']} T={row['T']} plif_jax {_speedup(v)}"
            f" the best peer ({v['best_peer']}){oh}; "
            f"target {'met' if v['target_met'] else 'NOT met'}"
        )
    return lines


def _cell(r: dict[str, Any], with_linear: bool) -> str:
    if "timing" not in r:
        return "failed"
    cell = _fmt(r["timing"]["median_s"])
    return f"{cell} ({_fmt(r['overhead_s'])})" if with_linear else cell


def markdown(record: dict[str, Any]) -> list[str]:
    """The suite's tables (fwd+bwd medians; Linear rows: overhead above the framework's floor
    in parentheses), then memory: XLA's plan (JAX) / peak RSS above the process baseline."""
    lines = []
    for variant, rows in record["rows"].items():
        with_linear = variant == "linear"
        names = list(rows[0]["results"]) if rows else []
        floors = ["XLA floor", "torch floor"] if with_linear else []
        head = "time (overhead above the floor, in-process)" if with_linear else "time"
        lines += ["", f"{variant}: {head}"]
        lines.append("| n, T | " + " | ".join(names + floors) + " | plif_jax vs best | target |")
        lines.append("|---" * (len(names) + len(floors) + 3) + "|")
        for row in rows:
            cells = [_cell(row["results"][m], with_linear) for m in names]
            for fw in ("jax", "torch")[: len(floors)]:
                cells.append(_fmt(row["floor"].get(fw, {}).get("floor_s")))
            v = row["verdict"]
            speed = _speedup(v) if "best_peer" in v else "-"
            met = "met" if v.get("target_met") else "not met"
            lines.append(
                f"| {row['n']}, {row['T']} | " + " | ".join(cells) + f" | {speed} | {met} |"
            )
        lines += ["", f"{variant}: memory, MiB (XLA's plan / peak RSS above the process baseline)"]
        lines.append("| n, T | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for row in rows:
            mems = " | ".join(_mem(row["results"][m]) for m in names)
            lines.append(f"| {row['n']}, {row['T']} | {mems} |")
    return lines


def _mem(r: dict[str, Any]) -> str:
    if "timing" not in r:
        return "-"
    plan = (r.get("xla_memory") or {}).get("peak_mib")
    rss = f"RSS +{r['rss_above_base_mib']:.0f}"
    return f"XLA {plan:.0f} / {rss}" if plan is not None else rss
