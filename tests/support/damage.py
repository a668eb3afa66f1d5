"""Damage done to checkpoint files the way a disk or copy fault does, and how to see it."""

from __future__ import annotations

import hashlib
import os


def step_dir(workdir: str, which: str, step: int) -> str:
    return os.path.join(workdir, "checkpoints", which, str(step))


def array_files(directory: str) -> list[str]:
    """The files holding array bytes (Orbax's OCDBT data files)."""
    out = []
    for root, _, files in os.walk(os.path.join(directory, "state")):
        if os.path.basename(root) == "d":
            out += [os.path.join(root, f) for f in files]
    assert out, f"no array files under {directory}"
    return out


def truncate_arrays(directory: str) -> None:
    for path in array_files(directory):
        os.truncate(path, os.path.getsize(path) // 2)


def snapshot(directory: str) -> dict[str, str]:
    """Every file under ``directory`` (relative path) -> sha256 of its bytes."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out
