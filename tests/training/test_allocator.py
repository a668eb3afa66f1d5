"""glibc malloc while training (plif_jax.runtime.allocator): step buffers reused, then given back.

The measures are the kernel's own: minor page faults (a block glibc serves with ``mmap`` is
zero-filled page by page again after every ``free``; a kept block is not) and the resident size.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plif_jax.runtime import allocator

# Allocates, writes and frees a 64 MiB block 12 times (inside reusing_freed_memory when asked),
# then prints: the malloc line, the minor faults of the last 11 cycles, and the resident MiB
# with one freed 256 MiB block in the heap inside the block and after leaving it.
_PROBE = """
import contextlib, ctypes, resource, sys
from plif_jax.runtime import allocator
tuned = sys.argv[1] == "tuned"
print(allocator.keep_freed_memory() if tuned else allocator.in_effect())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def cycle(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
reuse = allocator.reusing_freed_memory() if tuned else contextlib.nullcontext()
with reuse:
    cycle(64 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(11):
        cycle(64 << 20)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    cycle(256 << 20)
    print(rss_mib())
print(rss_mib())
"""

glibc = pytest.mark.skipif(
    allocator._glibc() is None, reason="glibc only (the C library here is another)"
)


def _probe(mode: str) -> tuple[str, int, float, float]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root},
        cwd=root,
        check=True,
    ).stdout.split("\n")
    return out[0], int(out[1]), float(out[2]), float(out[3])


@pytest.mark.e2e
@glibc
def test_the_steps_reuse_freed_blocks_and_give_them_back_afterwards():
    line, faults, rss_in, rss_after = _probe("tuned")
    d_line, d_faults, d_rss_in, d_rss_after = _probe("default")
    print(
        f"minor faults of 11 cycles: defaults {d_faults}, kept {faults}; resident MiB with a "
        f"freed 256 MiB block: defaults {d_rss_in:.0f}, kept {rss_in:.0f}, after {rss_after:.0f}"
    )
    assert d_line.endswith("malloc, defaults")
    assert "one arena; the training steps' freed memory kept for reuse" in line
    # glibc's defaults: mmap + munmap, 11 x 16,384 pages faulted in (fewer with huge pages).
    assert d_faults > 0
    assert faults * 10 <= d_faults, (faults, d_faults)
    # Inside: the freed 256 MiB stay resident; after: malloc_trim gave them back.
    assert rss_in - d_rss_in > 200
    assert rss_in - rss_after > 200
    assert rss_after - d_rss_after < 50


def test_a_preloaded_malloc_is_left_alone_and_named(monkeypatch):
    monkeypatch.setitem(allocator._state, "libc", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    line = allocator.keep_freed_memory()
    assert line == "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    assert allocator._state["libc"] is None  # nothing was set
    with allocator.reusing_freed_memory():  # a no-op
        assert not allocator._state["reusing"]


def test_another_c_library_is_left_alone(monkeypatch):
    monkeypatch.setitem(allocator._state, "libc", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() == "the C library's malloc (not glibc)"
