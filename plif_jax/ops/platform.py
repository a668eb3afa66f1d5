"""Which formulation of an op a step runs: XLA:CPU's or the accelerators' (GPU, TPU).

:mod:`plif_jax.ops.lif_loop` (the neuron's time loops) and :mod:`plif_jax.ops.batch_norm`
(BatchNorm's backward) each have a CPU and an accelerator formulation with the same values;
:func:`by_platform` picks one when the step is lowered for its platform, and :func:`formulation`
forces one (tests run both on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

FORMULATIONS = ("cpu", "accelerator")
_forced: list[str] = []  # set by `formulation` (tests); empty: chosen by the lowering platform


@contextlib.contextmanager
def formulation(name: str) -> Iterator[None]:
    """Traces the ops in one formulation whatever the backend: ``'cpu'`` (the in-place
    ``fori_loop``, BatchNorm by autodiff) or ``'accelerator'`` (:mod:`plif_jax.ops.lif_scan`,
    :mod:`plif_jax.ops.batch_norm`'s backward). For tests: applies to what is traced inside the
    block (a function jitted before keeps its trace)."""
    if name not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def by_platform(cpu, accelerator, *args):
    """``cpu(*args)`` on XLA:CPU, ``accelerator(*args)`` elsewhere (decided at lowering)."""
    if _forced:
        return (cpu if _forced[-1] == "cpu" else accelerator)(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=accelerator)
