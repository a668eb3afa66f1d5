"""One epoch of the run: its steps, its evaluation, logging, best-tracking and saving.

:class:`Epochs` holds the per-run objects that :func:`plif_jax.training.run.build_run` builds.
The host side always sees k >= 1 members (:class:`plif_jax.training.steps.Steps`): every scalar
is :func:`~plif_jax.training.summary.aggregate` of the members' values (one member: the value
itself; k > 1: also the std and each member's value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from plif_jax import models
from plif_jax.runtime import allocator
from plif_jax.training import blocks as blocks_lib
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import faults, member_steps
from plif_jax.training import metrics as metrics_lib
from plif_jax.training.preemption import StopRequest
from plif_jax.training.progress import (
    Accumulator,
    MetricsDrain,
    Progress,
    member_progress,
    update_best,
)
from plif_jax.training.spec import RunSpec
from plif_jax.training.steps import Steps, TrainState, learning_rate, to_device
from plif_jax.training.summary import aggregate, learnable_taus


@dataclasses.dataclass(frozen=True, kw_only=True)
class Epochs:
    """One run's fixed parts, and the work of an epoch on them.

    ``train_sources``: the training batch sources, one (every member on the same batches) or
    one per member (``members.data_order='per_member'``: each its own shuffle).
    """

    spec: RunSpec
    data: Any  # the plif_jax.data.DataBundle (its val and test sources)
    train_sources: tuple[Any, ...]
    mesh: jax.sharding.Mesh
    steps: Steps
    store: checkpoint_lib.CheckpointStore
    writer: metrics_lib.MetricWriter
    bar: Any
    stop: StopRequest
    steps_per_epoch: int
    silence: faults.SilenceWatch = dataclasses.field(default_factory=faults.SilenceWatch)
    # Several steps per dispatch and/or the training split on the device (None: neither).
    blocks: blocks_lib.Blocks | None = None

    def learning_rates(self, epoch: int) -> list[float]:
        """The epoch's learning rate of each member."""
        return [float(learning_rate(epoch, m.lr, self.spec.t_max)) for m in self.spec.members]

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """The epoch's training batches from ``start``, on the mesh (k sources: stacked)."""
        iterators = [s.batches(epoch=epoch, start=start) for s in self.train_sources]
        try:
            if len(iterators) == 1:
                for batch in iterators[0]:
                    yield to_device(batch, self.mesh)
            else:
                yield from member_steps.stacked_batches(iterators, self.mesh)
        finally:
            for it in iterators:
                it.close()

    def save(self, state: TrainState, progress: Progress, *, best: bool) -> None:
        """Checkpoints ``state`` and ``progress`` (with the length of ``metrics.jsonl``)."""
        progress.metrics_offset = self.writer.offset() if jax.process_index() == 0 else 0
        self.store.save(progress.global_step, state, progress.to_json(), best=best)

    def run_epoch(self, state: TrainState, progress: Progress) -> tuple[TrainState, bool]:
        """Trains the rest of ``progress.epoch``; if it finished, evaluates, logs and saves it.

        Returns the state and whether the epoch finished (False: stopped mid-epoch by a stop
        request, and saved there).
        """
        lrs = self.learning_rates(progress.epoch)
        t_epoch, first_step = time.time(), progress.step_in_epoch
        state = self.train(state, progress, lrs)
        train_seconds = time.time() - t_epoch
        progress.train_seconds += train_seconds
        progress.train_samples += (progress.step_in_epoch - first_step) * self.spec.batch_size
        if progress.step_in_epoch < self.steps_per_epoch:  # stopped mid-epoch
            self.save(state, progress, best=False)
            return state, False
        samples = (self.steps_per_epoch - first_step) * self.spec.batch_size
        samples_per_sec = samples / max(train_seconds, 1e-9)
        self.end(state, progress, lrs, samples_per_sec=samples_per_sec, t_epoch=t_epoch)
        return state, True

    def train(self, state: TrainState, progress: Progress, lrs: list[float]) -> TrainState:
        """The rest of ``progress.epoch``'s steps, or up to a stop request.

        One dispatch per step, or (``spec.steps_per_dispatch`` K > 1, or the data on the device)
        blocks of K steps (:mod:`plif_jax.training.blocks`); a stop request asked inside a block
        stops at its end. Each step's metrics are read one dispatch late and the log windows
        written as they are read (the same rows either way).
        """
        epoch, first_step = progress.epoch, progress.step_in_epoch
        lr_in, epoch_in = self.steps.lr_input(lrs), np.int32(epoch)
        drain = MetricsDrain(
            progress,
            split=self.steps.member_metrics,
            epoch=epoch,
            batch_size=self.spec.batch_size,
            checkpoint_dir=self.store.directory,
            lr=lrs,
            on_read=lambda step: self._log_window(progress, lrs, step),
        )
        resident = self.blocks is not None and self.blocks.resident is not None
        if resident:  # the epoch's sample indices: the loader's permutation
            feed, batches = blocks_lib.block_indices(self.train_sources, epoch), None
        else:
            feed = batches = self.batches(epoch, first_step)
        k = self.spec.steps_per_dispatch if self.blocks is not None else 1
        # The steps' large buffers reused, not mapped afresh each step (plif_jax.runtime.allocator).
        closing = contextlib.closing(batches) if batches else contextlib.nullcontext()
        with allocator.reusing_freed_memory(), closing:
            for first, n in blocks_lib.plan(first_step, self.steps_per_epoch, k):
                state, m, stacked = self._dispatch(state, feed, first, n, lr_in, epoch_in)
                drain.push(first, progress.global_step, m, n if stacked else None)
                progress.step_in_epoch = first + n
                progress.global_step += n
                for _ in range(n):
                    self.stop.count_step()
                self.bar.update(n)
                if self.stop.requested:
                    break
            drain.flush()
        return state

    def _dispatch(self, state, feed, first: int, n: int, lr_in, epoch_in):
        """Steps ``first .. first + n - 1`` in one dispatch: ``(state, metrics, stacked)``."""
        blocks = self.blocks
        if blocks is not None and blocks.resident is not None:
            batches = blocks.gather(feed[first : first + n])  # a dispatch of its own
        else:
            batches = [next(feed) for _ in range(n)]
        if n == 1:  # the one-step program, whatever the data's home
            state, m = self.steps.train(state, batches[0], lr_in, epoch_in, np.int32(first))
            return state, m, False
        return (*blocks.run(state, batches, lr_in, epoch_in, first), True)

    def _log_window(self, progress: Progress, lrs: list[float], step: int) -> None:
        """Writes the train scalars of the window ending at global step ``step`` (if one does)."""
        if step % self.spec.log_every_steps:
            return
        ms = member_progress(progress)
        scalars = aggregate("train/loss", [p.window_acc.mean_loss() for p in ms])
        scalars.update(aggregate("train/accuracy", [p.window_acc.accuracy() for p in ms]))
        scalars.update(aggregate("lr", lrs))
        self.writer.write(epoch=progress.epoch, step=step, scalars=scalars)
        self.bar.set_postfix(
            epoch=progress.epoch, loss=f"{scalars['train/loss']:.4f}", lr=f"{scalars['lr']:.2e}"
        )
        for p in ms:
            p.window_acc = Accumulator()

    def end(
        self,
        state: TrainState,
        progress: Progress,
        lrs: list[float],
        *,
        samples_per_sec: float,
        t_epoch: float,
    ) -> None:
        """Evaluates the finished epoch, logs it, moves ``progress`` to the next and saves."""
        epoch, ms = progress.epoch, member_progress(progress)
        test, val, improved = self._evaluate(state, progress)
        scalars = aggregate("train/epoch_loss", [p.epoch_acc.mean_loss() for p in ms])
        scalars.update(aggregate("train/epoch_accuracy", [p.epoch_acc.accuracy() for p in ms]))
        scalars.update(aggregate("test/accuracy", test["accuracy"]))
        scalars.update(aggregate("test/loss", test["loss"]))
        scalars.update(aggregate("lr", lrs))
        if val is not None:
            scalars.update(aggregate("val/accuracy", val["accuracy"]))
            scalars.update(aggregate("val/loss", val["loss"]))
            scalars.update(aggregate("best/test_at_best_val", [p.test_at_best_val for p in ms]))
        scalars.update(aggregate("best/test_accuracy", [p.best_test_accuracy for p in ms]))
        if progress.members:
            scalars["best/mean_test_accuracy"] = progress.best_test_accuracy
        scalars.update(self._model_scalars(state, ms))
        self._watch_silence(ms, epoch, lrs)
        scalars["perf/samples_per_sec"] = samples_per_sec
        if progress.members:
            scalars["perf/seed_samples_per_sec"] = samples_per_sec * len(ms)
        scalars["perf/epoch_seconds"] = time.time() - t_epoch
        self.writer.write(epoch=epoch, step=progress.global_step, scalars=scalars)
        _log_epoch(epoch, scalars, test["accuracy"], val is not None)
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        for p in ms:
            p.epoch_acc = Accumulator()
        self.save(state, progress, best=improved)

    def _evaluate(self, state: TrainState, progress: Progress) -> tuple[dict, dict | None, bool]:
        """The members' test (and B: val) results; updates the best records.

        Returns ``(test, val, improved)``: ``improved`` says whether this epoch is the run's new
        best checkpoint, by the members' MEAN accuracy (one member: its own).
        """
        protocol, epoch = self.spec.protocol, progress.epoch
        test = self.steps.evaluate(state, self.data.test.batches(), self.mesh)
        val = None
        if protocol == "B":
            val = self.steps.evaluate(state, self.data.val.batches(), self.mesh)
        for i, p in enumerate(progress.members):  # k > 1: each member's own records
            update_best(p, protocol, epoch, test["accuracy"][i], val and val["accuracy"][i])
        improved = update_best(
            progress,
            protocol,
            epoch,
            float(np.mean(test["accuracy"])),
            None if val is None else float(np.mean(val["accuracy"])),
        )
        return test, val, improved

    def _model_scalars(self, state: TrainState, ms: list[Progress]) -> dict[str, float]:
        """tau, alpha and firing rate per layer over the members."""
        scalars: dict[str, float] = {}
        member_models = self.steps.member_models(state)
        for key, fn in (("tau", learnable_taus), ("alpha", models.layer_alphas)):
            per = [fn(m) for m in member_models]
            for layer in per[0]:
                scalars.update(aggregate(f"{key}/{layer}", [d[layer] for d in per]))
        rates = [p.epoch_acc.mean_rates() for p in ms]
        for layer in rates[0]:
            scalars.update(aggregate(f"firing_rate/{layer}", [r[layer] for r in rates]))
        return scalars

    def _watch_silence(self, ms: list[Progress], epoch: int, lrs: list[float]) -> None:
        """Warns (once) when a member's network fired no spike in the whole epoch."""
        for i, p in enumerate(ms):
            member = i if len(ms) > 1 else None
            self.silence.check(p.epoch_acc.mean_rates(), epoch, lrs[i], member=member)


def _log_epoch(epoch: int, scalars: dict[str, float], test_acc: list[float], val: bool) -> None:
    k = len(test_acc)
    spread = ""
    if k > 1:
        per_member = " ".join(f"{a:.4f}" for a in test_acc)
        spread = f" +- {scalars['test/accuracy/std']:.4f} ({per_member})"
    logging.info(
        "epoch %d%s: train loss %.5f acc %.4f | test acc %.4f%s%s | lr %.3e",
        epoch,
        f" ({k} members)" if k > 1 else "",
        scalars["train/epoch_loss"],
        scalars["train/epoch_accuracy"],
        scalars["test/accuracy"],
        spread,
        f" | val acc {scalars['val/accuracy']:.4f}" if val else "",
        scalars["lr"],
    )
