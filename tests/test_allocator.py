"""glibc malloc kept from unmapping freed large blocks (plif_jax.allocator), as the train CLI runs.

The measure is the kernel's own count of minor page faults: a block glibc serves with ``mmap`` is
zero-filled page by page again after every ``free``; a kept block is not.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plif_jax import allocator

# Allocates, writes and frees one 64 MiB block 12 times; prints the minor faults of the last 11.
_FAULTS = """
import ctypes, resource, sys
from plif_jax import allocator
if sys.argv[1] == "tuned":
    print(allocator.keep_freed_memory())
else:
    print(allocator.in_effect())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def cycle():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(11):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(
    allocator._glibc() is None, reason="glibc only (the C library here is another)"
)


def _faults(mode: str) -> tuple[str, int]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    ).stdout.split("\n")
    return out[0], int(out[1])


@glibc
def test_kept_memory_is_reused_where_glibc_defaults_fault_every_page_in_again():
    default_line, default_faults = _faults("default")
    tuned_line, tuned_faults = _faults("tuned")
    assert default_line.endswith("malloc, defaults")
    assert tuned_line.endswith("freed memory kept (arena_max=1, mmap_max=0, no trim)")
    # glibc's defaults: mmap + munmap, 11 x 16,384 pages (fewer with transparent huge pages).
    print(f"minor faults of 11 cycles: defaults {default_faults}, kept {tuned_faults}")
    assert default_faults > 0
    assert tuned_faults * 10 <= default_faults, (tuned_faults, default_faults)


def test_a_preloaded_malloc_is_left_alone_and_named(monkeypatch):
    monkeypatch.setattr(allocator, "_in_effect", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    called = []
    monkeypatch.setattr(allocator, "_glibc", lambda: called.append(1) or None)
    line = allocator.keep_freed_memory()
    assert line == "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    assert allocator.in_effect() == line
    assert allocator._in_effect is None  # nothing was set


def test_another_c_library_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_in_effect", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() == "the C library's malloc (not glibc)"
