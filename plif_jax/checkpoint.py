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

A checkpoint that cannot be read (truncated or missing array files, unreadable metadata, a
half-copied directory: a disk or copy fault) is skipped with a warning naming it and the reason,
and the newest readable one is used instead (:meth:`CheckpointStore.restore`). Nothing is ever
deleted or overwritten by that recovery; a resume moves the damaged directories it skipped to
``checkpoints/damaged/`` (its own saves reuse their step numbers). When none is readable the error
names the directory and the choices.
"""

from __future__ import annotations

import ast
import gc
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from plif_jax import config as config_lib
from plif_jax.errors import CheckpointError, IncompatibleRunError, NoCheckpointError

CONFIG_NAME = "config.json"
MODEL_NAME = "model.json"
_log = logging.getLogger(__name__)


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


def prepare_workdir(workdir: str) -> str:
    """Creates the run directory (and ``checkpoints/``) and checks that it can be written.

    Returns:
      The absolute path.

    Raises:
      CheckpointError: ``workdir`` is a file, or it (or a folder above it) cannot be created or
        written; nothing is written then.
    """
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(
            f"--workdir {workdir} is a file, not a directory: choose another --workdir "
            "(a run directory is created there)."
        )
    try:
        os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass  # writable: a run can save there
    except OSError as e:
        raise CheckpointError(
            f"--workdir {workdir} cannot be written ({e.strerror or e}: "
            f"{e.filename or path}): choose a directory you can write to, e.g. "
            "--workdir=runs/<name>."
        ) from e
    return path


def _read_json(path: str) -> Any:
    """A run directory's JSON record; an unreadable one is a :class:`CheckpointError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"Cannot read {path} ({type(e).__name__}: {e}): the file is damaged. Copy it back "
            "from a backup, or start a new run with a new --workdir."
        ) from e


def _reason(e: BaseException) -> str:
    """One line on why a checkpoint could not be read, e.g. ``ValueError: OUT_OF_RANGE reading
    checkpoints/latest/8/state/d/<file>: Requested byte range [0, 915) is not valid ...``."""
    text = " ".join(str(e).split()).split(" [tensorstore_spec", 1)[0]
    # TensorStore nests "Error opening ... driver: Error reading ... of local file "<f>": why".
    m = re.match(r'([A-Z_]{3,}): .*local file "([^"]+)"(?::\s*(.*))?$', text)
    if m:
        code, path, why = m.groups()
        if "/checkpoints/" in path:
            path = "checkpoints/" + path.split("/checkpoints/", 1)[1]
        text = f"{code} reading {path}" + (f": {why}" if why else "")
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_abandoned_orbax_read(unraisable: Any) -> bool:
    # When one array of a checkpoint cannot be read, Orbax (0.12) abandons the reads of the
    # other arrays: Python reports each abandoned coroutine, and each TensorStore callback that
    # later finds Orbax's event loop closed, as "Exception ignored in" with a traceback, after
    # the failure itself was raised and reported.
    if getattr(unraisable.object, "__qualname__", "") == "_read_array_index_and_device_put":
        return True
    exc, tb = unraisable.exc_value, unraisable.exc_traceback
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


class _AbandonedOrbaxTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for Orbax's abandoned array reads.

    The sibling reads of a failed one end with the same error once garbage-collected; asyncio logs
    each with a traceback, after the failure itself was reported (seen in CI, GC-timing dependent).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("Task exception was never retrieved" in msg and "async_deserialize" in msg)


def _quiet_abandoned_orbax_reads() -> None:
    """Drops Orbax's reports of abandoned array reads (the failed read itself is reported)."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedOrbaxTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedOrbaxTasks())
    previous = sys.unraisablehook
    if getattr(previous, "_plif_jax_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if _is_abandoned_orbax_read(unraisable):
            logging.debug("Orbax read abandoned after a failed restore: %s", unraisable.exc_value)
            return
        previous(unraisable)

    hook._plif_jax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _tree_paths(nested: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    for k, v in nested.items():
        if isinstance(v, Mapping):
            yield from _tree_paths(v, (*prefix, k))
        else:
            yield (*prefix, k), tuple(v.shape)


def _stored_structure(step_dir: str) -> dict[tuple, tuple | None] | None:
    """``{path: shape}`` of the arrays in a checkpoint's ``state`` item (Orbax's ``_METADATA``).

    None when the metadata cannot be read or is not in the layout this code knows: the
    checkpoint is then judged by whether it restores, not by its structure.
    """
    try:
        with open(os.path.join(step_dir, "state", "_METADATA"), encoding="utf-8") as f:
            tree = json.load(f)["tree_metadata"]
        out = {}
        for key, entry in tree.items():
            path = ast.literal_eval(key)
            if not isinstance(path, tuple):
                return None
            shape = entry.get("value_metadata", {}).get("write_shape")
            out[tuple(str(p) for p in path)] = None if shape is None else tuple(shape)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SyntaxError):
        return None


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

        Any step directory in ``latest/`` or ``best/`` counts (which one is readable is for
        :meth:`restore` to find out): a run whose latest checkpoints are gone resumes from its
        best one instead of starting over on top of it.

        Raises:
          IncompatibleRunError: the directory holds a checkpoint written under an incompatible
            config (a ``ValueError``); nothing is written then.
          CheckpointError: the saved ``config.json`` cannot be read.
        """
        current = json.loads(config.to_json())
        path = os.path.join(self.directory, CONFIG_NAME)
        has_checkpoint = bool(self._candidates("latest"))
        if has_checkpoint and os.path.exists(path):
            saved = _read_json(path)
            diffs = config_lib.resume_conflicts(saved, current)
            if diffs:
                raise IncompatibleRunError(
                    f"{self.directory} holds a checkpoint from an incompatible config; "
                    f"differing fields (saved -> now): {'; '.join(diffs)}. Use a new --workdir, "
                    "or drop these overrides to resume the saved run."
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

    def restore(
        self, template: Any, which: str = "latest", *, set_aside_damaged: bool = False
    ) -> tuple[Any, dict[str, Any], int]:
        """Restores the newest readable checkpoint into the structure, dtypes and shardings of
        ``template``.

        Candidates, newest first. ``which='latest'``: every step of ``latest/`` and ``best/``
        by step, ``latest/`` first at equal steps (a ``best/<step>`` is the state of the same
        run at the end of an epoch, written by the same save as ``latest/<step>``, so resuming
        from it redoes the later epochs exactly as they ran). ``which='best'``: ``best/``, then
        the copy of that same step in ``latest/`` if it is still kept (an older latest is not
        the best by the protocol's criterion, so it is never used for ``'best'``).

        A candidate that cannot be read is skipped with a warning naming it and the reason.
        Nothing is deleted or overwritten. ``set_aside_damaged`` (a resume, whose own saves
        reuse the skipped step numbers) moves the skipped directories to
        ``checkpoints/damaged/`` once a readable one is found; a read-only caller leaves them.

        Returns:
          ``(tree, meta, step)``.

        Raises:
          NoCheckpointError: there is no checkpoint of the kind asked for.
          CheckpointError: none of them can be read (the message names the directory, each
            checkpoint's reason and the choices).
          IncompatibleRunError: a checkpoint holds another train-state structure than
            ``template`` (written by another code version or model): not damage, so no other
            checkpoint of the run can help.
        """
        self._manager(which)  # checks `which`
        candidates = self._candidates(which)
        if not candidates:
            hint = (
                " (the latest ones are read with which='latest')"
                if which == "best" and self.latest.all_steps()
                else ""
            )
            raise NoCheckpointError(f"No {which!r} checkpoint in {self.directory}{hint}.")
        abstract = _abstract(to_nested(template))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        skipped: list[tuple[ocp.CheckpointManager, int, str]] = []
        for manager, step in candidates:
            try:
                restored = manager.restore(step, args=args)
                meta = restored["meta"]
                if not isinstance(meta, Mapping):
                    raise ValueError(f"meta is a JSON {type(meta).__name__}, not an object")
            except Exception as e:  # whatever Orbax / TensorStore / json raise for bad files
                _quiet_abandoned_orbax_reads()
                gc.collect()  # the abandoned reads are reported (and dropped) now
                self._raise_if_incompatible(manager, step, abstract, e)
                reason = _reason(e)
                _log.warning(
                    "Checkpoint %s cannot be read (%s); trying the next older one.",
                    self._name(manager, step),
                    reason,
                )
                skipped.append((manager, step, reason))
                continue
            if skipped:
                moved = self._set_aside(skipped) if set_aside_damaged else []
                _log.warning(
                    "Using checkpoint %s: skipped damaged %s%s.",
                    self._name(manager, step),
                    ", ".join(self._name(m, s) for m, s, _ in skipped),
                    f" (moved to {', '.join(moved)}; nothing deleted)" if moved else "",
                )
            return from_nested(restored["state"], template), dict(meta), step
        raise CheckpointError(self._none_readable_message(which, skipped))

    def _candidates(self, which: str) -> list[tuple[ocp.CheckpointManager, int]]:
        """The checkpoints :meth:`restore` tries, in order."""
        latest = [(self.latest, s) for s in self.latest.all_steps()]
        best = [(self.best, s) for s in self.best.all_steps()] if self.best is not None else []
        if which == "latest":
            return sorted(latest + best, key=lambda c: (-c[1], c[0] is not self.latest))
        best_steps = {s for _, s in best}
        same = [c for c in latest if c[1] in best_steps]
        return sorted(best, key=lambda c: -c[1]) + sorted(same, key=lambda c: -c[1])

    def _name(self, manager: ocp.CheckpointManager, step: int) -> str:
        return f"{'latest' if manager is self.latest else 'best'}/{step}"

    def _step_dir(self, manager: ocp.CheckpointManager, step: int) -> str:
        return os.path.join(str(manager.directory), str(step))

    def _raise_if_incompatible(
        self, manager: ocp.CheckpointManager, step: int, abstract: Any, error: Exception
    ) -> None:
        stored = _stored_structure(self._step_dir(manager, step))
        if stored is None:
            return  # metadata unreadable: damage
        wanted = dict(_tree_paths(abstract))
        missing = sorted(set(wanted) - set(stored))
        extra = sorted(set(stored) - set(wanted))
        reshaped = sorted(
            p for p in set(wanted) & set(stored) if stored[p] is not None and stored[p] != wanted[p]
        )
        if not (missing or extra or reshaped):
            return
        parts = []
        for label, paths in (("missing", missing), ("unexpected", extra), ("reshaped", reshaped)):
            if paths:
                names = ", ".join(".".join(p) for p in paths[:3])
                parts.append(f"{label} {names}{' ...' if len(paths) > 3 else ''}")
        raise IncompatibleRunError(
            f"Checkpoint {self._name(manager, step)} in {self.directory} holds another train "
            f"state than this code builds ({'; '.join(parts)}): it was written by another "
            "plif_jax version or model definition. Use a new --workdir, or the plif_jax "
            "version that wrote it."
        ) from error

    def _set_aside(self, skipped: list[tuple[ocp.CheckpointManager, int, str]]) -> list[str]:
        """Moves skipped checkpoints to ``checkpoints/damaged/`` (process 0); never deletes."""
        moved = []
        if jax.process_index() == 0:
            root = os.path.join(self.directory, "damaged")
            os.makedirs(root, exist_ok=True)
            for manager, step, reason in skipped:
                src = self._step_dir(manager, step)
                if not os.path.isdir(src):
                    continue
                base = os.path.join(root, self._name(manager, step).replace("/", "-"))
                dst, n = base, 1
                while os.path.exists(dst):
                    n += 1
                    dst = f"{base}.{n}"
                os.rename(src, dst)
                with open(dst + ".reason.txt", "w", encoding="utf-8") as f:
                    f.write(reason + "\n")
                moved.append(os.path.relpath(dst, self.directory))
        for manager in {id(m): m for m, _, _ in skipped}.values():
            manager.reload()
        return moved

    def _none_readable_message(self, which: str, skipped: list) -> str:
        listed = "; ".join(f"{self._name(m, s)}: {r}" for m, s, r in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        latest_hint = (
            " restore(..., which='latest') reads the latest checkpoints instead;"
            if which == "best" and self.latest.all_steps()
            else ""
        )
        return (
            f"No readable {which!r} checkpoint in {self.directory} ({listed}{more}); nothing "
            f"was changed.{latest_hint} To train, start a new run with a new --workdir, or move "
            f"the damaged step directories out of {self.directory}/latest and /best (keep them "
            "to inspect) and run the same command to start this workdir afresh."
        )

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

    Raises:
      NoCheckpointError: ``workdir`` is not a run directory, or holds no such checkpoint.
      CheckpointError: no checkpoint of the kind can be read (damaged ones are skipped with a
        warning, see :meth:`CheckpointStore.restore`; none is moved or deleted here).
    """
    from plif_jax import train as train_lib  # train imports this module

    directory = os.path.join(workdir, "checkpoints")
    for name in (CONFIG_NAME, MODEL_NAME):
        if not os.path.exists(os.path.join(directory, name)):
            raise NoCheckpointError(
                f"{os.path.join(directory, name)} not found: {workdir!r} is not a plif_jax run "
                "directory (python -m experiments.train --workdir=...)."
            )
    config = ml_collections.ConfigDict(_read_json(os.path.join(directory, CONFIG_NAME)))
    spec = _read_json(os.path.join(directory, MODEL_NAME))
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
