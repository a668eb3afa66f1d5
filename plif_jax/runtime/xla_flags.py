"""XLA flags the command-line tools set before JAX creates its backends."""

from __future__ import annotations

import os

# XLA:CPU's YNNPACK fusions for dots, convolutions and reductions: on by default in the train CLI
# (experiments/train.py, ``--xla_cpu_ynn``); BENCHMARKS.md has the figures.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"


def set_cpu_flags(ynn: bool) -> None:
    """Adds the YNNPACK fusion flag to ``XLA_FLAGS`` (read when JAX first creates its backends).

    Must run before the first computation. A flag the user already set in ``XLA_FLAGS`` wins.
    Other backends ignore XLA's CPU flags.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if ynn and "xla_cpu_experimental_ynn_fusion_type" not in current:
        os.environ["XLA_FLAGS"] = f"{current} {YNN_FLAG}".strip()
