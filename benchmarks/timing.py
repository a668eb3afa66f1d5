"""Timing done right: compile excluded, warm-up, ``block_until_ready``, median of repeats.

Also the run's record: date, machine, library versions, process memory.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax


def time_jax(
    fn: Callable[..., Any],
    args: tuple,
    *,
    warmup: int = 1,
    repeats: int = 5,
    rebind: Callable[[Any, tuple], tuple] | None = None,
) -> tuple[dict[str, float], Any, Any]:
    """Times a jitted function: compilation apart from the steady state.

    The function is traced and compiled ahead of time (``fn.trace(*args).lower().compile()``,
    timed as ``compile_s``) and the compiled executable is what runs, so no call includes tracing or
    compilation. Every call ends with ``jax.block_until_ready``.

    Args:
      fn: a ``jax.jit``-ed function.
      args: its arguments.
      warmup: untimed calls after the first one.
      repeats: timed calls; the median is the figure.
      rebind: ``rebind(out, args) -> args`` for a stateful step whose output feeds the next call
        (needed when ``fn`` donates its inputs, which are invalid after the call).

    Returns:
      ``({'compile_s', 'first_call_s', 'median_s', 'min_s', 'max_s', 'repeats'}, compiled,
      jaxpr)``: the compiled executable gives ``memory_analysis()`` and ``cost_analysis()``; the
      traced ``ClosedJaxpr`` serves FLOP counting without a second trace.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t0

    def call(a):
        out = compiled(*a)
        jax.block_until_ready(out)
        return rebind(out, a) if rebind is not None else a

    t0 = time.perf_counter()
    args = call(args)
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        args = call(args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        args = call(args)
        times.append(time.perf_counter() - t0)
    return _summary(times, compile_s=compile_s, first_call_s=first_call_s), compiled, traced.jaxpr


def compiled_memory(compiled) -> dict[str, float] | None:
    """XLA's static memory plan of a compiled executable, MiB.

    ``peak_mib`` = arguments + outputs + temporaries - aliased (donated) bytes: what the
    executable needs at its high-water mark.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    mib = 2.0**20
    arg, out = m.argument_size_in_bytes, m.output_size_in_bytes
    temp, alias = m.temp_size_in_bytes, m.alias_size_in_bytes
    return {
        "argument_mib": arg / mib,
        "output_mib": out / mib,
        "temp_mib": temp / mib,
        "alias_mib": alias / mib,
        "peak_mib": (arg + out + temp - alias) / mib,
    }


def time_torch(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Times a torch callable (eager CPU: synchronous, so wall time is compute time)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    fn()
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _summary(times, compile_s=0.0, first_call_s=first_call_s)


def _summary(times: list[float], **extra: float) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        **extra,
    }


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (``ru_maxrss``), MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        return None


def machine_record(argv: list[str]) -> dict[str, Any]:
    """Date, machine, load, library versions and the exact command of this run."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks", *argv]),
        "machine": {
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpu_flags": _cpu_flags(),
            "platform": platform.platform(),
            "jax_devices": [str(d) for d in jax.devices()],
            "load_average_1_5_15": list(load),
        },
        "versions": {
            "python": platform.python_version(),
            **{
                m: _version(m)
                for m in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "spikingjelly")
            },
        },
    }
