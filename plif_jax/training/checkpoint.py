"""Orbax checkpoints: the latest few and the best, resume, and ``restore`` for inference.

Layout of ``<workdir>/checkpoints``::

    config.json       the run's config (checked on resume: incompatible settings are an error)
    model.json        the exact ``create_model`` name and options (``restore`` rebuilds from it)
    latest/<step>/    the last ``keep`` checkpoints (end of epoch, or a preemption mid-epoch)
    best/<step>/      the best by the protocol's criterion (A: test accuracy, B: val accuracy)

Each checkpoint holds the train state (:class:`plif_jax.training.steps.TrainState`: the model's
``nnx.state`` split into params and the rest (batch statistics, dropout RNG state), and Adam's
state) and a JSON ``meta`` record: the run's :class:`plif_jax.training.progress.Progress` (epoch,
step
within the epoch, global step, best-so-far accuracies, running accumulators, the
``metrics.jsonl`` offset). Orbax writes into a temporary directory and
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

import gc
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from plif_jax import models
from plif_jax.errors import CheckpointError, IncompatibleRunError, NoCheckpointError
from plif_jax.training import config as config_lib
from plif_jax.training import steps
from plif_jax.training.checkpoint_files import (
    abstract_tree,
    from_nested,
    prepare_workdir,
    quiet_abandoned_orbax_reads,
    read_failure,
    read_json,
    read_run_records,
    stored_structure,
    to_nested,
    tree_paths,
    write_json_atomic,
)

__all__ = [
    "CONFIG_NAME", "MODEL_NAME", "CheckpointStore", "from_nested", "prepare_workdir", "restore",
    "to_nested", "write_json_atomic",
]  # fmt: skip
CONFIG_NAME = "config.json"
MODEL_NAME = "model.json"
_log = logging.getLogger(__name__)


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
            saved = read_json(path)
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

    def save_model_spec(
        self, name: str, options: Mapping[str, Any], *, members: list | None = None
    ) -> None:
        """Records how the model was built (``restore`` rebuilds it without the dataset).

        ``members`` (a run of k > 1 members): each member's ``seed``, ``data_seed``, ``values``
        and ``options``; ``options`` is then member 0's.
        """
        if jax.process_index() == 0:
            spec = {"name": name, "options": dict(options)}
            if members is not None:
                spec["members"] = [dict(m) for m in members]
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
        abstract = abstract_tree(to_nested(template))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        skipped: list[tuple[ocp.CheckpointManager, int, str]] = []
        # Before the first read: TensorStore's callbacks of a failing read report themselves
        # while the read is still failing, before the exception reaches the except below
        # (all-damaged workdir through the CLI: a bare traceback in 1 of 8 runs when the filter
        # was installed in the except, 0 of 16 when installed here).
        quiet_abandoned_orbax_reads()
        for manager, step in candidates:
            try:
                restored = manager.restore(step, args=args)
                meta = restored["meta"]
                if not isinstance(meta, Mapping):
                    raise ValueError(f"meta is a JSON {type(meta).__name__}, not an object")
            except Exception as e:  # whatever Orbax / TensorStore / json raise for bad files
                gc.collect()  # the abandoned reads are reported (and dropped) now
                self._raise_if_incompatible(manager, step, abstract, e)
                reason = read_failure(e)
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
        stored = stored_structure(self._step_dir(manager, step))
        if stored is None:
            return  # metadata unreadable: damage
        wanted = dict(tree_paths(abstract))
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


def restore(
    workdir: str, which: str = "best", *, member: int | None = None
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """Rebuilds a trained model from a run directory.

    Args:
      workdir: the ``--workdir`` of a training run.
      which: ``'best'`` (by the protocol; k members: their mean) or ``'latest'``.
      member: which member of a run of ``num_seeds = k > 1`` members (``0 .. k-1``); required
        there. None or 0 for an ordinary run.

    Returns:
      ``(model, config)``: the model (eval mode) with the checkpoint's parameters and batch
      statistics, and the run's config.

    Raises:
      NoCheckpointError: ``workdir`` is not a run directory, or holds no such checkpoint.
      CheckpointError: no checkpoint of the kind can be read (damaged ones are skipped with a
        warning, see :meth:`CheckpointStore.restore`; none is moved or deleted here).
    """
    directory = os.path.join(workdir, "checkpoints")
    for name in (CONFIG_NAME, MODEL_NAME):
        if not os.path.exists(os.path.join(directory, name)):
            raise NoCheckpointError(
                f"{os.path.join(directory, name)} not found: {workdir!r} is not a plif_jax run "
                "directory (python -m experiments.train --workdir=...)."
            )
    saved, spec = read_run_records(directory)  # another program's files: NoCheckpointError
    config = ml_collections.ConfigDict(saved)
    stored_members = spec.get("members")
    if stored_members is None:
        if member not in (None, 0):
            raise ValueError(f"{workdir!r} is a one-member run: member must be None or 0.")
        seed = int(spec.get("seed", config.seed))
        model = models.build_model(spec["name"], spec["options"], seed=seed)
        template = steps.init_train_state(model, config)
    else:
        k = len(stored_members)
        if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < k:
            raise ValueError(
                f"{workdir!r} trained {k} members (num_seeds={k}): pass member=0..{k - 1}, "
                f"got {member!r}."
            )
        from plif_jax.training import member_steps

        built = [
            models.build_model(spec["name"], m["options"], seed=int(m["seed"]))
            for m in stored_members
        ]
        template = member_steps.stack([steps.init_train_state(m, config) for m in built])
        model = built[member]
    store = CheckpointStore(workdir, keep=config.checkpoint.keep, async_save=False)
    try:
        state, _, _ = store.restore(template, which)
    finally:
        store.close()
    if stored_members is not None:
        state = member_steps.member_view(state, member)
    steps.assign_state(model, state)
    model.eval()
    return model, config
