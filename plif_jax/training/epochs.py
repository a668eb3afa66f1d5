"""One epoch of the run: its steps, its evaluation, logging, best-tracking and saving.

:class:`Epochs` holds the per-run objects that :func:`plif_jax.training.run.train_and_evaluate`
builds.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from plif_jax import models
from plif_jax.runtime import allocator
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import faults, member_steps
from plif_jax.training import members as members_lib
from plif_jax.training import metrics as metrics_lib
from plif_jax.training.preemption import StopRequest
from plif_jax.training.progress import Accumulator, MetricsDrain, Progress, update_best
from plif_jax.training.steps import (
    Steps,
    TrainState,
    evaluate,
    learning_rate,
    to_device,
)
from plif_jax.training.summary import aggregate, learnable_taus


@dataclasses.dataclass
class Epochs:
    """One run's fixed parts, and the work of an epoch on them."""

    config: ml_collections.ConfigDict
    bundle: Any
    mesh: jax.sharding.Mesh
    steps: Steps
    store: checkpoint_lib.CheckpointStore
    writer: metrics_lib.MetricWriter
    bar: Any
    stop: StopRequest
    steps_per_epoch: int
    members: list = dataclasses.field(default_factory=list)  # k > 1: the Member specs
    member_configs: list = dataclasses.field(default_factory=list)
    member_sources: list | None = None  # per-member data: each member's training batches
    silence: faults.SilenceWatch = dataclasses.field(default_factory=faults.SilenceWatch)

    def set_members(self, specs: list, member_configs: list) -> None:
        """A run of k > 1 members (a one-member run keeps the plain path)."""
        if len(specs) == 1:
            return
        self.members, self.member_configs = list(specs), list(member_configs)
        if members_lib.data_order(self.config) == "per_member":
            self.member_sources = []
            for m in specs:
                source = copy.copy(self.bundle.train)
                source.seed = m.data_seed  # the shuffle order; augmentation keys are in the step
                self.member_sources.append(source)

    def learning_rate(self, epoch: int) -> float | list[float]:
        """The epoch's learning rate (k members: one per member)."""
        t_max = self.config.optim.t_max
        if not self.members:
            return float(learning_rate(epoch, self.config.optim.lr, t_max))
        return [float(learning_rate(epoch, c.optim.lr, t_max)) for c in self.member_configs]

    def _train_batches(self, epoch: int, start: int):
        if self.member_sources is None:
            return self.bundle.train.batches(epoch=epoch, start=start)
        return _member_batches(self.member_sources, epoch, start, self.mesh)

    def save(self, state: TrainState, progress: Progress, *, best: bool) -> None:
        """Checkpoints ``state`` and ``progress`` (with the length of ``metrics.jsonl``)."""
        progress.metrics_offset = self.writer.offset() if jax.process_index() == 0 else 0
        self.store.save(progress.global_step, state, progress.to_json(), best=best)

    def train(self, state: TrainState, progress: Progress, lr: float) -> TrainState:
        """The rest of ``progress.epoch``'s steps, or up to a stop request."""
        epoch, first_step = progress.epoch, progress.step_in_epoch
        lr_in = np.asarray(lr, np.float32) if self.members else np.float32(lr)
        epoch_in = np.int32(epoch)
        log_every = max(1, int(self.config.log_every_steps))
        drain = MetricsDrain(
            progress,
            epoch=epoch,
            batch_size=int(self.config.batch_size),
            checkpoint_dir=self.store.directory,
            lr=lr,
        )
        batches = self._train_batches(epoch, first_step)
        # The steps' large buffers reused, not mapped afresh each step (plif_jax.runtime.allocator).
        with allocator.reusing_freed_memory(), contextlib.closing(batches):
            for step_idx in range(first_step, self.steps_per_epoch):
                batch = to_device(next(batches), self.mesh)
                state, m = self.steps.train(state, batch, lr_in, epoch_in, np.int32(step_idx))
                drain.push(step_idx, progress.global_step, m)  # reads the previous step's
                progress.step_in_epoch = step_idx + 1
                progress.global_step += 1
                self.stop.count_step()
                self.bar.update(1)
                if progress.global_step % log_every == 0:
                    drain.flush()
                    self._log_window(progress, lr)
                if self.stop.requested:
                    break
            drain.flush()
        return state

    def _log_window(self, progress: Progress, lr: float) -> None:
        if progress.members:
            return self._log_members_window(progress, lr)
        w = progress.window_acc
        scalars = {"train/loss": w.mean_loss(), "train/accuracy": w.accuracy(), "lr": lr}
        self.writer.write(epoch=progress.epoch, step=progress.global_step, scalars=scalars)
        self.bar.set_postfix(
            epoch=progress.epoch, loss=f"{scalars['train/loss']:.4f}", lr=f"{lr:.2e}"
        )
        progress.window_acc = Accumulator()

    def end(
        self,
        state: TrainState,
        progress: Progress,
        lr: float,
        *,
        samples_per_sec: float,
        t_epoch: float,
    ) -> None:
        """Evaluates the finished epoch, logs it, moves ``progress`` to the next and saves."""
        if progress.members:
            return self._end_members(state, progress, lr, samples_per_sec, t_epoch)
        protocol, epoch, acc = self.config.protocol, progress.epoch, progress.epoch_acc
        test = evaluate(self.steps.eval, state, self.bundle.test.batches(), self.mesh)
        scalars = {
            "train/epoch_loss": acc.mean_loss(),
            "train/epoch_accuracy": acc.accuracy(),
            "test/accuracy": test["accuracy"],
            "test/loss": test["loss"],
            "lr": lr,
        }
        val = None
        if protocol == "B":
            val = evaluate(self.steps.eval, state, self.bundle.val.batches(), self.mesh)
            scalars.update({"val/accuracy": val["accuracy"], "val/loss": val["loss"]})
        improved = update_best(progress, protocol, epoch, test["accuracy"], val and val["accuracy"])
        if protocol == "B":
            scalars["best/test_at_best_val"] = progress.test_at_best_val
        scalars["best/test_accuracy"] = progress.best_test_accuracy
        model = self.steps.model(state)
        scalars.update({f"tau/{k}": v for k, v in learnable_taus(model).items()})
        scalars.update({f"alpha/{k}": v for k, v in models.layer_alphas(model).items()})
        scalars.update({f"firing_rate/{k}": v for k, v in acc.mean_rates().items()})
        self.silence.check(acc.mean_rates(), epoch, lr)
        scalars["perf/samples_per_sec"] = samples_per_sec
        scalars["perf/epoch_seconds"] = time.time() - t_epoch
        self.writer.write(epoch=epoch, step=progress.global_step, scalars=scalars)
        logging.info(
            "epoch %d: train loss %.5f acc %.4f | test acc %.4f%s | lr %.3e",
            epoch,
            scalars["train/epoch_loss"],
            scalars["train/epoch_accuracy"],
            test["accuracy"],
            f" | val acc {val['accuracy']:.4f}" if val is not None else "",
            lr,
        )
        progress.epoch, progress.step_in_epoch, progress.epoch_acc = epoch + 1, 0, Accumulator()
        self.save(state, progress, best=improved)

    # --- k > 1 members --------------------------------------------------------------------------
    def _log_members_window(self, progress: Progress, lr: list[float]) -> None:
        ws = [p.window_acc for p in progress.members]
        scalars = aggregate("train/loss", [w.mean_loss() for w in ws])
        scalars.update(aggregate("train/accuracy", [w.accuracy() for w in ws]))
        scalars.update(aggregate("lr", lr))
        self.writer.write(epoch=progress.epoch, step=progress.global_step, scalars=scalars)
        self.bar.set_postfix(
            epoch=progress.epoch, loss=f"{scalars['train/loss']:.4f}", lr=f"{scalars['lr']:.2e}"
        )
        for p in progress.members:
            p.window_acc = Accumulator()

    def _member_models(self, state: TrainState) -> list:
        return [
            self.steps.model(member_steps.member_view(state, i)) for i in range(len(self.members))
        ]

    def _end_members(
        self, state: TrainState, progress: Progress, lr: list[float], samples_per_sec, t_epoch
    ) -> None:
        protocol, epoch, ms = self.config.protocol, progress.epoch, progress.members
        test = member_steps.evaluate_members(
            self.steps.eval, state, self.bundle.test.batches(), self.mesh
        )
        val = None
        if protocol == "B":
            val = member_steps.evaluate_members(
                self.steps.eval, state, self.bundle.val.batches(), self.mesh
            )
        for i, p in enumerate(ms):
            update_best(p, protocol, epoch, test["accuracy"][i], val and val["accuracy"][i])
        # The run's own records follow the members' mean: it picks the best checkpoint.
        improved = update_best(
            progress,
            protocol,
            epoch,
            float(np.mean(test["accuracy"])),
            None if val is None else float(np.mean(val["accuracy"])),
        )
        scalars = aggregate("train/epoch_loss", [p.epoch_acc.mean_loss() for p in ms])
        scalars.update(aggregate("train/epoch_accuracy", [p.epoch_acc.accuracy() for p in ms]))
        scalars.update(aggregate("test/accuracy", test["accuracy"]))
        scalars.update(aggregate("test/loss", test["loss"]))
        scalars.update(aggregate("lr", lr))
        if val is not None:
            scalars.update(aggregate("val/accuracy", val["accuracy"]))
            scalars.update(aggregate("val/loss", val["loss"]))
            scalars.update(aggregate("best/test_at_best_val", [p.test_at_best_val for p in ms]))
        scalars.update(aggregate("best/test_accuracy", [p.best_test_accuracy for p in ms]))
        scalars["best/mean_test_accuracy"] = progress.best_test_accuracy
        member_models = self._member_models(state)
        for key, fn in (("tau", learnable_taus), ("alpha", models.layer_alphas)):
            per = [fn(m) for m in member_models]
            for layer in per[0]:
                scalars.update(aggregate(f"{key}/{layer}", [d[layer] for d in per]))
        rates = [p.epoch_acc.mean_rates() for p in ms]
        for i, r in enumerate(rates):
            self.silence.check(r, epoch, lr[i], member=i)
        for layer in rates[0]:
            scalars.update(aggregate(f"firing_rate/{layer}", [r[layer] for r in rates]))
        scalars["perf/samples_per_sec"] = samples_per_sec
        scalars["perf/seed_samples_per_sec"] = samples_per_sec * len(ms)
        scalars["perf/epoch_seconds"] = time.time() - t_epoch
        self.writer.write(epoch=epoch, step=progress.global_step, scalars=scalars)
        logging.info(
            "epoch %d (%d members): train loss %.5f | test acc %.4f +- %.4f (%s)%s",
            epoch,
            len(ms),
            scalars["train/epoch_loss"],
            scalars["test/accuracy"],
            scalars["test/accuracy/std"],
            " ".join(f"{a:.4f}" for a in test["accuracy"]),
            f" | val acc {scalars['val/accuracy']:.4f}" if val is not None else "",
        )
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        for p in ms:
            p.epoch_acc = Accumulator()
        self.save(state, progress, best=improved)


def _member_batches(sources, epoch: int, start: int, mesh):
    """Per-member data: each member's batch of the step, stacked on a member axis."""
    iterators = [s.batches(epoch=epoch, start=start) for s in sources]
    try:
        yield from member_steps.stacked_batches(iterators, mesh)
    finally:
        for it in iterators:
            it.close()
