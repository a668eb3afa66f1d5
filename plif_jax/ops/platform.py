"""Which formulation of an op a step runs: XLA:CPU's or the accelerators' (GPU, TPU).

:mod:`plif_jax.ops.lif_loop` (the neuron's time loops) and :mod:`plif_jax.ops.batch_norm`
(BatchNorm's backward) each have a CPU and an accelerator formulation with the same values, and
:mod:`plif_jax.ops.bn_lif` (BatchNorm then the neuron) a third for NVIDIA GPUs (Pallas kernels);
:func:`by_platform` picks one when the step is lowered for its platform, and :func:`formulation`
forces one (tests run all three on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator

import jax

FORMULATIONS = ("cpu", "accelerator", "gpu")
_forced: list[str] = []  # set by `formulation` (tests); empty: chosen by the lowering platform
_CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


@contextlib.contextmanager
def formulation(name: str) -> Iterator[None]:
    """Traces the ops in one formulation whatever the backend: ``'cpu'`` (the in-place
    ``fori_loop``, BatchNorm by autodiff), ``'accelerator'`` (:mod:`plif_jax.ops.lif_scan`,
    :mod:`plif_jax.ops.batch_norm`'s backward) or ``'gpu'`` (the accelerator formulation, and
    :mod:`plif_jax.ops.bn_lif`'s kernels run by Pallas's interpreter). For tests: applies to what
    is traced inside the block (a function jitted before keeps its trace)."""
    if name not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


@functools.cache
def cuda_installed() -> bool:
    """Whether jax's CUDA plugin is installed (``jax[cuda12]``/``[cuda13]``): only then can a
    step be lowered for an NVIDIA GPU, so only then is :func:`by_platform`'s ``gpu`` traced
    (tracing :mod:`plif_jax.ops.bn_lif`'s kernels costs a DVS128 Gesture train step ~4 s)."""
    return any(importlib.util.find_spec(m) is not None for m in _CUDA_PLUGINS)


def forced() -> str | None:
    """The formulation :func:`formulation` forces now, or None."""
    return _forced[-1] if _forced else None


def by_platform(cpu, accelerator, *args, gpu=None):
    """``cpu(*args)`` on XLA:CPU, ``gpu(*args)`` on NVIDIA GPUs where given,
    ``accelerator(*args)`` elsewhere (decided at lowering: only the chosen one is lowered)."""
    if _forced:
        name = _forced[-1]
        return (cpu if name == "cpu" else gpu if name == "gpu" and gpu else accelerator)(*args)
    branches = {"cpu": cpu, "default": accelerator}
    if gpu is not None and cuda_installed():
        branches["cuda"] = gpu
    return jax.lax.platform_dependent(*args, **branches)
