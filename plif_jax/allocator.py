"""glibc malloc settings for training: freed large buffers are kept for the next step.

XLA:CPU allocates each step's buffers afresh. glibc serves a block above its mmap threshold
(dynamic, at most 32 MiB) with ``mmap`` and gives it back with ``munmap`` on ``free``, so every
step the kernel zero-fills the same pages again. On the quick start (``configs/quickstart.py``,
the 2-core machine, 2026-12-01) one step maps a 117 MB and two 43 MB blocks: 28,600 minor page
faults and ~60 ms of system time in a ~110 ms step, the train step at ~140 samples/s.

:func:`keep_freed_memory` sets three documented ``mallopt(3)`` parameters: one arena
(``M_ARENA_MAX=1``: XLA's worker threads allocate from the main heap), no ``mmap`` for large
blocks (``M_MMAP_MAX=0``) and no trimming of the heap's top (``M_TRIM_THRESHOLD=-1``). Freed
blocks then stay in the process and are reused: 0 page faults per step and ~218 samples/s, the
same step as with tcmalloc preloaded (~243) within the noise of that machine
(``python -m experiments.measure_loop --config configs/quickstart.py``, BENCHMARKS.md). Memory
freed is not returned to the system until the process ends, so the resident size stays at its
high-water mark (which the run reaches anyway, every step).

``experiments.train`` calls it first thing (``--noglibc_keep_freed`` keeps glibc's defaults), as
does ``experiments.benchmark`` (``--allocator glibc-tuned``, its default). The same settings
for a process started any other way: ``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.
mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615``, or call this before JAX runs
anything (arenas and threads made before it keep theirs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_preloaded = ("tcmalloc", "jemalloc", "mimalloc")


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return None  # musl and others: nothing to set
    return libc


_in_effect: str | None = None  # set by keep_freed_memory


def keep_freed_memory() -> str:
    """Sets glibc's malloc to keep and reuse freed memory; returns :func:`in_effect`.

    A no-op (saying so) where the C library is not glibc or another malloc is preloaded.
    """
    global _in_effect
    preload = os.environ.get("LD_PRELOAD", "")
    libc = _glibc()
    if any(name in preload for name in _preloaded) or libc is None:
        return in_effect()
    version = libc.gnu_get_libc_version().decode()
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    failed = [p for p, v in settings if libc.mallopt(p, v) != 1]
    if failed:  # mallopt refuses only an unknown parameter: a C library we do not know
        _in_effect = f"glibc {version} malloc (mallopt refused parameters {failed})"
    else:
        _in_effect = f"glibc {version} malloc, freed memory kept (arena_max=1, mmap_max=0, no trim)"
    return _in_effect


def in_effect() -> str:
    """One line naming the process's malloc (run info, benchmark records)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _preloaded):
        return f"LD_PRELOAD={preload}"
    if _in_effect is not None:
        return _in_effect
    libc = _glibc()
    if libc is None:
        return "the C library's malloc (not glibc)"
    return f"glibc {libc.gnu_get_libc_version().decode()} malloc, defaults"
