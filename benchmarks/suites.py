"""The benchmark's suites (``python -m benchmarks --suite ...``): what each one times and how its
rows are formatted. :mod:`benchmarks.cli` parses the command line and runs them."""

from __future__ import annotations

from typing import Any

# (T, batch) per network. The paper trains every net at batch 16; on this kind of 2-core CPU a
# SpikingJelly step of the 128x128 DVS nets takes seconds even at batch 2 (BENCHMARKS.md), so
# they run at batch 2 here.
CPU_NETWORK_SIZES = {
    "mnist": (8, 16),
    "fashion_mnist": (8, 16),
    "cifar10": (8, 8),
    "nmnist": (10, 16),
    "cifar10dvs": (20, 2),
    "dvsgesture": (20, 2),
}
GPU_NETWORK_SIZES = {
    "mnist": (8, 16),
    "fashion_mnist": (8, 16),
    "cifar10": (8, 16),
    "nmnist": (10, 16),
    "cifar10dvs": (20, 16),
    "dvsgesture": (20, 16),
}
# Time steps per rematerialised chunk in the memory suite (those dividing its T are run).
REMAT_CHUNKS = (1, 2, 4, 5, 10)
# Reduced-width nets for --quick (a smoke run of every code path in seconds).
QUICK_OPTIONS = {
    "mnist": dict(channels=4, hidden=16),
    "nmnist": dict(channels=4, input_size=16),
}


def _network_names(args) -> list[str]:
    from plif_jax import models

    if args.networks is None:
        return list(QUICK_OPTIONS) if args.quick else list(models.NETWORKS)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    bad = sorted(set(names) - set(models.NETWORKS))
    if bad:
        from plif_jax.errors import ConfigError

        raise ConfigError(f"unknown network(s) {bad}; choose from {list(models.NETWORKS)}")
    return names


def _sizes(args, name: str) -> tuple[int, int, dict[str, Any]]:
    if args.quick:
        return (2, 2, QUICK_OPTIONS.get(name, dict(channels=4, hidden=16)))
    table = CPU_NETWORK_SIZES if args.device == "cpu" else GPU_NETWORK_SIZES
    return (*table[name], {})


def _ratio(jax_s: float | None, sj_s: float | None) -> float | None:
    """plif_jax throughput / SpikingJelly throughput (same work): SJ time / plif_jax time."""
    if not jax_s or not sj_s:
        return None
    return sj_s / jax_s


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------
def run_neuron(args, sj_note: str | None) -> list[dict[str, Any]]:
    from benchmarks import timing, workloads

    repeats = args.repeats or 5
    batch = 2 if args.quick else 16
    if args.quick:
        grid, n_in = [(64, 4)], 32
    elif args.device == "cpu":
        # The full grid (n up to 16384, T up to 500) needs minutes per point on 2 cores.
        grid, n_in = [(n, t) for n in (1024, 4096) for t in (8, 32, 128)], 1024
    else:
        grid, n_in = [(n, t) for n in (1024, 4096, 16384) for t in (8, 32, 128, 500)], 1024
    rows = []
    for with_linear in (False, True):
        for n, T in grid:
            kind = f"Linear({n_in}->n)+PLIF" if with_linear else "PLIF"
            row: dict[str, Any] = dict(
                suite="neuron",
                workload=kind,
                n=n,
                n_in=n_in if with_linear else None,
                T=T,
                batch=batch,
            )
            row["jax"] = workloads.jax_neuron_layer(
                T, batch, n_in, n, with_linear=with_linear, repeats=repeats
            )
            if sj_note is None:
                row["sj"] = workloads.sj_neuron_layer(
                    T, batch, n_in, n, with_linear=with_linear, repeats=repeats
                )
            row["ratio"] = _ratio(row["jax"]["median_s"], row.get("sj", {}).get("median_s"))
            row["rss_peak_mib"] = timing.peak_rss_mib()
            rows.append(row)
            _log(_format_row(row))
    return rows


def _jax_network_cached(cache: dict, name: str, T: int, batch: int, options: dict, **kw):
    """``workloads.jax_network``, reusing a train measurement already taken in this run."""
    from benchmarks import workloads

    key = (name, T, batch, tuple(sorted(options.items())))
    if key in cache and (not kw.get("inference", True) or "infer" in cache[key]):
        return cache[key]
    cache[key] = workloads.jax_network(name, T, batch, options=options, **kw)
    return cache[key]


def run_networks(args, sj_note: str | None, cache: dict) -> list[dict[str, Any]]:
    from benchmarks import timing, workloads

    repeats = args.repeats or 3
    rows = []
    for name in _network_names(args):
        T, batch, options = _sizes(args, name)
        row: dict[str, Any] = dict(suite="networks", workload=name, T=T, batch=batch)
        if args.impl == "both":  # before/after of the speed work, measured back to back
            with workloads.reference_implementation():
                row["jax_reference"] = workloads.jax_network(
                    name, T, batch, repeats=repeats, options=options
                )
        row["jax"] = _jax_network_cached(cache, name, T, batch, options, repeats=repeats)
        if "jax_reference" in row:
            row["speedup_vs_reference"] = {
                phase: row["jax_reference"][phase]["median_s"] / row["jax"][phase]["median_s"]
                for phase in ("train", "infer")
            }
            _log(
                f"[networks] {name}: fast vs reference implementation: train "
                f"{_fmt_s(row['jax_reference']['train']['median_s'])} -> "
                f"{_fmt_s(row['jax']['train']['median_s'])} "
                f"({row['speedup_vs_reference']['train']:.2f}x), infer "
                f"{row['speedup_vs_reference']['infer']:.2f}x"
            )
        if sj_note is None:
            # SpikingJelly steps take seconds on CPU: fewer repeats keep the run affordable.
            row["sj"] = workloads.sj_network(
                name, T, batch, repeats=max(1, min(repeats, 2)), options=options
            )
        for phase in ("train", "infer"):
            jax_s = row["jax"][phase]["median_s"]
            sj_s = row.get("sj", {}).get(phase, {}).get("median_s")
            row[f"{phase}_samples_per_s"] = {
                "jax": batch / jax_s,
                "sj": None if sj_s is None else batch / sj_s,
            }
            row[f"{phase}_ratio"] = _ratio(jax_s, sj_s)
        row["train_gflops_per_s"] = (
            row["jax"]["flops_train"] / row["jax"]["train"]["median_s"] / 1e9
        )
        row["rss_peak_mib"] = timing.peak_rss_mib()
        rows.append(row)
        _log(_format_row(row))
    return rows


def run_roofline(args, network_rows: list[dict[str, Any]]) -> dict[str, Any]:
    from benchmarks import roofline

    peak = roofline.measure_peak(quick=args.quick, repeats=args.repeats or 5)
    _log(
        f"[roofline] machine peak now: matmul {peak['matmul']['gflops_per_s']:.1f} GFLOP/s, "
        f"conv fwd+bwd {peak['conv_fwd_bwd']['gflops_per_s']:.1f} GFLOP/s"
    )
    conv_peak = peak["conv_fwd_bwd"]["gflops_per_s"]
    for row in network_rows:
        row["train_fraction_of_conv_peak"] = row["train_gflops_per_s"] / conv_peak
        _log(
            f"[roofline] {row['workload']:>13}: {row['train_gflops_per_s']:.1f} GFLOP/s "
            f"(matmul+conv) = {100 * row['train_fraction_of_conv_peak']:.0f}% of conv peak"
        )
    return peak


def run_memory(args, cache: dict) -> dict[str, Any]:
    from benchmarks import report, workloads

    repeats = args.repeats or 3
    out: dict[str, Any] = {}
    # Rematerialisation at T=20 on DVS128 Gesture (the paper's T): the default step, then the
    # time-chunked one (models' remat_chunk) at each chunk length dividing T.
    if args.quick:
        name, T, batch, opts = "nmnist", 2, 2, dict(QUICK_OPTIONS["nmnist"])
    else:
        name, T, batch, opts = "dvsgesture", 20, 2 if args.device == "cpu" else 16, {}
    remat_rows = []
    for chunk in (None, *[c for c in REMAT_CHUNKS if T % c == 0]):
        extra = {} if chunk is None else {"remat_chunk": chunk}
        label = "default" if chunk is None else f"remat_chunk={chunk}"
        r = _jax_network_cached(
            cache, name, T, batch, {**opts, **extra}, repeats=repeats, inference=False
        )
        row = dict(variant=label, remat_chunk=chunk, **_memory_row(r, name, T, batch))
        if remat_rows:  # relative to the default (the first row)
            base = remat_rows[0]
            row["peak_ratio"] = _safe_ratio(row["peak_mib"], base["peak_mib"])
            row["time_ratio"] = row["train_median_s"] / base["train_median_s"]
        remat_rows.append(row)
        _log(f"[memory] {name} T={T} B={batch} {label}: {_fmt_mem(row)}")
    out["remat"] = remat_rows
    _log(f"[memory] remat target: {report.remat_verdict(remat_rows)}")
    out["remat_probe"] = workloads.remat_probe()
    probe = out["remat_probe"]
    _log(
        f"[memory] jax.checkpoint probe ({probe['layers']}-layer chain, "
        f"{probe['activation_mib']:.0f} MiB activations): XLA temp {probe['temp_mib_plain']:.0f} "
        f"MiB plain, {probe['temp_mib_remat']:.0f} MiB with jax.checkpoint"
    )

    # Growth with T and batch (N-MNIST: cheap enough for a sweep on CPU).
    if args.quick:
        name, opts, t_grid, b_grid, t0, b0 = (
            "nmnist",
            dict(QUICK_OPTIONS["nmnist"]),
            (2, 4),
            (2, 4),
            2,
            2,
        )
    else:
        name, opts, t_grid, b_grid, t0, b0 = "nmnist", {}, (5, 10, 20), (4, 8, 16), 10, 4
    growth = []
    for T, batch in [(t, b0) for t in t_grid] + [(t0, b) for b in b_grid if b != b0]:
        r = _jax_network_cached(cache, name, T, batch, opts, repeats=repeats, inference=False)
        growth.append(_memory_row(r, name, T, batch))
        _log(f"[memory] growth {name} T={T} B={batch}: {_fmt_mem(growth[-1])}")
    out["growth"] = growth
    return out


def _safe_ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def run_variants(args) -> dict[str, Any]:
    """Speed knobs that are not the default: the neuron scan's unroll, bf16 compute."""
    from benchmarks import workloads

    repeats = args.repeats or 5
    n, T, batch = (64, 4, 2) if args.quick else (4096, 32, 16)
    unroll = []
    for u in (1, 2, 4, 8):
        t = workloads.jax_neuron_layer(T, batch, n, n, with_linear=False, repeats=repeats, unroll=u)
        unroll.append(dict(unroll=u, n=n, T=T, batch=batch, median_s=t["median_s"]))
        _log(f"[variants] PLIF fwd+bwd n={n} T={T} B={batch} unroll={u}: {_fmt_s(t['median_s'])}")
    dtypes = []
    name = "nmnist" if args.quick else "mnist"
    T_net, b_net, opts = _sizes(args, name)
    for dtype in ("float32", "bfloat16"):
        r = workloads.jax_network(
            name, T_net, b_net, repeats=args.repeats or 3, options={**opts, "dtype": dtype}
        )
        dtypes.append(
            dict(
                dtype=dtype,
                network=name,
                T=T_net,
                batch=b_net,
                train_median_s=r["train"]["median_s"],
                infer_median_s=r["infer"]["median_s"],
                peak_mib=(r["train_memory"] or {}).get("peak_mib"),
            )
        )
        _log(
            f"[variants] {name} compute dtype {dtype}: train {_fmt_s(r['train']['median_s'])}, "
            f"infer {_fmt_s(r['infer']['median_s'])}"
        )
    return {"unroll": unroll, "dtype": dtypes}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def run_seeds(args) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from benchmarks import seeds

    ks = [int(k) for k in args.seeds_ks.split(",") if k.strip()]
    layouts = [lay.strip() for lay in args.seeds_layouts.split(",") if lay.strip()]
    rows = []
    for net in [n.strip() for n in args.seeds_nets.split(",") if n.strip()]:
        row = seeds.seeds_workload(
            net, ks=ks, layouts=layouts, repeats=args.repeats or 5, quick=args.quick
        )
        for line in seeds.format_rows(row):
            _log(line)
        rows.append(row)
    # Why vmap loses: one convolution of the quick-start net, k calls against one vmapped call.
    probes = []
    for k in [k for k in ks if k > 1]:
        probes.append(seeds.conv_probe(k=k, repeats=args.repeats or 5, quick=args.quick))
        _log(seeds.format_probe(probes[-1]))
    return rows, probes


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else (f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s")


def _memory_row(r: dict[str, Any], name: str, T: int, batch: int) -> dict[str, Any]:
    """A memory-table row: the train step's median time and XLA memory plan."""
    memory = r["train_memory"] or {}
    return dict(
        network=name,
        T=T,
        batch=batch,
        train_median_s=r["train"]["median_s"],
        peak_mib=memory.get("peak_mib"),
        temp_mib=memory.get("temp_mib"),
    )


def _fmt_mem(r: dict[str, Any]) -> str:
    peak = r.get("peak_mib")
    mem = "?" if peak is None else f"{peak:.0f} MiB"
    return f"step {_fmt_s(r['train_median_s'])}, XLA peak {mem}"


def _format_row(row: dict[str, Any]) -> str:
    ratio = lambda r: "-" if r is None else f"{r:.2f}x"
    if row["suite"] == "neuron":
        sj = row.get("sj", {}).get("median_s")
        return (
            f"[neuron] {row['workload']:<22} n={row['n']:<6} T={row['T']:<4} B={row['batch']:<3}"
            f" plif_jax {_fmt_s(row['jax']['median_s']):>9} (compile {row['jax']['compile_s']:.1f}"
            f" s)  SJ {_fmt_s(sj):>9}  ratio {ratio(row['ratio'])}"
        )
    tr, inf = row["train_samples_per_s"], row["infer_samples_per_s"]
    f = lambda v: "-" if v is None else f"{v:.1f}"
    return (
        f"[networks] {row['workload']:<13} T={row['T']:<3} B={row['batch']:<3} train samples/s "
        f"plif_jax {f(tr['jax'])} SJ {f(tr['sj'])} ratio {ratio(row['train_ratio'])} | infer "
        f"plif_jax {f(inf['jax'])} SJ {f(inf['sj'])} ratio {ratio(row['infer_ratio'])} | "
        f"compile {row['jax']['train']['compile_s']:.1f} s"
    )
