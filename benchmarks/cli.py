r"""Speed and memory of plif_jax, side by side with SpikingJelly 2.0 (torch CPU, multi-step).

Usage::

    python -m benchmarks [--suite neuron,networks,roofline,memory] [--device cpu]
        [--quick] [--out results.json] [--networks mnist,dvsgesture] [--repeats 3] [--no-sj]
        [--impl fast|reference] [--xla-flags FLAGS]
        [--allocator glibc-tuned|system|tcmalloc|jemalloc]

Suites:

* ``neuron``: PLIF alone and Linear(n_in -> n) + PLIF, forward + backward, batch 16, over
  ``n`` neurons and ``T`` steps (capped on CPU; ``--device gpu`` runs the full grid).
* ``networks``: each paper network's full train step (``plif_jax.training.run.train_step``: the
paper's
  MSE-on-firing-rate loss, Adam, state donated) and inference, samples/s.
* ``roofline``: the machine's peak measured in the same run (f32 matmul, conv forward+backward)
  and each train step's matmul+conv FLOP/s as a fraction of it.
* ``memory``: XLA's compiled memory plan and process RSS; DVS128 Gesture at T=20 by default
  and with rematerialisation (``remat_chunk`` in 1, 2, 4, 5, 10: peak, temp, step time, ratios
  to the default); a ``jax.checkpoint`` probe; growth with T and batch (N-MNIST).
* ``variants`` (not in the default set): the neuron scan's unroll factor; bf16 compute.
* ``seeds`` (not in the default set): k = 1, 2, 4, 8 members in one compiled train step
  (``--config.num_seeds``; both layouts, ``vmap`` and ``loop``) against k sequential runs, as
  seed-samples/s, on the quick-start network (``--seeds-nets quickstart,nmnist`` adds N-MNIST at
  paper width, batch 4); and for each k > 1 a conv probe: one quick-start convolution's forward
  + backward as k calls against one vmapped (feature-grouped) call. One command::

    python -m benchmarks --suite seeds \
        --xla-flags=--xla_cpu_experimental_ynn_fusion_type=dot,reduce

* ``peers`` (not in the default set): the Open Neuromorphic Linear + LIF workload in plif_jax,
  Spyx, SpikingJelly, Norse and snnTorch (whichever are installed) and the matmul floor
  (:mod:`benchmarks.peers`; install recipe: ``benchmarks/install_peers.sh``).

Timing: compilation is excluded and reported separately (``compile_s``), one warm-up call, then
the median of ``--repeats`` calls, each ending in ``block_until_ready``; torch uses every core
and ``no_grad`` for inference. The ratio column is plif_jax throughput / SpikingJelly throughput
(> 1: plif_jax is faster). The JSON records the date, machine, load, versions and this command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

from benchmarks import peers  # no JAX import at module level (flags are set before JAX starts)
from benchmarks.suites import (
    _log,
    run_memory,
    run_networks,
    run_neuron,
    run_roofline,
    run_seeds,
    run_variants,
)

SUITES = ("neuron", "networks", "roofline", "memory", "variants", "seeds", "peers")
DEFAULT_SUITES = ("neuron", "networks", "roofline", "memory")
ALLOCATORS = {
    "glibc-tuned": None,  # what experiments.train's steps run with (plif_jax.runtime.allocator)
    "system": None,
    "tcmalloc": "libtcmalloc_minimal.so.4",  # Debian: apt-get install libtcmalloc-minimal4
    "jemalloc": "libjemalloc.so.2",  # Debian: apt-get install libjemalloc2
}
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--suite", default=",".join(DEFAULT_SUITES), help=f"comma list of {SUITES}")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "tpu"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not figures")
    p.add_argument("--out", default="benchmark_results.json", help="JSON output path")
    p.add_argument("--networks", default=None, help="comma list of networks (default: all six)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    p.add_argument("--no-sj", action="store_true", help="skip the SpikingJelly side")
    p.add_argument("--seeds-ks", default="1,2,4,8", help="seeds suite: member counts k")
    p.add_argument("--seeds-layouts", default="vmap,loop", help="seeds suite: vmap and/or loop")
    p.add_argument("--seeds-nets", default="quickstart", help="seeds suite: quickstart,nmnist")
    p.add_argument(
        "--impl",
        default="fast",
        choices=("fast", "reference", "both"),
        help="plif_jax as it is (fast), with its pre-speed-work neuron scan and max pool "
        "(reference), or both side by side in the networks suite (before/after, same run)",
    )
    p.add_argument(
        "--xla-flags",
        default="",
        help="added to XLA_FLAGS before jax starts, e.g. "
        "'--xla_cpu_experimental_ynn_fusion_type=dot,reduce' (faster CPU convolutions; "
        "experiments.train sets it by default on CPU, so pass it to time what training runs)",
    )
    p.add_argument(
        "--allocator",
        default="glibc-tuned",
        choices=tuple(ALLOCATORS),
        help="malloc for the whole process (both frameworks). glibc-tuned (default): glibc "
        "keeps freed memory for reuse, as experiments.train does while its steps run "
        "(plif_jax.runtime.allocator); system: glibc's defaults, which unmap every large buffer on "
        "free (page faults each step); tcmalloc, jemalloc: the process re-executes itself "
        "with LD_PRELOAD",
    )
    peers.add_arguments(p)
    args = p.parse_args(argv)
    args.suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = sorted(set(args.suites) - set(SUITES))
    if bad or not args.suites:
        p.error(f"unknown suite(s) {bad}; choose from {','.join(SUITES)}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def _preload_allocator(name: str, argv: list[str]) -> None:
    """Re-executes this command with ``LD_PRELOAD`` = the allocator (once; no-op if loaded)."""
    lib = ALLOCATORS[name]
    if lib is None or lib in os.environ.get("LD_PRELOAD", ""):
        return
    path = next(
        (os.path.join(d, lib) for d in _LIB_DIRS if os.path.exists(os.path.join(d, lib))), None
    )
    if path is None:
        from plif_jax.errors import UserError

        raise UserError(
            f"--allocator {name}: {lib} not found in {_LIB_DIRS}; install it (Debian: "
            f"{ALLOCATORS_APT[name]}) or use --allocator glibc-tuned"
        )
    env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [path, os.environ.get("LD_PRELOAD")])))
    _log(f"[run] re-executing with LD_PRELOAD={env['LD_PRELOAD']}")
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *argv], env)


ALLOCATORS_APT = {
    "tcmalloc": "apt-get install libtcmalloc-minimal4",
    "jemalloc": "apt-get install libjemalloc2",
}


@contextlib.contextmanager
def _fewer_xla_optimisations():
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def _jax_backend_initialised() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001 - private API: unknown means "not known to be"
        return False


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    _preload_allocator(args.allocator, argv)
    from plif_jax.runtime import allocator

    if args.allocator == "glibc-tuned":
        allocator.keep_freed_memory()
    # The platform and XLA flags must be set before jax initialises its backends (they are
    # ignored if this process already used jax: the JSON records what was in effect).
    os.environ["JAX_PLATFORMS"] = args.device
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = " ".join(
            filter(None, [os.environ.get("XLA_FLAGS"), args.xla_flags])
        )

    from benchmarks import timing, workloads

    t_start = time.perf_counter()
    backend_before = _jax_backend_initialised()  # before machine_record starts the backend
    result: dict[str, Any] = timing.machine_record(argv)
    result["quick"] = bool(args.quick)
    result["impl"] = args.impl
    result["environment"] = {
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
        "malloc": allocator.in_effect(),
        "jax_backend_already_initialised": backend_before,
    }
    if args.no_sj:
        sj_note = "--no-sj given"
    elif args.device != "cpu":
        # The SpikingJelly side is torch on CPU; beside an accelerator it would not be a pair.
        sj_note = f"the SpikingJelly side runs torch on CPU only, not for --device {args.device}"
    else:
        sj_note = workloads.torch_available()
    if sj_note:
        _log(f"[note] SpikingJelly side skipped: {sj_note}")
    result["sj_skipped"] = sj_note
    _log(
        f"[run] {result['command']} | {result['machine']['cpu_model']}, "
        f"{result['machine']['cpu_count']} cores, load {result['machine']['load_average_1_5_15']}"
    )

    impl = workloads.reference_implementation() if args.impl == "reference" else None
    # --quick is a smoke run: its timings are not figures, so compile with fewer optimisations.
    quick = _fewer_xla_optimisations() if args.quick else contextlib.nullcontext()
    # glibc-tuned: every step's buffers reused, as in the train CLI's steps
    # (plif_jax.runtime.allocator).
    malloc = allocator.reusing_freed_memory()
    with impl or contextlib.nullcontext(), quick, malloc:
        if "neuron" in args.suites:
            result["neuron"] = run_neuron(args, sj_note)
        network_rows: list[dict[str, Any]] = []
        cache: dict = {}
        if "networks" in args.suites or "roofline" in args.suites:
            network_rows = run_networks(args, sj_note, cache)
            result["networks"] = network_rows
        if "roofline" in args.suites:
            result["roofline"] = run_roofline(args, network_rows)
        if "memory" in args.suites:
            result["memory"] = run_memory(args, cache)
        if "variants" in args.suites:
            result["variants"] = run_variants(args)
        if "seeds" in args.suites:
            result["seeds"], result["seeds_conv_probe"] = run_seeds(args)
        if "peers" in args.suites:
            result["peers"] = peers.run_peers(args)
    result["rss_peak_mib"] = timing.peak_rss_mib()
    result["total_s"] = time.perf_counter() - t_start
    result["load_average_end"] = list(os.getloadavg())
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    _log(f"[done] {result['total_s']:.0f} s; wrote {args.out}")
    return result


def run() -> None:
    """``python -m benchmarks``: a user's mistake is one ``error: ...`` line, exit status 2."""
    from plif_jax import cli

    cli.run_plain(main)


if __name__ == "__main__":
    run()
