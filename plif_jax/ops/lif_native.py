"""The neuron's CPU time loops as a native kernel: ``native/lif_cpu.cc``, called through XLA's FFI.

On XLA:CPU, :func:`plif_jax.ops.lif_loop.lif_loop` runs its forward and backward loops here when
this module can build the kernel (float32, the ATan surrogate for the backward); otherwise, and
on GPUs and TPUs, it runs the XLA formulations. The same spikes; gradients equal up to float
rounding (the kernel is compiled for the host with the multiply-add contraction XLA:CPU uses, but
where XLA fuses an FMA depends on the program around the loop: a few elements in a hundred
differ by an ulp; ``tests/core/test_lif_native.py`` compares both). What it buys: XLA:CPU runs
a time step as three kernels on one core, copying H[t-1] and X[t] to temporaries first; the
kernel makes one pass over each ``[T, ...]`` tensor, runs the time loop inside chunks of 4,096
neurons, and deals the chunks to the machine's cores (docs/explanation/performance.md, "A native
kernel for the CPU loops").

The kernel is compiled on first use, once per machine, like the CUDA kernels SpikingJelly's CuPy
backend compiles at run time: the C++ compiler (``$CXX``, else ``g++``, ``c++`` or ``clang++``)
with jaxlib's FFI headers (``jax.ffi.include_dir()``), into ``$PLIF_JAX_CACHE`` (default
``$XDG_CACHE_HOME/plif_jax``, else ``~/.cache/plif_jax``), named by a hash of the source, the
compiler, the flags, jaxlib's version and the CPU (a new jaxlib rebuilds it; ~4 s). Without a
compiler, or with ``PLIF_JAX_NATIVE=0`` in the environment, the XLA loops run: :func:`status`
says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("native") / "lif_cpu.cc"
FLAGS = (
    "-O3",
    "-march=native",  # built and run on the same machine
    "-ffp-contract=fast",  # a * b + c as one FMA where XLA:CPU's LLVM fuses it: equal values
    "-fno-trapping-math",  # lets the compiler vectorise the loops' selects (no value changes)
    "-std=c++17",
    "-fPIC",
    "-shared",
)
TARGETS = {"forward": "plif_lif_forward", "backward": "plif_lif_backward"}
_enabled: list[bool] = []  # set by `enabled` (tests, benchmarks); empty: PLIF_JAX_NATIVE decides


@contextlib.contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """Traces the neuron with (True) or without (False) the native kernel inside the block
    (what is traced there; a function jitted before keeps its trace). For A/B comparisons."""
    _enabled.append(bool(flag))
    try:
        yield
    finally:
        _enabled.pop()


def _cache_dir() -> Path:
    if os.environ.get("PLIF_JAX_CACHE"):
        return Path(os.environ["PLIF_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plif_jax"


def _compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next(filter(None, map(shutil.which, ("g++", "c++", "clang++"))), None)


def _cpu() -> str:
    """The CPU's model name and feature flags: ``-march=native`` builds for them."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
    except OSError:
        return platform.machine()
    return platform.machine() + "".join(sorted(set(lines)))


def _build(cxx: str) -> Path:
    """The kernel's shared library, compiled into the cache unless it is there already."""
    import jaxlib

    include = jax.ffi.include_dir()
    parts = (SOURCE.read_text(), cxx, " ".join(FLAGS), jaxlib.__version__, include, _cpu())
    key = hashlib.sha256(b"\0".join(s.encode() for s in parts)).hexdigest()[:16]
    cache = _cache_dir()
    lib = cache / f"lif_cpu-{key}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    # Compiled to a temporary name, then renamed: processes building at once each write their
    # own file and the last rename wins (the files are identical).
    fd, tmp = tempfile.mkstemp(prefix=lib.stem, suffix=".so.tmp", dir=cache)
    os.close(fd)
    try:
        cmd = [cxx, *FLAGS, "-I", include, str(SOURCE), "-o", tmp, "-lpthread"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if "error" in ln] or [done.stderr]
            raise OSError(f"{Path(cxx).name} failed: {lines[0].strip()[:300]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return lib


@functools.cache
def _load() -> tuple[bool, str]:
    """``(available, why)``: builds (once per machine) and registers the kernel."""
    if os.environ.get("PLIF_JAX_NATIVE", "1") == "0":
        return False, "disabled by PLIF_JAX_NATIVE=0"
    if not sys.platform.startswith("linux"):
        return False, f"the native kernel is built on Linux only (this is {sys.platform})"
    cxx = _compiler()
    if cxx is None:
        return False, "no C++ compiler found ($CXX, g++, c++, clang++): install one (Debian: g++)"
    try:
        path = _build(cxx)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for symbol, target in (("PlifLifForward", "forward"), ("PlifLifBackward", "backward")):
            jax.ffi.register_ffi_target(
                TARGETS[target], jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
    except (OSError, subprocess.SubprocessError) as err:
        return False, f"could not build the native kernel: {err}"
    return True, f"{path} ({Path(cxx).name}, {platform.machine()})"


def status() -> str:
    """Whether the CPU loops run natively, and the library or the reason why not."""
    ok, why = _load()
    return f"native: {why}" if ok else f"XLA loops: {why}"


def usable(dtype, surrogate_kind: str | None = None, *scalars) -> bool:
    """Whether a CPU trace of the neuron uses the kernel for this dtype (and, for the backward,
    this surrogate kind: the kernel has ATan's partials only); ``scalars`` (decay, alpha) must
    be one value each (a NIR graph's per-neuron time constants run XLA's loops)."""
    if _enabled and not _enabled[-1]:
        return False
    if jnp.dtype(dtype) != jnp.float32 or surrogate_kind not in (None, "atan"):
        return False
    if any(np.size(a) != 1 for a in scalars):
        return False
    return _load()[0]


def _scalar(a):
    return jnp.asarray(a, jnp.float32).reshape(())


def _varying(*args):
    """The operands made to vary over the same manual mesh axes (inside ``shard_map``, data
    varies over the batch axis and the parameters do not; an FFI call takes one set), and the
    result type maker: shape -> float32 array of those axes."""
    axes = [jax.typeof(a).mat.varying for a in args]
    union = frozenset().union(*axes)
    args = [
        a if ax == union else jax.lax.pcast(a, tuple(sorted(union - ax)), to="varying")
        for a, ax in zip(args, axes, strict=True)
    ]
    like = jax.typeof(args[0])
    return args, lambda shape: like.update(shape=tuple(shape), dtype=jnp.dtype(jnp.float32))


def forward(x_seq, v0, decay, v_threshold: float, v_reset: float):
    """``H``, ``[T, ...]``, of the LIF forward (see lif_cpu.cc), written over ``x_seq``'s buffer
    where XLA can give it (a dead input, as a layer's output is; else XLA copies it first)."""
    args, result = _varying(
        x_seq.astype(jnp.float32),
        jnp.broadcast_to(v0, x_seq.shape[1:]).astype(jnp.float32),
        _scalar(decay),
    )
    out = result(x_seq.shape)
    call = jax.ffi.ffi_call(
        TARGETS["forward"], out, vmap_method="sequential", input_output_aliases={0: 0}
    )
    return call(
        *args,
        v_threshold=np.float32(v_threshold),
        v_reset=np.float32(v_reset),
    )


def backward(gs_seq, h_seq, v0, decay, alpha, gv_final, *, v_threshold, v_reset, detach_reset):
    """``(dL/dX, gH[0], acc_k, acc_alpha)`` of the LIF backward with the ATan surrogate: what
    :func:`plif_jax.ops.lif_loop.lif_loop`'s CPU backward loop returns (dL/dalpha's sum is
    computed whether or not alpha is learnt, as there)."""
    row = h_seq.shape[1:]
    args, result = _varying(
        gs_seq.astype(jnp.float32),
        h_seq,
        jnp.broadcast_to(v0, row).astype(jnp.float32),
        _scalar(decay),
        _scalar(alpha),
        jnp.broadcast_to(gv_final, row).astype(jnp.float32),
    )
    seq, one = result(h_seq.shape), result(row)
    call = jax.ffi.ffi_call(
        TARGETS["backward"],
        (seq, one, one, one),
        vmap_method="sequential",
        input_output_aliases={0: 0},
    )
    return call(
        *args,
        v_threshold=np.float32(v_threshold),
        v_reset=np.float32(v_reset),
        detach_reset=bool(detach_reset),
    )
