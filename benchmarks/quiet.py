"""Timing on a shared machine: every timed call is checked for other processes' CPU use.

A call is timed with ``time.perf_counter`` while two counters are read around it: the whole
machine's busy CPU time (``/proc/stat``, every process and kernel thread) and this process's
own CPU time (``os.times``, all its threads). What the machine was busy with that this process
did not do was another process's work; if that exceeds ``max_share`` of the machine's cores
over the call (plus one clock tick of slack for the counters' resolution), the call is redone,
after a short pause, up to ``max_redo`` times. The redone calls are counted and reported, and a
call still accepted under load after ``max_redo`` tries is counted separately, so a figure
taken on a busy machine says so.

Where ``/proc/stat`` does not exist (not Linux) the guard cannot see other processes: calls are
accepted as they are and ``guarded`` is False in the summary.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

_TICK = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), or None if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) * _TICK


def own_cpu_s() -> float:
    """CPU seconds used by this process (every thread), user + system."""
    t = os.times()
    return t.user + t.system


@dataclasses.dataclass
class Guard:
    """Counts and limits other processes' CPU use during timed calls.

    Attributes:
      max_share: the largest share of the machine's cores (0..1) other processes may use during
        a call that is kept.
      max_redo: tries per call before a loaded call is accepted (and counted as such).
      pause_s: sleep before a retry (lets a burst of other work pass).
    """

    max_share: float = 0.10
    max_redo: int = 20
    pause_s: float = 0.5
    calls: int = 0
    redone: int = 0
    accepted_loaded: int = 0
    worst_share: float = 0.0
    cores: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)

    def _call_once(self, call: Callable[[], Any]) -> tuple[float, float | None]:
        busy0, own0 = machine_busy_s(), own_cpu_s()
        t0 = time.perf_counter()
        call()
        wall = time.perf_counter() - t0
        busy1, own1 = machine_busy_s(), own_cpu_s()
        if busy0 is None or busy1 is None:
            return wall, None
        others = max(0.0, (busy1 - busy0) - (own1 - own0))
        # One tick of slack per counter read: /proc/stat and os.times count in clock ticks.
        share = max(0.0, others - 2 * _TICK) / (wall * self.cores)
        return wall, share

    def time(self, call: Callable[[], Any]) -> float:
        """Wall seconds of one quiet call of ``call`` (redone while others used the CPU)."""
        self.calls += 1
        for attempt in range(self.max_redo + 1):
            wall, share = self._call_once(call)
            if share is None or share <= self.max_share:
                if share is not None:
                    self.worst_share = max(self.worst_share, share)
                return wall
            if attempt < self.max_redo:
                self.redone += 1
                time.sleep(self.pause_s)
        self.accepted_loaded += 1
        self.worst_share = max(self.worst_share, share or 0.0)
        return wall

    def record(self) -> dict[str, Any]:
        return {
            "guarded": machine_busy_s() is not None,
            "max_share": self.max_share,
            "calls": self.calls,
            "redone": self.redone,
            "accepted_loaded": self.accepted_loaded,
            "worst_other_share_kept": self.worst_share,
        }


def records_summed(records) -> dict[str, int]:
    """The counts of several :meth:`Guard.record` s summed (calls, redone, accepted loaded)."""
    records = list(records)
    return {k: sum(r[k] for r in records) for k in ("calls", "redone", "accepted_loaded")}


def time_calls(
    call: Callable[[], Any], *, guard: Guard, warmup: int = 1, repeats: int = 5
) -> dict[str, Any]:
    """Median of ``repeats`` guarded calls after ``warmup`` untimed ones (the first call apart).

    ``call`` must block until its result is ready (``jax.block_until_ready``; torch CPU is
    synchronous).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    times = [guard.time(call) for _ in range(repeats)]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "first_call_s": first,
    }
