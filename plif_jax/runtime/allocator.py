"""glibc malloc while training: each step's large buffers reused instead of mapped afresh.

XLA:CPU allocates a step's buffers anew at every step. glibc serves a block above its mmap
threshold (dynamic, at most 32 MiB) with ``mmap`` and gives it back with ``munmap`` on ``free``,
so every step the kernel zero-fills the same pages again. On the quick start
(``configs/quickstart.py``, the 2-core machine, 2026-12-01) one step maps a 117 MB and two 43 MB
blocks: 28,600 minor page faults and ~60 ms of system time in a ~110 ms step.

Two parts, both documented ``mallopt(3)`` parameters:

* :func:`keep_freed_memory`, once at start, before JAX makes its threads: one arena
  (``M_ARENA_MAX=1``), so XLA's worker threads allocate from the main heap, which can hold blocks
  of any size (a thread arena's heaps hold at most 64 MiB each and are unmapped when empty).
* :func:`reusing_freed_memory`, around the training steps
(:meth:`plif_jax.training.epochs.Epochs.train`):
  no ``mmap`` for large blocks (``M_MMAP_MAX=0``) and no trimming (``M_TRIM_THRESHOLD=-1``), so
  freed blocks stay in the heap and the next step reuses them: 0 page faults per step, the
  quick-start step ~1.45x faster (``python -m benchmarks.measure_loop``, BENCHMARKS.md). On
  leaving, glibc's mmap and trim behaviour come back and ``malloc_trim(0)`` returns the heap's
  free pages to the system. Evaluation and checkpointing thus run with mmapped blocks and leave
  no holes in the heap: keeping memory over a whole run instead (train and eval buffers of
  different sizes in one heap) grew the Fashion-MNIST paper net's resident size from 2.1 GB
  after one epoch to 11 GB after two.

The price of one arena: threads contend for it, and XLA's compilation (multi-threaded, malloc
heavy) slows down: ``pytest tests/core/test_models.py tests/core/test_remat.py`` (75 tests, mostly
compiling) took 77-80 s with it against 68-72 s without, so the test suite does not set it. For
a training run that is a share of its few seconds of compilation.

``experiments.train`` calls :func:`keep_freed_memory` first thing (``--noglibc_keep_freed``
leaves glibc alone, and :func:`reusing_freed_memory` is then a no-op); ``benchmarks.cli``
(``--allocator glibc-tuned``, its default) keeps memory for its whole run. A preloaded malloc
(tcmalloc, jemalloc) and C libraries other than glibc are left as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_DEFAULT_MMAP_MAX = 65536  # glibc's
_DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's

_PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")
_state: dict = {"libc": None, "version": None, "reusing": False}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt  # noqa: B018 - glibc's
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None  # musl and others: nothing to set
    return libc


def _preloaded() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    return preload if any(name in preload for name in _PRELOADED) else None


def keep_freed_memory() -> str:
    """One malloc arena, so that :func:`reusing_freed_memory` can keep the steps' blocks.

    Call before JAX runs anything (threads made before it keep their arenas). A no-op where the
    C library is not glibc or another malloc is preloaded. Returns :func:`in_effect`.
    """
    libc = _glibc()
    if _preloaded() or libc is None or _state["libc"] is not None:
        return in_effect()
    if libc.mallopt(M_ARENA_MAX, 1) == 1:
        _state["libc"], _state["version"] = libc, libc.gnu_get_libc_version().decode()
    return in_effect()


@contextlib.contextmanager
def reusing_freed_memory() -> Iterator[None]:
    """While the block runs, freed memory stays in the heap for reuse; then it is given back.

    A no-op unless :func:`keep_freed_memory` took effect (or when already inside).
    """
    libc = _state["libc"]
    if libc is None or _state["reusing"]:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, -1)
    _state["reusing"] = True
    try:
        yield
    finally:
        _state["reusing"] = False
        libc.mallopt(M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def in_effect() -> str:
    """One line naming the process's malloc (run info, benchmark records)."""
    preload = _preloaded()
    if preload:
        return f"LD_PRELOAD={preload}"
    if _state["libc"] is not None:
        return (
            f"glibc {_state['version']} malloc, one arena; the training steps' freed memory kept "
            "for reuse (plif_jax.runtime.allocator)"
        )
    libc = _glibc()
    if libc is None:
        return "the C library's malloc (not glibc)"
    return f"glibc {libc.gnu_get_libc_version().decode()} malloc, defaults"
