"""Training and evaluation: the paper's protocol, as a short loop over small named parts.

- Protocol A: test after every epoch, report the best test accuracy (first epoch reaching it).
  Protocol B: train on the split, test and validate every epoch, report the test accuracy at the
  best validation accuracy (ties go to the later epoch, the reference's ``<=``).

The parts: :mod:`plif_jax.training.spec` (the config, checked and resolved once into a frozen
:class:`~plif_jax.training.spec.RunSpec`), :mod:`plif_jax.training.steps` (loss, the jitted train
and eval steps, ``evaluate``), :mod:`plif_jax.training.epochs` (one epoch's work),
:mod:`plif_jax.training.progress` (the run's :class:`~plif_jax.training.progress.Progress`, stored
in every
checkpoint; best-tracking; reading step metrics one step late), :mod:`plif_jax.training.preemption`
(SIGTERM/SIGINT checkpoint at the next step boundary), :mod:`plif_jax.training.checkpoint` and
:mod:`plif_jax.training.metrics`. The step functions are re-exported here (``train.train_step``...).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from plif_jax import models
from plif_jax.runtime import parallel
from plif_jax.training import blocks as blocks_lib
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import config as config_lib
from plif_jax.training import faults, member_steps, workdir_lock
from plif_jax.training import metrics as metrics_lib
from plif_jax.training import spec as spec_lib
from plif_jax.training.epochs import Epochs
from plif_jax.training.preemption import StopRequest
from plif_jax.training.progress import Progress, fresh_progress, update_best
from plif_jax.training.spec import RunSpec
from plif_jax.training.steps import (
    Steps,
    TrainState,
    assign_state,
    eval_step,
    evaluate,
    init_train_state,
    learning_rate,
    loss_fn,
    make_optimizer,
    train_step,
)
from plif_jax.training.summary import format_summary, record_run_info, run_summary

__all__ = [
    "Progress", "Run", "TrainState", "Workdir", "assign_state", "build_run", "eval_step",
    "evaluate", "format_summary", "init_train_state", "learning_rate", "loss_fn",
    "make_optimizer", "open_workdir", "record_run_info", "train_and_evaluate", "train_step",
    "update_best",
]  # fmt: skip


@faults.reporting_disk_faults  # a full or read-only disk: one line, the last checkpoint kept
def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the paper's training protocol in ``workdir``.

    Args:
      config: run configuration (``configs/``); checked and resolved once
        (:func:`plif_jax.training.spec.resolve`), otherwise only saved.
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
      NonFiniteError: a non-finite loss, gradient or updated state (a ``FloatingPointError``;
        nothing non-finite is saved, the last good checkpoint is kept).
      DiskError: a full, read-only or failing disk (an ``OSError``; the last good checkpoint is
        kept and the next run resumes from it).
      WorkdirBusyError: another run holds ``workdir`` (nothing is written).
    """
    t_start = time.time()
    # Before anything touches a JAX backend (jax.device_count()): JAX joins a cluster only then.
    parallel.initialize_distributed(bool(config.distributed))
    # Every config check before the mesh and before any file is touched.
    spec = spec_lib.resolve(config, num_devices=int(config.num_devices) or jax.device_count())
    with contextlib.ExitStack() as stack:
        run_dir = open_workdir(spec, workdir, stack, config=config)
        if run_dir.finished is not None:
            return run_dir.finished  # a rerun of a finished run changes nothing
        run = build_run(spec, run_dir, stack, config=config, stop_after_steps=stop_after_steps)
        state, progress, epochs = run.state, run.progress, run.epochs
        while progress.epoch < spec.num_epochs and not epochs.stop.requested:
            state, finished = epochs.run_epoch(state, progress)
            if not finished:
                break
        status = "completed" if progress.epoch >= spec.num_epochs else "interrupted"
        epochs.bar.close()  # before the summary lines
        # The summary describes saved work only: a kill before the last save is on disk
        # must not leave a summary of a run that a restart will partly redo.
        epochs.store.wait()
        wall = time.time() - t_start
        summary = run_summary(
            spec, progress, epochs.steps, state, status=status, wall=wall, workdir=run_dir.path
        )
        if run_dir.is_main:
            checkpoint_lib.write_json_atomic(
                os.path.join(run_dir.path, "summary.json"), summary, sort_keys=False
            )
    logging.info("Summary: %s", json.dumps(summary))
    return summary


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workdir:
    """An opened run directory: locked for this run, its checkpoint store, and what it holds."""

    path: str  # absolute
    is_main: bool  # the process that writes the logs and the summary
    store: checkpoint_lib.CheckpointStore
    resuming: bool  # it holds a checkpoint (of a compatible config) to resume from
    finished: dict[str, Any] | None  # the summary of a run that already finished, else None


def open_workdir(
    spec: RunSpec, workdir: str, stack: contextlib.ExitStack, *, config: ml_collections.ConfigDict
) -> Workdir:
    """Creates and locks ``workdir`` and opens its checkpoint store (both closed with ``stack``).

    ``config`` (the raw config ``spec`` was resolved from) is checked against the checkpoint's.

    Raises:
      CheckpointError: a file or an unwritable path.
      WorkdirBusyError: another run holds the workdir.
      IncompatibleRunError: its checkpoint is of an incompatible config (nothing is written).
    """
    path = os.path.abspath(workdir)
    checkpoint_lib.prepare_workdir(path)  # a file or an unwritable path: a CheckpointError
    # One writer per workdir: before the store (whose start removes unfinished saves) and any
    # other write; a second run on this workdir stops here (plif_jax.training.workdir_lock).
    stack.callback(workdir_lock.acquire_for_run(path).release)
    store = checkpoint_lib.CheckpointStore(
        path, keep=spec.checkpoint_keep, keep_best=spec.checkpoint_keep_best
    )
    stack.callback(store.close)
    resuming = store.check_config(config)  # raises on an incompatible checkpoint
    finished = (
        faults.finished_summary(
            path, spec, store.latest_step(), lambda: faults.newest_checkpoint_readable(store)
        )
        if resuming
        else None
    )
    return Workdir(
        path=path,
        is_main=jax.process_index() == 0,
        store=store,
        resuming=resuming,
        finished=finished,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """A built run: :attr:`epochs` (its fixed parts and the work of an epoch), and where training
    starts, ``state`` and ``progress`` (fresh, or resumed from the workdir's checkpoint; the
    first train step donates ``state``'s buffers)."""

    spec: RunSpec
    epochs: Epochs
    state: TrainState
    progress: Progress

    @property
    def steps(self) -> Steps:
        """The compiled train and eval steps."""
        return self.epochs.steps


def build_run(
    spec: RunSpec,
    workdir: Workdir,
    stack: contextlib.ExitStack,
    *,
    config: ml_collections.ConfigDict,
    stop_after_steps: int | None = None,
) -> Run:
    """Builds everything a run's epoch loop needs; its resources close with ``stack``.

    Args:
      spec: the resolved run (:func:`plif_jax.training.spec.resolve`).
      workdir: the opened run directory (:func:`open_workdir`); its checkpoint is resumed.
      stack: owns the metric writer, the progress bar and the SIGTERM/SIGINT handlers
        (:class:`~plif_jax.training.preemption.StopRequest`).
      config: the raw config ``spec`` was resolved from: only saved (``config.json``).
      stop_after_steps: see :func:`train_and_evaluate`.
    """
    mesh = parallel.create_mesh(spec.num_devices)
    store = workdir.store
    logging.info("Run info:\n%s", record_run_info(workdir.path, config, mesh))
    data = _open_data(spec, mesh)
    steps, state = _build_steps(spec, data, mesh, store)
    if workdir.resuming:
        state, progress = _resume(store, state)
    else:
        progress = fresh_progress(spec.k)
    writer = metrics_lib.MetricWriter(
        workdir.path,
        resume_offset=progress.metrics_offset,
        purge_step=progress.global_step + 1 if workdir.resuming else 0,
        enabled=workdir.is_main,
    )
    stack.callback(writer.close)
    steps_per_epoch = data.train.num_batches
    if spec.steps_per_epoch:  # a cap, for short runs
        steps_per_epoch = min(steps_per_epoch, spec.steps_per_epoch)
    bar = _progress_bar(spec, progress, steps_per_epoch, workdir.is_main)
    stack.callback(bar.close)
    epochs = Epochs(
        spec=spec,
        data=data,
        train_sources=_train_sources(spec, data),
        mesh=mesh,
        steps=steps,
        store=store,
        writer=writer,
        bar=bar,
        # Multi-host: the processes agree on a stop where the loop reads its metrics anyway.
        stop=stack.enter_context(StopRequest(stop_after_steps, sync_every=spec.log_every_steps)),
        steps_per_epoch=steps_per_epoch,
        blocks=_blocks(spec, data, steps, mesh),
    )
    return Run(spec=spec, epochs=epochs, state=state, progress=progress)


def _blocks(spec: RunSpec, data: Any, steps: Steps, mesh) -> blocks_lib.Blocks | None:
    """Several steps per dispatch and/or the training split on the device (None: neither)."""
    resident = None
    if blocks_lib.keep_on_device(spec.on_device, data, mesh):
        resident = blocks_lib.resident_split(data.train, mesh)
    if resident is None and spec.steps_per_dispatch == 1:
        return None
    return blocks_lib.Blocks(steps, mesh, resident)


def _open_data(spec: RunSpec, mesh: jax.sharding.Mesh) -> Any:
    """The run's data bundle, checked against the config and sharded over ``mesh``."""
    # Imported only now (tonic, tfds: seconds): a config or workdir error costs none of it.
    from plif_jax import data as data_lib

    config = spec.members[0].config  # member 0's: its seed is the data seed
    bundle = data_lib.get_datasets(config)
    config_lib.validate_against_data(config, len(bundle.train))
    if spec.protocol == "B" and bundle.val is None:
        raise ValueError("Protocol B needs a validation split but the data bundle has none.")
    for source in (bundle.train, bundle.val, bundle.test):
        if source is not None and hasattr(source, "sharding"):
            # Multi-process: each process then reads only its own rows of every batch.
            source.sharding = parallel.batch_sharded(mesh)
    return bundle


def _train_sources(spec: RunSpec, data: Any) -> tuple[Any, ...]:
    """One training source for all members, or (per-member data) one per member."""
    if not spec.per_member_data:
        return (data.train,)
    sources = []
    for m in spec.members:
        source = copy.copy(data.train)
        source.seed = m.data_seed  # the shuffle order; augmentation keys are in the step
        sources.append(source)
    return tuple(sources)


def _build_steps(spec: RunSpec, data: Any, mesh, store) -> tuple[Steps, TrainState]:
    """The members' models, their compiled steps and train state (model spec saved to store).

    Member ``i``'s ``seed`` initialises its model and its ``data_seed`` keys the steps'
    augmentation and dropout streams; ``spec.T`` (``config.data.T``) is the loss's T.
    """
    built = [models.spec_from_config(m.config, data.info) for m in spec.members]
    nets = [
        models.build_model(name, options, seed=m.seed)
        for (name, options), m in zip(built, spec.members, strict=True)
    ]
    states = [init_train_state(net, m.config) for net, m in zip(nets, spec.members, strict=True)]
    name, options = built[0]
    member_records = [
        {"seed": m.seed, "data_seed": m.data_seed, "values": dict(m.values), "options": o}
        for m, (_, o) in zip(spec.members, built, strict=True)
    ]
    store.save_model_spec(name, options, members=member_records if spec.k > 1 else None)
    steps = member_steps.jit_run_steps(
        nets[0],
        k=spec.k,
        tx=make_optimizer(spec.members[0].config),
        preprocess=data.preprocess,
        data_seeds=[m.data_seed for m in spec.members],
        per_member_data=spec.per_member_data,
        num_classes=int(data.info.num_classes),
        time_steps=spec.T,
        mesh=mesh,
        layout=spec.layout,
        precision=spec.precision,
    )
    return steps, parallel.put_replicated(steps.stack_states(states), mesh)


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


def _progress_bar(spec: RunSpec, progress: Progress, steps_per_epoch: int, is_main: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=spec.num_epochs * steps_per_epoch,
        initial=progress.epoch * steps_per_epoch + progress.step_in_epoch,
        # None: drawn only when stderr is a terminal. A log file gets the per-epoch log
        # lines instead of a carriage-return redraw every couple of seconds.
        disable=None if (spec.progress_bar and is_main) else True,
        unit="step",
        dynamic_ncols=True,
        mininterval=2.0,
    )
