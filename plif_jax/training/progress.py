"""The run's progress: where training stands, the best-so-far records, the running sums.

:class:`Progress` is everything a resumed run needs besides the arrays; each checkpoint stores it
as its JSON ``meta`` item (:meth:`Progress.to_json` / :meth:`Progress.from_json`).
:func:`update_best` is the paper's two protocols' bookkeeping, and :class:`MetricsDrain` reads a
step's metrics one step late so that the host never waits for the device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from plif_jax.errors import IncompatibleRunError, NonFiniteError


@dataclasses.dataclass
class Accumulator:
    """Sums of the train step's metrics over some steps (an epoch, or a logging window)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0  # samples
    steps: int = 0
    firing_rate: dict[str, float] = dataclasses.field(default_factory=dict)  # summed per step

    def add(self, m: Mapping[str, Any], batch_size: int) -> None:
        """Adds one step's host-side metrics (``loss``, ``correct``, ``firing_rate``)."""
        self.loss_sum += float(m["loss"])
        self.correct += int(m["correct"])
        self.count += batch_size
        self.steps += 1
        for name, rate in m["firing_rate"].items():
            self.firing_rate[name] = self.firing_rate.get(name, 0.0) + float(rate)

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)

    def mean_rates(self) -> dict[str, float]:
        """``{layer: mean firing rate}`` over the steps, layers sorted by name."""
        return {k: v / max(self.steps, 1) for k, v in sorted(self.firing_rate.items())}


@dataclasses.dataclass
class Progress:
    """How far a run is, and its best-so-far records (-1: none yet)."""

    epoch: int = 0  # the epoch in progress (or next to run)
    step_in_epoch: int = 0  # training batches of that epoch already done
    global_step: int = 0
    best_test_accuracy: float = -1.0
    best_test_epoch: int = -1
    best_val_accuracy: float = -1.0
    best_val_epoch: int = -1
    test_at_best_val: float = -1.0
    last_test_accuracy: float = -1.0
    metrics_offset: int = 0  # bytes of metrics.jsonl this checkpoint accounts for
    epoch_acc: Accumulator = dataclasses.field(default_factory=Accumulator)
    window_acc: Accumulator = dataclasses.field(default_factory=Accumulator)
    train_seconds: float = 0.0
    train_samples: int = 0
    # A run of k > 1 members (plif_jax.training.members): each member's own records and accumulators
    # (their epoch/step fields unused). The run's own best fields then track the members' MEAN
    # accuracy (what picks the best checkpoint). Empty for a one-member run (and not stored).
    members: list[Progress] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``meta`` record (plain JSON types)."""
        out = dataclasses.asdict(self)
        if not self.members:
            del out["members"]  # a one-member run's record is as before the field existed
        else:
            for m in out["members"]:
                del m["members"]
        return out

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> Progress:
        """Inverse of :meth:`to_json`.

        Raises:
          IncompatibleRunError: ``meta`` lacks a field or has one this code does not know (a
            checkpoint of another plif_jax version).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        given = set(meta) | {"members"}  # absent in a one-member run's record
        if given != names:
            raise IncompatibleRunError(
                f"The checkpoint's progress record has other fields than this code's (missing "
                f"{sorted(names - given)}, unknown {sorted(given - names)}): it was "
                "written by another plif_jax version. Use a new --workdir, or that version."
            )
        values = dict(meta)
        for name in ("epoch_acc", "window_acc"):
            values[name] = Accumulator(**values[name])
        values["members"] = [cls.from_json(m) for m in values.get("members", [])]
        return cls(**values)


def update_best(
    progress: Progress, protocol: str, epoch: int, test_acc: float, val_acc: float | None
) -> bool:
    """Updates the best-so-far records; returns whether this epoch is the new best checkpoint.

    Protocol A: the best test accuracy and the FIRST epoch reaching it (the paper's accuracy-A).
    Protocol B: the test accuracy at the best validation accuracy; ties go to the LATER epoch
    (the reference's ``max_val_accuracy <= val_accuracy``).
    """
    p = progress
    improved = False
    if test_acc > p.best_test_accuracy:
        p.best_test_accuracy, p.best_test_epoch = test_acc, epoch
        improved = protocol == "A"
    p.last_test_accuracy = test_acc
    if protocol == "B":
        if val_acc is None:
            raise ValueError("Protocol B needs the validation accuracy of every epoch.")
        if val_acc >= p.best_val_accuracy:
            p.best_val_accuracy, p.best_val_epoch = val_acc, epoch
            p.test_at_best_val = test_acc
            improved = True
    return improved


def member_progress(progress: Progress) -> list[Progress]:
    """Each member's records: ``progress.members``, or for one member the run's own."""
    return progress.members or [progress]


def fresh_progress(k: int) -> Progress:
    """A new run's progress with ``k`` members (one member: its records are the run's)."""
    return Progress(members=[Progress() for _ in range(k)] if k > 1 else [])


class MetricsDrain:
    """Reads step n's metrics only after step n+1 is dispatched (the host never blocks the device).

    :meth:`push` hands over a step's (still on device) metrics and reads the previous step's;
    :meth:`flush` reads the one pending. Reading checks that the step was finite and adds each
    member's metrics to its ``epoch_acc`` and ``window_acc`` (:func:`member_progress`), then calls
    ``on_read(global_step + 1)`` (the run's step count after that step: where the loop writes its
    log windows). A block of ``n`` steps (:mod:`plif_jax.training.blocks`) is pushed as one, its
    metrics stacked, and read step by step in order.

    Args:
      progress: the run's progress (its accumulators are looked up at each read).
      split: host metrics -> the members' own, in member order
        (:meth:`plif_jax.training.steps.Steps.member_metrics`).
      epoch: the epoch whose steps are pushed (named in the non-finite error).
      batch_size: samples per step.
      checkpoint_dir: named in the non-finite error (its last good checkpoint is kept).
      lr: the epoch's learning rate (one per member), named in that error.
    """

    def __init__(
        self,
        progress: Progress,
        *,
        split: Callable[[Any], list[Mapping[str, Any]]],
        epoch: int,
        batch_size: int,
        checkpoint_dir: str,
        lr: Any = None,
        on_read: Callable[[int], None] | None = None,
    ):
        self.lr = lr  # the epoch's learning rate(s), named in the non-finite error
        self.progress = progress
        self.split = split
        self.epoch = epoch
        self.batch_size = batch_size
        self.checkpoint_dir = checkpoint_dir
        self.on_read = on_read
        self._pending: tuple[int, int, Any, int | None] | None = None

    def push(
        self, step_in_epoch: int, global_step: int, metrics: Any, n: int | None = None
    ) -> None:
        """Reads the pending step's metrics, then holds this one's (``n``: a block of ``n`` steps
        from ``step_in_epoch``, ``metrics`` stacked)."""
        self.flush()
        self._pending = (step_in_epoch, global_step, metrics, n)

    def flush(self) -> None:
        """Reads the pending step's metrics, if any.

        Raises:
          NonFiniteError: that step's loss, gradient or updated state is not finite (a
            ``UserError`` and a ``FloatingPointError``; nothing of this step is saved).
        """
        if self._pending is None:
            return
        step_in_epoch, global_step, m, n = self._pending
        self._pending = None
        m = jax.device_get(m)
        for i in range(1 if n is None else n):
            one = m if n is None else jax.tree.map(lambda a, i=i: np.asarray(a)[i], m)
            self._read(step_in_epoch + i, global_step + i, one)

    def _read(self, step_in_epoch: int, global_step: int, m: Any) -> None:
        per_member = self.split(m)
        bad = [i for i, mi in enumerate(per_member) if not bool(mi["finite"])]
        if bad:
            self._stop(step_in_epoch, global_step, [float(mi["loss"]) for mi in per_member], bad)
        for p, mi in zip(member_progress(self.progress), per_member, strict=True):
            p.epoch_acc.add(mi, self.batch_size)
            p.window_acc.add(mi, self.batch_size)
        if self.on_read is not None:
            self.on_read(global_step + 1)

    def _stop(self, step_in_epoch: int, global_step: int, losses: list, bad: list) -> None:
        from plif_jax.training.faults import last_good_checkpoint

        where = f" in member(s) {bad}: loss={losses}" if len(losses) > 1 else f": loss={losses[0]}"
        step = last_good_checkpoint(os.path.dirname(self.checkpoint_dir))
        kept = (
            f"no checkpoint had been saved yet in {self.checkpoint_dir}"
            if step is None
            else f"the last good checkpoint (step {step}) in {self.checkpoint_dir} is kept"
        )
        rate = ""
        if self.lr is not None:
            rate = "; this epoch ran at " + ", ".join(f"{float(v):g}" for v in np.ravel(self.lr))
        raise NonFiniteError(
            f"Non-finite loss, gradient or updated parameters/BatchNorm statistics at epoch "
            f"{self.epoch}, step {step_in_epoch} of the epoch (global step {global_step}){where}. "
            f"Stopped before saving anything non-finite; {kept}. Lower the learning rate "
            f"(--config.optim.lr{rate}) and train in a new --workdir (this one's checkpoints "
            "belong to the current config)."
        )
