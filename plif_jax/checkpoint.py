"""Orbax checkpoints: the latest few and the best, resume, and ``restore`` for inference.

Layout of ``<workdir>/checkpoints``::

    config.json       the run's config (checked on resume: incompatible settings are an error)
    model.json        the exact ``create_model`` name and options (``restore`` rebuilds from it)
    latest/<step>/    the last ``keep`` checkpoints (end of epoch, or a preemption mid-epoch)
    best/<step>/      the best by the protocol's criterion (A: test accuracy, B: val accuracy)

Each checkpoint holds the train state (params, batch statistics, dropout RNG state, Adam state)
and a JSON ``meta`` record (epoch, step within the epoch, global step, best-so-far accuracies,
running accumulators, the ``metrics.jsonl`` offset). Orbax writes into a temporary directory and
renames it when complete, so a process killed mid-save leaves no checkpoint that a later start
would read; leftover temporary directories are removed on the next start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from plif_jax import config as config_lib

CONFIG_NAME = "config.json"
MODEL_NAME = "model.json"


def _key_str(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def write_json_atomic(path: str, obj: Any, *, sort_keys: bool = True) -> None:
    """Writes JSON to a temporary file, then renames it over ``path`` (``os.replace``).

    A process killed mid-write leaves the previous file intact, never a truncated one (a
    truncated ``config.json`` would make the next start fail on a run it could resume).
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys)
    os.replace(tmp, path)


def _is_prng_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_nested(tree: Any) -> dict[str, Any]:
    """Any pytree as a nested dict of str keys (Orbax-friendly); PRNG keys become key data."""
    nested: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = nested
        keys = [_key_str(k) for k in path]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = jax.random.key_data(leaf) if _is_prng_key(leaf) else leaf
    return nested


def from_nested(nested: Mapping[str, Any], template: Any) -> Any:
    """Inverse of :func:`to_nested`, using ``template`` for the tree structure and key types."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, tmpl in paths_leaves:
        node = nested
        for k in path:
            node = node[_key_str(k)]
        if _is_prng_key(tmpl):
            node = jax.random.wrap_key_data(node, impl=jax.random.key_impl(tmpl))
        leaves.append(node)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _abstract(nested: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        nested,
    )


class CheckpointStore:
    """The latest-``keep`` and best checkpoints of one run directory.

    Args:
      workdir: run directory; checkpoints live in ``<workdir>/checkpoints``.
      keep: how many of the latest checkpoints to keep.
      keep_best: also keep the best checkpoint in ``best/``.
      async_save: write in a background thread (device-to-host copy stays synchronous).
    """

    def __init__(self, workdir: str, *, keep: int = 3, keep_best: bool = True, async_save=True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        os.makedirs(self.directory, exist_ok=True)

        def manager(sub: str, max_to_keep: int) -> ocp.CheckpointManager:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                # A kill -9 mid-save leaves a tmp directory; it is never read, and removed here.
                cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
            )
            return ocp.CheckpointManager(
                os.path.join(self.directory, sub), options=options, item_names=("state", "meta")
            )

        self.latest = manager("latest", max(1, int(keep)))
        self.best = manager("best", 1) if keep_best else None

    # --- config ------------------------------------------------------------------------------
    def check_config(self, config: ml_collections.ConfigDict) -> bool:
        """Records the config; returns True if there is a checkpoint to resume.

        Raises:
          ValueError: the directory holds a checkpoint written under an incompatible config.
        """
        current = json.loads(config.to_json())
        path = os.path.join(self.directory, CONFIG_NAME)
        has_checkpoint = self.latest.latest_step() is not None
        if has_checkpoint and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            diffs = config_lib.resume_conflicts(saved, current)
            if diffs:
                raise ValueError(
                    f"{self.directory} holds a checkpoint from an incompatible config; "
                    "differing fields (saved -> now):\n  "
                    + "\n  ".join(diffs)
                    + "\nUse a new --workdir, or drop these overrides to resume the saved run."
                )
        if jax.process_index() == 0:
            write_json_atomic(path, current)
        return has_checkpoint

    def save_model_spec(self, name: str, options: Mapping[str, Any]) -> None:
        """Records how the model was built (``restore`` rebuilds it without the dataset)."""
        if jax.process_index() == 0:
            spec = {"name": name, "options": dict(options)}
            write_json_atomic(os.path.join(self.directory, MODEL_NAME), spec)

    # --- save / restore ------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, tree: Any, meta: Mapping[str, Any], *, best: bool = False) -> None:
        """Saves ``tree`` (any pytree of arrays) and ``meta`` (JSON) at global ``step``.

        A new best is written (and finished) before the latest: a process killed in between
        resumes from the previous latest checkpoint, redoes the epoch and finds the best one
        already there, identical. The other order could leave a resumed run whose best
        checkpoint is older than its record of the best epoch.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(to_nested(tree)), meta=ocp.args.JsonSave(dict(meta))
        )
        if best and self.best is not None and self.best.latest_step() != step:
            self.best.save(step, args=args, force=True)
            self.best.wait_until_finished()
        if self.latest.latest_step() != step:
            self.latest.save(step, args=args, force=True)

    def wait(self) -> None:
        """Blocks until every save in flight is on disk."""
        for m in (self.latest, self.best):
            if m is not None:
                m.wait_until_finished()

    def restore(self, template: Any, which: str = "latest") -> tuple[Any, dict[str, Any], int]:
        """Restores into the structure, dtypes and shardings of ``template``.

        Returns:
          ``(tree, meta, step)``.
        """
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"No {which!r} checkpoint in {manager.directory}.")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(to_nested(template))),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return from_nested(restored["state"], template), dict(restored["meta"]), step

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which == "latest":
            return self.latest
        if which == "best":
            if self.best is None:
                raise ValueError("This store keeps no best checkpoint (keep_best=False).")
            return self.best
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")

    def close(self) -> None:
        """Waits for in-flight saves and releases the managers."""
        for m in (self.latest, self.best):
            if m is not None:
                m.wait_until_finished()
                m.close()


def restore(workdir: str, which: str = "best") -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """Rebuilds a trained model from a run directory.

    Args:
      workdir: the ``--workdir`` of a training run.
      which: ``'best'`` (by the protocol's criterion) or ``'latest'``.

    Returns:
      ``(model, config)``: the model (eval mode) with the checkpoint's parameters and batch
      statistics, and the run's config.
    """
    from plif_jax import train as train_lib  # train imports this module

    directory = os.path.join(workdir, "checkpoints")
    for name in (CONFIG_NAME, MODEL_NAME):
        if not os.path.exists(os.path.join(directory, name)):
            raise FileNotFoundError(
                f"{os.path.join(directory, name)} not found: {workdir!r} is not a plif_jax run "
                "directory (python -m experiments.train --workdir=...)."
            )
    with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(directory, MODEL_NAME), encoding="utf-8") as f:
        spec = json.load(f)
    model = train_lib.build_model(spec["name"], spec["options"], seed=config.seed)
    template = train_lib.init_train_state(model, config)
    store = CheckpointStore(workdir, keep=config.checkpoint.keep, async_save=False)
    try:
        state, _, _ = store.restore(template, which)
    finally:
        store.close()
    train_lib.assign_state(model, state)
    model.eval()
    return model, config
