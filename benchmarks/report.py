"""Markdown tables from a benchmark JSON: ``python -m benchmarks.report results.json``.

Prints the run record and one table per suite (the tables of ``BENCHMARKS.md``), and, given a
second JSON (``--baseline``, e.g. a run with ``--impl reference``), a before/after table.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_record(r: dict[str, Any]) -> str:
    m, v, env = r["machine"], r["versions"], r.get("environment", {})
    load_end = r.get("load_average_end")
    return "\n".join(
        [
            f"- command: `{r['command']}`",
            f"- date (UTC): {r['date_utc']}; total {r.get('total_s', 0):.0f} s",
            f"- machine: {m['cpu_model']}, {m['cpu_count']} cores ({', '.join(m['cpu_flags'])})",
            f"- load average (1/5/15 min) at start: {_fmt_load(m['load_average_1_5_15'])}"
            + (f"; at end: {_fmt_load(load_end)}" if load_end else ""),
            f"- versions: {', '.join(f'{k} {val}' for k, val in v.items() if val)}",
            f"- XLA_FLAGS: `{env.get('XLA_FLAGS') or '(none)'}`; LD_PRELOAD: "
            f"`{env.get('LD_PRELOAD') or '(none)'}`; plif_jax implementation: {r.get('impl')}",
        ]
    )


def _fmt_load(load: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def neuron_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| workload | n | T | B | plif_jax fwd+bwd | SpikingJelly fwd+bwd | ratio | compile |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sj = r.get("sj", {}).get("median_s")
        out.append(
            f"| {r['workload']} | {r['n']} | {r['T']} | {r['batch']} | {_s(r['jax']['median_s'])} "
            f"| {_s(sj)} | {_x(r['ratio'])} | {r['jax']['compile_s']:.1f} s |"
        )
    return "\n".join(out)


def network_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| network | T | B | train step plif_jax | train step SJ | train samples/s plif_jax / SJ "
        "| ratio | inference samples/s plif_jax / SJ | ratio | compile train / infer | XLA peak "
        "train |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tr, inf = r["train_samples_per_s"], r["infer_samples_per_s"]
        sj_train = r.get("sj", {}).get("train", {}).get("median_s")
        mem = (r["jax"].get("train_memory") or {}).get("peak_mib")
        out.append(
            f"| {r['workload']} | {r['T']} | {r['batch']} | {_s(r['jax']['train']['median_s'])} "
            f"| {_s(sj_train)} | {_f(tr['jax'])} / {_f(tr['sj'])} | {_x(r['train_ratio'])} "
            f"| {_f(inf['jax'])} / {_f(inf['sj'])} | {_x(r['infer_ratio'])} "
            f"| {r['jax']['train']['compile_s']:.1f} s / {r['jax']['infer']['compile_s']:.1f} s "
            f"| {_f(mem, 0)} MiB |"
        )
    return "\n".join(out)


def roofline_table(peak: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out = [
        f"Measured peak in this run: matmul {peak['matmul']['gflops_per_s']:.1f} GFLOP/s "
        f"({peak['matmul']['problem']}); conv forward+backward "
        f"{peak['conv_fwd_bwd']['gflops_per_s']:.1f} GFLOP/s ({peak['conv_fwd_bwd']['problem']}).",
        "",
        "| network | train step matmul+conv GFLOP (counted) | XLA cost_analysis GFLOP | "
        "GFLOP/s | % of conv fwd+bwd peak |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        xla = r["jax"].get("xla_flops_train")
        out.append(
            f"| {r['workload']} | {r['jax']['flops_train'] / 1e9:.1f} | "
            f"{'-' if xla is None else f'{xla / 1e9:.1f}'} | {r['train_gflops_per_s']:.1f} | "
            f"{100 * r.get('train_fraction_of_conv_peak', float('nan')):.0f}% |"
        )
    return "\n".join(out)


REMAT_MEMORY_TARGET = 1 / 3  # peak memory with remat <= 1/3 of the default ...
REMAT_TIME_TARGET = 1.4  # ... for at most 1.4x the train step time


def best_remat(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The remat row to judge the target by: among the chunks meeting both bounds the fastest;
    if none does, the one closest to both (smallest worst ratio-to-bound)."""
    rows = [r for r in rows if r.get("remat_chunk") and r.get("peak_ratio") is not None]
    if not rows:
        return None
    met = [r for r in rows if _remat_met(r)]
    if met:
        return min(met, key=lambda r: r["time_ratio"])
    return min(
        rows,
        key=lambda r: max(
            r["peak_ratio"] / REMAT_MEMORY_TARGET, r["time_ratio"] / REMAT_TIME_TARGET
        ),
    )


def _remat_met(r: dict[str, Any]) -> bool:
    return r["peak_ratio"] <= REMAT_MEMORY_TARGET and r["time_ratio"] <= REMAT_TIME_TARGET


def remat_verdict(rows: list[dict[str, Any]]) -> str:
    """``met``/``missed`` with the chunk and its memory and time ratios to the default."""
    best = best_remat(rows)
    if best is None:
        return "missed: no rematerialisation row measured"
    met = [r["remat_chunk"] for r in rows if r.get("remat_chunk") and _remat_met(r)]
    mem_x, time_x = best["peak_ratio"], best["time_ratio"]
    verdict = (
        f"{'met' if _remat_met(best) else 'missed'} with remat_chunk={best['remat_chunk']}: "
        f"peak {_f(best['peak_mib'], 0)} MiB vs {_f(rows[0]['peak_mib'], 0)} MiB = {mem_x:.2f}x "
        f"(bound {REMAT_MEMORY_TARGET:.2f}x), step {_s(best['train_median_s'])} vs "
        f"{_s(rows[0]['train_median_s'])} = {time_x:.2f}x (bound {REMAT_TIME_TARGET:.1f}x)"
    )
    if met:
        return verdict + f"; chunks meeting both: {met}"
    misses = []
    if mem_x > REMAT_MEMORY_TARGET:
        misses.append(f"memory by a factor {mem_x / REMAT_MEMORY_TARGET:.2f}")
    if time_x > REMAT_TIME_TARGET:
        misses.append(f"time by a factor {time_x / REMAT_TIME_TARGET:.2f}")
    return verdict + f"; over the bound in {' and '.join(misses)}"


def memory_tables(mem: dict[str, Any]) -> str:
    out = [
        "| variant | network | T | B | train step | XLA peak | XLA temp | peak / default | "
        "time / default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in mem["remat"]:
        out.append(
            f"| {r['variant']} | {r['network']} | {r['T']} | {r['batch']} | "
            f"{_s(r['train_median_s'])} | {_f(r['peak_mib'], 0)} MiB | {_f(r['temp_mib'], 0)} MiB "
            f"| {_x(r.get('peak_ratio'))} | {_x(r.get('time_ratio'))} |"
        )
    probe = mem.get("remat_probe")
    if probe:
        out += [
            "",
            f"`jax.checkpoint` probe ({probe['layers']}-layer dense chain, "
            f"{probe['activation_mib']:.0f} MiB per activation, gradient compiled only): XLA temp "
            f"{_f(probe['temp_mib_plain'], 0)} MiB plain, {_f(probe['temp_mib_remat'], 0)} MiB "
            "with every layer under `jax.checkpoint`.",
        ]
    out += [
        "",
        "| network | T | B | train step | XLA peak | XLA temp |",
        "|---|---|---|---|---|---|",
    ]
    for r in mem["growth"]:
        out.append(
            f"| {r['network']} | {r['T']} | {r['batch']} | {_s(r['train_median_s'])} | "
            f"{_f(r['peak_mib'], 0)} MiB | {_f(r['temp_mib'], 0)} MiB |"
        )
    return "\n".join(out)


def variants_tables(var: dict[str, Any]) -> str:
    out = ["| PLIF fwd+bwd: n | T | B | unroll | time |", "|---|---|---|---|---|"]
    for r in var["unroll"]:
        out.append(f"| {r['n']} | {r['T']} | {r['batch']} | {r['unroll']} | {_s(r['median_s'])} |")
    out += [
        "",
        "| network | T | B | compute dtype | train step | inference |",
        "|---|---|---|---|---|---|",
    ]
    for r in var["dtype"]:
        out.append(
            f"| {r['network']} | {r['T']} | {r['batch']} | {r['dtype']} | "
            f"{_s(r['train_median_s'])} | {_s(r['infer_median_s'])} |"
        )
    return "\n".join(out)


def before_after_table(after: dict[str, Any], before: dict[str, Any]) -> str:
    out = [
        f"| network | T | B | train step before ({before.get('impl')}) | after "
        f"({after.get('impl')}) | speed-up | inference before | after | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["workload"]: r for r in before.get("networks", [])}
    for r in after.get("networks", []):
        b = base.get(r["workload"])
        if b is None or (b["T"], b["batch"]) != (r["T"], r["batch"]):
            continue
        tb, ta = b["jax"]["train"]["median_s"], r["jax"]["train"]["median_s"]
        ib, ia = b["jax"]["infer"]["median_s"], r["jax"]["infer"]["median_s"]
        out.append(
            f"| {r['workload']} | {r['T']} | {r['batch']} | {_s(tb)} | {_s(ta)} | {_x(tb / ta)} "
            f"| {_s(ib)} | {_s(ia)} | {_x(ib / ia)} |"
        )
    return "\n".join(out)


def same_run_before_after_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| network | T | B | train step: reference impl | fast impl | speed-up | inference: "
        "reference | fast | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref, fast = r["jax_reference"], r["jax"]
        out.append(
            f"| {r['workload']} | {r['T']} | {r['batch']} | {_s(ref['train']['median_s'])} | "
            f"{_s(fast['train']['median_s'])} | {_x(r['speedup_vs_reference']['train'])} | "
            f"{_s(ref['infer']['median_s'])} | {_s(fast['infer']['median_s'])} | "
            f"{_x(r['speedup_vs_reference']['infer'])} |"
        )
    return "\n".join(out)


def targets_section(r: dict[str, Any]) -> str:
    """Each speed target of the project with the figure measured in this run: met or missed."""
    out = []
    nets = r.get("networks", [])
    if nets and all(n.get("train_ratio") for n in nets):
        met = [n for n in nets if n["train_ratio"] >= 2.0]
        worst = min(nets, key=lambda n: n["train_ratio"])
        out.append(
            f"- **Every paper network's train step >= 2x SpikingJelly's samples/s**: "
            f"{'met' if len(met) == len(nets) else 'missed'} ({len(met)}/{len(nets)} networks). "
            + "; ".join(f"{n['workload']} {n['train_ratio']:.2f}x" for n in nets)
            + (
                f". Worst: {worst['workload']}, a factor {2.0 / worst['train_ratio']:.2f} below 2x."
                if len(met) < len(nets)
                else "."
            )
        )
    rows = r.get("neuron", [])
    if rows and all(x.get("ratio") for x in rows):
        met = [x for x in rows if x["ratio"] >= 3.0]
        lo = min(rows, key=lambda x: x["ratio"])
        out.append(
            f"- **Neuron layer >= 3x SpikingJelly forward+backward**: "
            f"{'met' if len(met) == len(rows) else 'missed'} in {len(rows) - len(met)} of "
            f"{len(rows)} rows; range {lo['ratio']:.2f}x ({lo['workload']}, n={lo['n']}, "
            f"T={lo['T']}) to {max(x['ratio'] for x in rows):.2f}x."
        )
    if nets and "roofline" in r:
        met = [n for n in nets if n.get("train_fraction_of_conv_peak", 0) >= 0.6]
        out.append(
            f"- **Conv networks' train step >= 60% of the measured conv fwd+bwd FLOP/s** "
            f"({r['roofline']['conv_fwd_bwd']['gflops_per_s']:.0f} GFLOP/s): "
            f"{'met' if len(met) == len(nets) else 'missed'} ({len(met)}/{len(nets)}). "
            + "; ".join(
                f"{n['workload']} {100 * n['train_fraction_of_conv_peak']:.0f}%" for n in nets
            )
            + "."
        )
    mem = r.get("memory")
    if mem:
        d = mem["remat"][0]
        out.append(
            f"- **Remat: peak memory <= 1/3 of default for <= 1.4x the time** ({d['network']}, "
            f"T={d['T']}, B={d['batch']}): {remat_verdict(mem['remat'])}."
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report")
    p.add_argument("results", help="JSON written by python -m benchmarks")
    p.add_argument("--baseline", help="a second JSON (e.g. --impl reference) for before/after")
    args = p.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        r = json.load(f)
    print(run_record(r) + "\n")
    targets = targets_section(r)
    if targets:
        print(targets + "\n")
    if r.get("sj_skipped"):
        print(f"SpikingJelly side skipped: {r['sj_skipped']}\n")
    if "neuron" in r:
        print(neuron_table(r["neuron"]) + "\n")
    if "networks" in r:
        print(network_table(r["networks"]) + "\n")
    both = [row for row in r.get("networks", []) if "jax_reference" in row]
    if both:
        print(same_run_before_after_table(both) + "\n")
    if "roofline" in r:
        print(roofline_table(r["roofline"], r.get("networks", [])) + "\n")
    if "memory" in r:
        print(memory_tables(r["memory"]) + "\n")
    if "variants" in r:
        print(variants_tables(r["variants"]) + "\n")
    if args.baseline:
        with open(args.baseline, encoding="utf-8") as f:
            before = json.load(f)
        print(run_record(before) + "\n")
        print(before_after_table(r, before) + "\n")


if __name__ == "__main__":
    main()
