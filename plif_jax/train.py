"""Training and evaluation: the paper's protocol, as a short loop over small named parts.

- Protocol A: test after every epoch, report the best test accuracy (first epoch reaching it).
  Protocol B: train on the split, test and validate every epoch, report the test accuracy at the
  best validation accuracy (ties go to the later epoch, the reference's ``<=``).

The parts: :mod:`plif_jax.steps` (loss, the jitted train and eval steps, ``evaluate``),
:mod:`plif_jax.progress` (the run's :class:`~plif_jax.progress.Progress`, stored in every
checkpoint; best-tracking; reading step metrics one step late), :mod:`plif_jax.preemption`
(SIGTERM/SIGINT checkpoint at the next step boundary), :mod:`plif_jax.checkpoint` and
:mod:`plif_jax.metrics`. The step functions are re-exported here (``train.train_step``...).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from plif_jax import checkpoint as checkpoint_lib
from plif_jax import config as config_lib
from plif_jax import member_steps, models, parallel
from plif_jax import members as members_lib
from plif_jax import metrics as metrics_lib
from plif_jax.preemption import StopRequest
from plif_jax.progress import Accumulator, MetricsDrain, Progress, update_best
from plif_jax.steps import (
    Steps,
    TrainState,
    assign_state,
    eval_step,
    evaluate,
    init_train_state,
    jit_steps,
    learning_rate,
    loss_fn,
    make_optimizer,
    to_device,
    train_step,
)

__all__ = [
    "Progress", "TrainState", "assign_state", "eval_step", "evaluate", "format_summary",
    "init_train_state", "learning_rate", "loss_fn", "make_optimizer", "record_run_info",
    "train_and_evaluate", "train_step", "update_best",
]  # fmt: skip


def record_run_info(workdir: str, config: ml_collections.ConfigDict, mesh) -> str:
    """Writes ``config.json`` and ``run_info.txt`` (devices, versions) to ``workdir``."""
    import flax
    import orbax.checkpoint as ocp

    lines = [
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"python: {platform.python_version()} ({platform.platform()})",
        f"jax: {jax.__version__}, flax: {flax.__version__}, optax: {optax.__version__}, "
        f"orbax-checkpoint: {getattr(ocp, '__version__', '?')}, numpy: {np.__version__}",
        f"backend: {jax.default_backend()}, processes: {jax.process_count()}, "
        f"devices: {jax.device_count()} ({', '.join(str(d) for d in jax.devices())})",
        f"mesh: {dict(mesh.shape)}",
    ]
    text = "\n".join(lines)
    if jax.process_index() == 0:
        checkpoint_lib.write_json_atomic(
            os.path.join(workdir, "config.json"), json.loads(config.to_json())
        )
        with open(os.path.join(workdir, "run_info.txt"), "a", encoding="utf-8") as f:
            f.write(text + "\n\n")
    return text


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the paper's training protocol in ``workdir``.

    Args:
      config: run configuration (``configs/``).
      workdir: output directory: checkpoints, TensorBoard events, ``metrics.jsonl``,
        ``summary.json``. A directory holding a checkpoint is resumed from it.
      stop_after_steps: simulate a preemption (the SIGTERM path) once this process has run
        this many training steps: checkpoint at that step boundary and return.

    Returns:
      The summary (also written to ``<workdir>/summary.json``): best accuracies and their
      epochs, final tau per layer, wall time, samples/s, ``status`` ('completed' or
      'interrupted') and the number of times each step was compiled.

    Raises:
      ConfigError: an invalid config (a ``ValueError``; :mod:`plif_jax.errors`).
      IncompatibleRunError: a checkpoint from an incompatible config (a ``ValueError``).
      CheckpointError: a workdir that cannot be written, or none of its checkpoints readable.
      MissingDataError, DataError: the dataset is missing or damaged.
      FloatingPointError: a non-finite loss or gradient (the last good checkpoint is kept).
    """
    t_start = time.time()
    parallel.initialize_distributed(bool(config.distributed))
    # Every config check before the mesh (num_devices) and before any file is touched.
    config_lib.validate(config, num_devices=int(config.num_devices) or jax.device_count())
    mesh = parallel.create_mesh(int(config.num_devices))
    workdir = os.path.abspath(workdir)
    checkpoint_lib.prepare_workdir(workdir)  # a file or an unwritable path: a CheckpointError
    is_main = jax.process_index() == 0
    store = checkpoint_lib.CheckpointStore(
        workdir, keep=config.checkpoint.keep, keep_best=config.checkpoint.keep_best
    )
    writer = bar = None
    try:
        resuming = store.check_config(config)  # raises on an incompatible checkpoint
        logging.info("Run info:\n%s", record_run_info(workdir, config, mesh))
        # The members (plif_jax.members): one for num_seeds=1, whose config is then the run's
        # own up to its seeds and per-member values.
        specs = members_lib.members(config)
        member_configs = [members_lib.member_config(config, m) for m in specs]
        bundle = _open_data(member_configs[0], mesh)
        if len(specs) == 1:
            config = member_configs[0]
            name, options = models.spec_from_config(config, bundle.info)
            model = models.build_model(name, options, seed=specs[0].seed)
            store.save_model_spec(name, options)
            steps = jit_steps(
                model,
                tx=make_optimizer(config),
                preprocess=bundle.preprocess,
                seed=specs[0].data_seed,
                num_classes=int(bundle.info.num_classes),
                time_steps=int(getattr(model, "T", None) or config.data.T),
                mesh=mesh,
            )
            state = parallel.put_replicated(init_train_state(model, config), mesh)
            fresh = Progress()
        else:
            model, state, steps = _build_members(config, specs, member_configs, bundle, store, mesh)
            fresh = Progress(members=[Progress() for _ in specs])
        del model  # the state lives in `state` from here on
        state, progress = _resume(store, state) if resuming else (state, fresh)
        writer = metrics_lib.MetricWriter(
            workdir,
            resume_offset=progress.metrics_offset,
            purge_step=progress.global_step + 1 if resuming else 0,
            enabled=is_main,
        )
        steps_per_epoch = bundle.train.num_batches
        if int(config.steps_per_epoch) > 0:  # a cap, for short runs
            steps_per_epoch = min(steps_per_epoch, int(config.steps_per_epoch))
        num_epochs, batch_size = int(config.num_epochs), int(config.batch_size)
        bar = _progress_bar(config, progress, steps_per_epoch, is_main)
        with StopRequest(stop_after_steps) as stop:
            run = _Epochs(config, bundle, mesh, steps, store, writer, bar, stop, steps_per_epoch)
            run.set_members(specs, member_configs)
            while progress.epoch < num_epochs and not stop.requested:
                lr = run.learning_rate(progress.epoch)
                t_epoch, first_step = time.time(), progress.step_in_epoch
                state = run.train(state, progress, lr)
                train_seconds = time.time() - t_epoch
                progress.train_seconds += train_seconds
                progress.train_samples += (progress.step_in_epoch - first_step) * batch_size
                if progress.step_in_epoch < steps_per_epoch:  # stopped mid-epoch
                    run.save(state, progress, best=False)
                    break
                samples = (steps_per_epoch - first_step) * batch_size
                samples_per_sec = samples / max(train_seconds, 1e-9)
                run.end(state, progress, lr, samples_per_sec=samples_per_sec, t_epoch=t_epoch)
            status = "completed" if progress.epoch >= num_epochs else "interrupted"
            bar.close()  # before the summary lines
            # The summary describes saved work only: a kill before the last save is on disk
            # must not leave a summary of a run that a restart will partly redo.
            store.wait()
            wall = time.time() - t_start
            summary = _summary(config, progress, steps, state, status, wall, workdir)
            if progress.members:
                summary = _members_summary(summary, run, progress, state)
        if is_main:
            checkpoint_lib.write_json_atomic(
                os.path.join(workdir, "summary.json"), summary, sort_keys=False
            )
        logging.info("Summary: %s", json.dumps(summary))
        return summary
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        store.close()


def _open_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
    """The run's data bundle, checked against the config and sharded over ``mesh``."""
    # Imported only now (tonic, tfds: seconds): a config or workdir error costs none of it.
    from plif_jax import data as data_lib

    bundle = data_lib.get_datasets(config)
    config_lib.validate_against_data(config, len(bundle.train))
    if config.protocol == "B" and bundle.val is None:
        raise ValueError("Protocol B needs a validation split but the data bundle has none.")
    for source in (bundle.train, bundle.val, bundle.test):
        if source is not None and hasattr(source, "sharding"):
            # Multi-process: each process then reads only its own rows of every batch.
            source.sharding = parallel.batch_sharded(mesh)
    return bundle


def _build_members(config, specs, member_configs, bundle, store, mesh):
    """k members: their models (member 0's returned), stacked train state and compiled steps."""
    built = [models.spec_from_config(c, bundle.info) for c in member_configs]
    member_models = [
        models.build_model(name, options, seed=m.seed)
        for (name, options), m in zip(built, specs, strict=True)
    ]
    states = [init_train_state(m, config) for m in member_models]
    member_steps.check_same_structure(states)
    name, options = built[0]
    store.save_model_spec(
        name,
        options,
        members=[
            {"seed": m.seed, "data_seed": m.data_seed, "values": m.values, "options": o}
            for m, (_, o) in zip(specs, built, strict=True)
        ],
    )
    model = member_models[0]
    steps = member_steps.jit_member_steps(
        model,
        k=len(specs),
        tx=make_optimizer(config),
        preprocess=bundle.preprocess,
        data_seeds=[m.data_seed for m in specs],
        per_member_data=members_lib.data_order(config) == "per_member",
        num_classes=int(bundle.info.num_classes),
        time_steps=int(getattr(model, "T", None) or config.data.T),
        mesh=mesh,
        layout=members_lib.layout(config),
    )
    state = parallel.put_replicated(member_steps.stack(states), mesh)
    return model, state, steps


def _resume(store: checkpoint_lib.CheckpointStore, template: TrainState):
    """The newest readable checkpoint's state and progress (damaged ones are set aside)."""
    state, meta, step = store.restore(template, "latest", set_aside_damaged=True)
    progress = Progress.from_json(meta)
    logging.info(
        "Resuming from checkpoint step %d (epoch %d, batch %d).",
        step,
        progress.epoch,
        progress.step_in_epoch,
    )
    return state, progress


def _progress_bar(config, progress: Progress, steps_per_epoch: int, is_main: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=int(config.num_epochs) * steps_per_epoch,
        initial=progress.epoch * steps_per_epoch + progress.step_in_epoch,
        # None: drawn only when stderr is a terminal. A log file gets the per-epoch log
        # lines instead of a carriage-return redraw every couple of seconds.
        disable=None if (config.progress_bar and is_main) else True,
        unit="step",
        dynamic_ncols=True,
        mininterval=2.0,
    )


@dataclasses.dataclass
class _Epochs:
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
        )
        batches = self._train_batches(epoch, first_step)
        try:
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
        finally:
            batches.close()
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
        scalars.update({f"tau/{k}": v for k, v in _taus(model).items()})
        scalars.update({f"alpha/{k}": v for k, v in models.layer_alphas(model).items()})
        scalars.update({f"firing_rate/{k}": v for k, v in acc.mean_rates().items()})
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
        for key, fn in (("tau", _taus), ("alpha", models.layer_alphas)):
            per = [fn(m) for m in member_models]
            for layer in per[0]:
                scalars.update(aggregate(f"{key}/{layer}", [d[layer] for d in per]))
        rates = [p.epoch_acc.mean_rates() for p in ms]
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


def aggregate(name: str, values) -> dict[str, float]:
    """``{name: mean, name/std: std (ddof 1), name/m<i>: member i}`` of k > 1 members' values."""
    values = [float(v) for v in values]
    out = {name: float(np.mean(values)), f"{name}/std": _std(values)}
    out.update({f"{name}/m{i}": v for i, v in enumerate(values)})
    return out


def _std(values) -> float:
    """The sample standard deviation (ddof 1; 0 for one value)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _member_batches(sources, epoch: int, start: int, mesh):
    """Per-member data: each member's batch of the step, stacked on a member axis."""
    iterators = [s.batches(epoch=epoch, start=start) for s in sources]
    try:
        yield from member_steps.stacked_batches(iterators, mesh)
    finally:
        for it in iterators:
            it.close()


def _members_summary(summary: dict, run: _Epochs, progress: Progress, state) -> dict:
    """A k-member run's summary: each member's records and the mean +- std over members.

    The run-level ``best_test_accuracy`` / ``best_test_epoch`` (and B's) are those of the members'
    MEAN accuracy curve (the best checkpoint's epoch); ``accuracy_A`` (and ``accuracy_B``) are
    the mean and std (ddof 1) of each member's own accuracy-A (B) at its own best epoch.
    """
    protocol = summary["protocol"]
    taus = [_taus(m) for m in run._member_models(state)]
    members = []
    for spec, p, tau in zip(run.members, progress.members, taus, strict=True):
        record = {
            "seed": spec.seed,
            "data_seed": spec.data_seed,
            "values": dict(spec.values),
            "best_test_accuracy": p.best_test_accuracy,
            "best_test_epoch": p.best_test_epoch,
            "final_test_accuracy": p.last_test_accuracy,
        }
        if protocol == "B":
            record.update(
                test_at_best_val=p.test_at_best_val,
                best_val_accuracy=p.best_val_accuracy,
                best_val_epoch=p.best_val_epoch,
            )
        record["tau"] = tau
        members.append(record)
    out = dict(summary)
    out.pop("tau")
    tail = {k: out.pop(k) for k in ("wall_seconds", "train_samples_per_sec", "compilations")}
    workdir = out.pop("workdir")
    out["num_seeds"] = len(members)
    out["final_test_accuracy_std"] = _std([m["final_test_accuracy"] for m in members])

    def stats(key):
        values = [m[key] for m in members]
        return {"mean": float(np.mean(values)), "std": _std(values), "per_member": values}

    out["accuracy_A"] = stats("best_test_accuracy")
    if protocol == "B":
        out["accuracy_B"] = stats("test_at_best_val")
    out["members"] = members
    out["tau"] = {k: float(np.mean([t[k] for t in taus])) for k in (taus[0] if taus else {})}
    out["tau_std"] = {k: _std([t[k] for t in taus]) for k in (taus[0] if taus else {})}
    out.update(tail)
    out["seed_samples_per_sec"] = out["train_samples_per_sec"] * len(members)
    out["workdir"] = workdir
    return out


def _taus(model) -> dict[str, float]:
    """The learnable (PLIF) taus: what ``tau/<layer>`` and the summary's ``tau`` report."""
    return models.layer_taus(model, learnable_only=True)


def _summary(config, progress: Progress, steps: Steps, state, status, wall, workdir) -> dict:
    p = progress
    out: dict[str, Any] = {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "status": status,
        "epochs_completed": p.epoch,
        "global_step": p.global_step,
        "best_test_accuracy": p.best_test_accuracy,
        "best_test_epoch": p.best_test_epoch,
        "final_test_accuracy": p.last_test_accuracy,
    }
    if config.protocol == "B":
        out.update(
            test_at_best_val=p.test_at_best_val,
            best_val_accuracy=p.best_val_accuracy,
            best_val_epoch=p.best_val_epoch,
        )
    out["tau"] = _taus(steps.model(state)) if not p.members else {}  # members: their mean
    out["wall_seconds"] = wall
    out["train_samples_per_sec"] = p.train_samples / max(p.train_seconds, 1e-9)
    out["compilations"] = dict(steps.traces)
    out["workdir"] = workdir
    return out


def _members_lines(summary: Mapping[str, Any]) -> list[str]:
    """The per-member and mean +- std lines of a k-member run's printed summary."""
    k, protocol = summary["num_seeds"], summary["protocol"]
    lines = [f"{k} members ({summary['seed_samples_per_sec']:.1f} seed-samples/s):"]
    for i, m in enumerate(summary["members"]):
        values = "".join(f", {f} {v:g}" for f, v in m["values"].items())
        if m["best_test_epoch"] < 0:
            lines.append(f"  member {i} (seed {m['seed']}{values}): no epoch completed yet")
            continue
        text = (
            f"  member {i} (seed {m['seed']}{values}): accuracy-A "
            f"{100 * m['best_test_accuracy']:.2f}% at epoch {m['best_test_epoch']}"
        )
        if protocol == "B" and m["best_val_epoch"] >= 0:
            text += (
                f", accuracy-B {100 * m['test_at_best_val']:.2f}% at epoch {m['best_val_epoch']}"
            )
        text += f"; final {100 * m['final_test_accuracy']:.2f}%"
        if m["tau"]:
            text += "; tau " + " ".join(f"{n} {v:.3f}" for n, v in m["tau"].items())
        lines.append(text)
    for key, label in (("accuracy_A", "accuracy-A (best test)"),
                       ("accuracy_B", "accuracy-B (test at best val)")):  # fmt: skip
        if key in summary and summary["best_test_epoch"] >= 0:
            st = summary[key]
            lines.append(
                f"{label}, mean +- std over {k} members: {100 * st['mean']:.2f} +- "
                f"{100 * st['std']:.2f}%"
            )
    if summary["best_test_epoch"] >= 0:
        lines.append(
            f"members' mean test accuracy: best {100 * summary['best_test_accuracy']:.2f}% at "
            f"epoch {summary['best_test_epoch']} (the best checkpoint); final "
            f"{100 * summary['final_test_accuracy']:.2f}%"
        )
    if summary["tau"]:
        taus = ", ".join(
            f"{n} {v:.3f} +- {summary['tau_std'][n]:.3f}" for n, v in summary["tau"].items()
        )
        lines.append(f"tau per PLIF layer, mean +- std: {taus}")
    return lines


def format_summary(summary: Mapping[str, Any]) -> str:
    """The human-readable end-of-run lines printed by ``experiments/train.py``."""
    lines = [
        f"{summary['dataset']} (protocol {summary['protocol']}): {summary['status']} after "
        f"{summary['epochs_completed']} epochs, {summary['global_step']} steps, "
        f"{summary['wall_seconds']:.1f} s wall, {summary['train_samples_per_sec']:.1f} train "
        "samples/s",
    ]
    if summary["best_test_epoch"] < 0:
        lines.append("no epoch completed yet: no test accuracy")
    else:
        lines.append(
            f"accuracy-A (best test): {100 * summary['best_test_accuracy']:.2f}% at epoch "
            f"{summary['best_test_epoch']}; final test {100 * summary['final_test_accuracy']:.2f}%"
        )
    if summary["protocol"] == "B" and summary["best_val_epoch"] >= 0:
        lines.append(
            f"accuracy-B (test at best val): {100 * summary['test_at_best_val']:.2f}% at epoch "
            f"{summary['best_val_epoch']} (val {100 * summary['best_val_accuracy']:.2f}%)"
        )
    if summary.get("members"):
        lines[1:] = _members_lines(summary)
    elif summary["tau"]:
        taus = ", ".join(f"{k} {v:.3f}" for k, v in summary["tau"].items())
        lines.append(f"tau per PLIF layer: {taus}")
    lines.append(f"summary: {os.path.join(summary['workdir'], 'summary.json')}")
    return "\n".join(lines)
