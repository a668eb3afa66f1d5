"""Training and evaluation: the paper's protocol, as a short loop over small named parts.

- Protocol A: test after every epoch, report the best test accuracy (first epoch reaching it).
  Protocol B: train on the split, test and validate every epoch, report the test accuracy at the
  best validation accuracy (ties go to the later epoch, the reference's ``<=``).

The parts: :mod:`plif_jax.training.steps` (loss, the jitted train and eval steps, ``evaluate``),
:mod:`plif_jax.training.progress` (the run's :class:`~plif_jax.training.progress.Progress`, stored
in every
checkpoint; best-tracking; reading step metrics one step late), :mod:`plif_jax.training.preemption`
(SIGTERM/SIGINT checkpoint at the next step boundary), :mod:`plif_jax.training.checkpoint` and
:mod:`plif_jax.training.metrics`. The step functions are re-exported here (``train.train_step``...).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from plif_jax import models
from plif_jax.runtime import parallel
from plif_jax.training import checkpoint as checkpoint_lib
from plif_jax.training import config as config_lib
from plif_jax.training import faults, member_steps, workdir_lock
from plif_jax.training import members as members_lib
from plif_jax.training import metrics as metrics_lib
from plif_jax.training.epochs import Epochs
from plif_jax.training.preemption import StopRequest
from plif_jax.training.progress import Progress, update_best
from plif_jax.training.steps import (
    TrainState,
    assign_state,
    eval_step,
    evaluate,
    init_train_state,
    jit_steps,
    learning_rate,
    loss_fn,
    make_optimizer,
    train_step,
)
from plif_jax.training.summary import format_summary, members_summary, record_run_info, run_summary

__all__ = [
    "Progress", "TrainState", "assign_state", "eval_step", "evaluate", "format_summary",
    "init_train_state", "learning_rate", "loss_fn", "make_optimizer", "record_run_info",
    "train_and_evaluate", "train_step", "update_best",
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
      NonFiniteError: a non-finite loss, gradient or updated state (a ``FloatingPointError``;
        nothing non-finite is saved, the last good checkpoint is kept).
      DiskError: a full, read-only or failing disk (an ``OSError``; the last good checkpoint is
        kept and the next run resumes from it).
      WorkdirBusyError: another run holds ``workdir`` (nothing is written).
    """
    t_start = time.time()
    parallel.initialize_distributed(bool(config.distributed))
    # Every config check before the mesh (num_devices) and before any file is touched.
    config_lib.validate(config, num_devices=int(config.num_devices) or jax.device_count())
    mesh = parallel.create_mesh(int(config.num_devices))
    workdir = os.path.abspath(workdir)
    checkpoint_lib.prepare_workdir(workdir)  # a file or an unwritable path: a CheckpointError
    is_main = jax.process_index() == 0
    # One writer per workdir: before the store (whose start removes unfinished saves) and any
    # other write; a second run on this workdir stops here (plif_jax.training.workdir_lock).
    lock = workdir_lock.acquire_for_run(workdir)
    store = writer = bar = None
    try:
        store = checkpoint_lib.CheckpointStore(
            workdir, keep=config.checkpoint.keep, keep_best=config.checkpoint.keep_best
        )
        resuming = store.check_config(config)  # raises on an incompatible checkpoint
        finished = resuming and faults.finished_summary(workdir, config, store.latest_step())
        if finished:
            return finished  # a rerun of a finished run changes nothing
        logging.info("Run info:\n%s", record_run_info(workdir, config, mesh))
        # The members (plif_jax.training.members): one for num_seeds=1, whose config is then the
        # run's
        # own up to its seeds and per-member values.
        specs = members_lib.members(config)
        member_configs = [members_lib.member_config(config, m) for m in specs]
        bundle = _open_data(member_configs[0], mesh)
        if len(specs) == 1:
            config = member_configs[0]
            (name, options), steps, state = build_one(config, bundle, mesh, specs[0])
            store.save_model_spec(name, options)
            fresh = Progress()
        else:
            state, steps = _build_members(config, specs, member_configs, bundle, store, mesh)
            fresh = Progress(members=[Progress() for _ in specs])
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
        # Multi-host: the processes agree on a stop where the loop reads its metrics anyway.
        sync_every = max(1, int(config.log_every_steps))
        with StopRequest(stop_after_steps, sync_every=sync_every) as stop:
            run = Epochs(config, bundle, mesh, steps, store, writer, bar, stop, steps_per_epoch)
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
            summary = run_summary(config, progress, steps, state, status, wall, workdir)
            if progress.members:
                summary = members_summary(summary, run, progress, state)
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
        try:
            if store is not None:
                store.close()
        finally:
            lock.release()


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


def build_one(config: ml_collections.ConfigDict, bundle: Any, mesh, member: Any):
    """A one-member run's ``((name, options), steps, state)``: its model, jitted steps, state.

    ``member``: a :class:`plif_jax.training.members.Member` (its ``seed`` initialises the model, its
    ``data_seed`` keys the steps' augmentation and dropout streams).
    """
    name, options = models.spec_from_config(config, bundle.info)
    model = models.build_model(name, options, seed=member.seed)
    steps = jit_steps(
        model,
        tx=make_optimizer(config),
        preprocess=bundle.preprocess,
        seed=member.data_seed,
        num_classes=int(bundle.info.num_classes),
        time_steps=int(getattr(model, "T", None) or config.data.T),
        mesh=mesh,
        precision=config.get("precision"),
    )
    state = parallel.put_replicated(init_train_state(model, config), mesh)
    return (name, options), steps, state


def _build_members(config, specs, member_configs, bundle, store, mesh):
    """k members: their stacked train state and compiled steps (model spec saved to store)."""
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
        precision=config.get("precision"),
    )
    state = parallel.put_replicated(member_steps.stack(states), mesh)
    return state, steps


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
