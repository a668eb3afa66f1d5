"""One training run: :func:`train_and_evaluate` (the paper's protocol A/B, checkpoints, resume) and
:func:`restore` (a trained model from a workdir's checkpoint).

Modules: :mod:`.run` (the orchestration: :func:`~.run.build_run`, then the epoch loop),
:mod:`.spec` (the config checked and resolved once into a frozen ``RunSpec``), :mod:`.config`
(the run config's checks), :mod:`.steps` (the compiled train/eval steps; k >= 1 members),
:mod:`.epochs` (one epoch's steps, evaluation, logging and saving), :mod:`.checkpoint` (Orbax
checkpoints), :mod:`.members` (several seeds in one run), and helpers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["restore", "train_and_evaluate"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that ``plif_jax.training.config`` can be imported without JAX.
    if name == "train_and_evaluate":
        from plif_jax.training.run import train_and_evaluate

        return train_and_evaluate
    if name == "restore":
        from plif_jax.training.checkpoint import restore

        return restore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
