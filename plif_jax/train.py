"""Training and evaluation: the paper's protocol (spec §4) as one jit-compiled step per phase.

- Loss: MSE between the firing rate ``counts / T`` and the one-hot label, mean over B x classes.
- Adam (b1 0.9, b2 0.999, eps 1e-8, no weight decay, every parameter including PLIF's ``w``).
- Periodic cosine learning rate stepped per epoch: ``lr(e) = 0.5 lr0 (1 + cos(pi e / T_max))``
  (PyTorch's recursive ``CosineAnnealingLR`` run past ``T_max``; period ``2 T_max``).
- Protocol A: test after every epoch, report the best test accuracy (first epoch reaching it).
  Protocol B: train on the split, test and validate every epoch, report the test accuracy at the
  best validation accuracy (ties go to the later epoch, the reference's ``<=``).

The train step is a pure function of ``(TrainState, batch, lr, epoch, step)`` around
``nnx.merge``/``nnx.split``, compiled once: the learning rate, epoch and step are array inputs,
so nothing retraces across epochs. The state buffers are donated. Batches are sharded over a
``'data'`` mesh axis, the state is replicated (:mod:`plif_jax.parallel`).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from plif_jax import checkpoint as checkpoint_lib
from plif_jax import config as config_lib
from plif_jax import metrics as metrics_lib
from plif_jax import neurons, parallel

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    """Everything that changes during training (all replicated over the mesh).

    ``params``: every ``nnx.Param`` (weights, BN affine, PLIF ``w``, learnable alpha);
    ``rest``: the other model state (BatchNorm running statistics, dropout RNG key and count);
    ``opt_state``: Adam's moments and step count.
    """

    params: nnx.State
    rest: nnx.State
    opt_state: PyTree


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def learning_rate(epoch: int | Array, lr0: float, t_max: int) -> float | Array:
    """The paper's per-epoch learning rate ``0.5 lr0 (1 + cos(pi epoch / t_max))``.

    PyTorch's ``CosineAnnealingLR(T_max)`` stepped past ``T_max`` (1024 epochs vs 64) follows
    this closed form, so the schedule is periodic with period ``2 t_max`` and is 0 at epochs
    ``t_max, 3 t_max, ...``.
    """
    cos = jnp.cos if isinstance(epoch, jax.Array) else math.cos
    return 0.5 * lr0 * (1.0 + cos(math.pi * epoch / t_max))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam's update direction; the step applies ``-lr * direction`` with the epoch's lr."""
    return optax.scale_by_adam(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps)


def loss_fn(counts: Array, labels: Array, mask: Array, num_classes: int, time_steps: int) -> Array:
    """MSE between the firing rate and the one-hot label, mean over (valid samples) x classes.

    Args:
      counts: ``[B, num_classes]`` spike counts summed over time.
      labels: ``[B]`` int class labels.
      mask: ``[B]`` 1 for real samples, 0 for evaluation padding.
      num_classes: number of classes.
      time_steps: ``T`` (the firing rate is ``counts / T``).
    """
    rate = counts.astype(jnp.float32) / time_steps
    target = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    per_sample = jnp.sum(jnp.square(rate - target), axis=-1)
    return jnp.sum(per_sample * mask) / (jnp.maximum(jnp.sum(mask), 1.0) * num_classes)


def _layer_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def firing_rates(intermediates: nnx.State) -> dict[str, Array]:
    """Mean firing rate of every spiking layer from the neurons' sown ``firing_rate``."""
    out = {}
    for path, var in nnx.to_flat_state(intermediates):
        if path[-1] == "firing_rate":
            values = jax.tree.leaves(var)  # one [T] array per call of the layer
            out[_layer_name(path[:-1])] = jnp.mean(jnp.stack([jnp.mean(v) for v in values]))
    return out


def layer_taus(params: nnx.State) -> dict[str, float]:
    """``{layer: tau}`` of every PLIF layer (``tau = 1 + exp(-w)``), in depth order."""
    out = {}
    for path, var in nnx.to_flat_state(params):
        if isinstance(var, neurons.TauParam):
            w = float(np.asarray(jax.tree.leaves(var)[0]))
            out[_layer_name(path[:-1])] = 1.0 + math.exp(-w)
    return out


def layer_alphas(params: nnx.State) -> dict[str, float]:
    """``{layer: alpha}`` of every learnable surrogate alpha."""
    return {
        _layer_name(path[:-1]): float(np.asarray(jax.tree.leaves(var)[0]))
        for path, var in nnx.to_flat_state(params)
        if isinstance(var, neurons.SurrogateAlpha)
    }


def model_spec(config: ml_collections.ConfigDict, info: Any) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` for ``create_model`` from the config and the dataset's info."""
    from plif_jax import models

    name = config.model.name or info.model_name
    # The data delivers static images NHWC and event frames time-major 'TBCHW' (channels before
    # the spatial axes, i.e. the models' 'NCHW').
    layout = "NHWC" if info.input_layout == "NHWC" else "NCHW"
    shape = tuple(info.sample_shape)
    size, channels = (shape[-3], shape[-1]) if layout == "NHWC" else (shape[-1], shape[-3])
    options = dict(
        channels=config.model.channels,
        pooling=config.model.pooling,
        neuron=config.neuron.kind,
        init_tau=float(config.neuron.init_tau),
        detach_reset=bool(config.neuron.detach_reset),
        surrogate=config.neuron.surrogate,
        surrogate_alpha=float(config.neuron.alpha),
        alpha_learnable=bool(config.neuron.alpha_learnable),
        bn_mode=config.model.bn_mode,
        dropout=float(config.model.dropout),
        hidden=config.model.hidden,
        # .get: configs saved before the option existed restore without it.
        remat_chunk=config.model.get("remat_chunk"),
        input_layout=layout,
        num_classes=int(info.num_classes),
        input_size=int(size),
        in_channels=int(channels),
        dtype=config.dtype,
    )
    if name in models.STATIC_NETS:
        options["T"] = int(config.data.T)
    else:
        options["number_layer"] = int(config.model.number_layer)
        options["T"] = None if info.time_steps is None else int(info.time_steps)
    return name, options


def build_model(name: str, options: Mapping[str, Any], *, seed: int) -> nnx.Module:
    """``create_model`` with the run's seed (``params`` and ``dropout`` streams)."""
    from plif_jax import models

    return models.create_model(name, rngs=nnx.Rngs(params=seed, dropout=seed + 1), **options)


def init_train_state(model: nnx.Module, config: ml_collections.ConfigDict) -> TrainState:
    """The model's state split for the pure step, plus a fresh Adam state."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return TrainState(params, rest, make_optimizer(config).init(params))


def assign_state(model: nnx.Module, state: TrainState) -> None:
    """Writes a train state's params and other state back into ``model``."""
    nnx.update(model, state.params, state.rest)


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
def train_step(
    state: TrainState,
    batch: Mapping[str, Array],
    lr: Array,
    epoch: Array,
    step: Array,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    preprocess: Callable[..., Array],
    base_key: Array,
    num_classes: int,
    time_steps: int,
    trace_counter: collections.Counter | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One Adam step on one batch (pure; jit it with the keyword arguments bound).

    Returns:
      The new state and ``{'loss', 'correct', 'finite', 'firing_rate': {layer: rate}}``.
    """
    if trace_counter is not None:
        trace_counter["train_step"] += 1  # runs only while tracing: counts compilations
    # Augmentation randomness is a pure function of (seed, epoch, step): resumable exactly.
    key = jax.random.fold_in(jax.random.fold_in(base_key, epoch), step)
    x = preprocess(batch["x"], train=True, rng=key)
    y, mask = batch["y"], batch["mask"]

    # `rest` is an argument (not a closure) so that its Variables are rebuilt at the grad trace
    # level, where BatchNorm may update them.
    def objective(params, rest):
        model = nnx.merge(graphdef, params, rest, copy=True)
        counts, intermediates = nnx.capture(model, nnx.Intermediate)(x)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss_fn(counts, y, mask, num_classes, time_steps), (counts, intermediates, rest)

    (loss, (counts, intermediates, rest)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params, state.rest
    )
    direction, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(
        lambda p, d: p - lr.astype(p.dtype) * d, state.params, direction
    )
    correct = jnp.sum((jnp.argmax(counts, axis=-1) == y) * mask).astype(jnp.int32)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    metrics = {
        "loss": loss,
        "correct": correct,
        "finite": finite,
        "firing_rate": firing_rates(intermediates),
    }
    return TrainState(params, rest, opt_state), metrics


def eval_step(
    params: nnx.State,
    rest: nnx.State,
    batch: Mapping[str, Array],
    *,
    graphdef: nnx.GraphDef,
    preprocess: Callable[..., Array],
    num_classes: int,
    time_steps: int,
    trace_counter: collections.Counter | None = None,
) -> dict[str, Array]:
    """Masked correct count, loss sum and sample count on one (possibly padded) batch."""
    if trace_counter is not None:
        trace_counter["eval_step"] += 1
    x = preprocess(batch["x"], train=False, rng=jax.random.key(0))
    model = nnx.merge(graphdef, params, rest)
    counts, _ = nnx.capture(model, nnx.Intermediate)(x)
    y, mask = batch["y"], batch["mask"]
    n = jnp.sum(mask)
    return {
        "correct": jnp.sum((jnp.argmax(counts, axis=-1) == y) * mask).astype(jnp.int32),
        "loss_sum": loss_fn(counts, y, mask, num_classes, time_steps) * n,
        "count": n,
    }


def evaluate(
    eval_fn: Callable[..., dict[str, Array]],
    state: TrainState,
    batches: Iterable[Mapping[str, Any]],
    mesh: jax.sharding.Mesh,
) -> dict[str, float]:
    """Accuracy and loss of ``state`` over every batch (padding masked out)."""
    results = [
        eval_fn(state.params, state.rest, _to_device(batch, mesh)) for batch in batches
    ]  # dispatch everything, then fetch once
    results = jax.device_get(results)
    correct = sum(int(r["correct"]) for r in results)
    count = sum(float(r["count"]) for r in results)
    loss = sum(float(r["loss_sum"]) for r in results)
    return {"accuracy": correct / max(count, 1.0), "loss": loss / max(count, 1.0)}


def _to_device(batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Array]:
    if all(isinstance(v, jax.Array) for v in batch.values()):
        # Placed by the loader: its prefetch thread, or (multi-process) assembled from the
        # rows this process read.
        return dict(batch)

    return parallel.put_batch({k: np.asarray(v) for k, v in batch.items()}, mesh)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves at the next step boundary and exits."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        logging.warning("Received signal %d: checkpointing at the next step boundary.", signum)
        self.signal = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _initial_meta() -> dict[str, Any]:
    return {
        "epoch": 0,  # the epoch in progress (or next to run)
        "step_in_epoch": 0,  # training batches of that epoch already done
        "global_step": 0,
        "best_test_accuracy": -1.0,
        "best_test_epoch": -1,
        "best_val_accuracy": -1.0,
        "best_val_epoch": -1,
        "test_at_best_val": -1.0,
        "last_test_accuracy": -1.0,
        "metrics_offset": 0,
        "epoch_acc": _zero_acc(),
        "window_acc": _zero_acc(),
        "train_seconds": 0.0,
        "train_samples": 0,
    }


def _zero_acc() -> dict[str, Any]:
    return {"loss_sum": 0.0, "correct": 0, "count": 0, "steps": 0, "firing_rate": {}}


def _accumulate(acc: dict[str, Any], m: Mapping[str, Any], batch_size: int) -> None:
    acc["loss_sum"] += float(m["loss"])
    acc["correct"] += int(m["correct"])
    acc["count"] += batch_size
    acc["steps"] += 1
    for name, rate in m["firing_rate"].items():
        acc["firing_rate"][name] = acc["firing_rate"].get(name, 0.0) + float(rate)


def update_best(
    meta: dict[str, Any], protocol: str, epoch: int, test_acc: float, val_acc: float | None
) -> bool:
    """Updates the best-so-far records; returns whether this epoch is the new best checkpoint.

    Protocol A: the best test accuracy and the FIRST epoch reaching it (spec §6 "best@ep").
    Protocol B: the test accuracy at the best validation accuracy; ties go to the LATER epoch
    (the reference's ``max_val_accuracy <= val_accuracy``).
    """
    improved = False
    if test_acc > meta["best_test_accuracy"]:
        meta["best_test_accuracy"], meta["best_test_epoch"] = test_acc, epoch
        improved = protocol == "A"
    meta["last_test_accuracy"] = test_acc
    if protocol == "B":
        if val_acc is None:
            raise ValueError("Protocol B needs the validation accuracy of every epoch.")
        if val_acc >= meta["best_val_accuracy"]:
            meta["best_val_accuracy"], meta["best_val_epoch"] = val_acc, epoch
            meta["test_at_best_val"] = test_acc
            improved = True
    return improved


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
    writer = None
    progress = None
    stop = _StopRequest()
    try:
        resuming = store.check_config(config)  # raises on an incompatible checkpoint
        logging.info("Run info:\n%s", record_run_info(workdir, config, mesh))

        # Imported only now (tonic, tfds: seconds): a config or workdir error costs none of it.
        from plif_jax import data as data_lib

        bundle = data_lib.get_datasets(config)
        info = bundle.info
        config_lib.validate_against_data(config, len(bundle.train))
        if config.protocol == "B" and bundle.val is None:
            raise ValueError("Protocol B needs a validation split but the data bundle has none.")
        for source in (bundle.train, bundle.val, bundle.test):
            if source is not None and hasattr(source, "sharding"):
                # Multi-process: each process then reads only its own rows of every batch.
                source.sharding = parallel.batch_sharded(mesh)

        name, options = model_spec(config, info)
        model = build_model(name, options, seed=int(config.seed))
        store.save_model_spec(name, options)
        time_steps = int(getattr(model, "T", None) or info.time_steps or config.data.T)
        num_classes = int(info.num_classes)
        model.train()
        graphdef_train = nnx.graphdef(model)
        model.eval()
        graphdef_eval = nnx.graphdef(model)
        tx = make_optimizer(config)
        state = parallel.put_replicated(init_train_state(model, config), mesh)
        del model  # the state lives in `state` from here on

        meta = _initial_meta()
        if resuming:
            # Damaged checkpoints are skipped (warned) and moved to checkpoints/damaged/.
            state, meta, ckpt_step = store.restore(state, "latest", set_aside_damaged=True)
            logging.info(
                "Resuming from checkpoint step %d (epoch %d, batch %d).",
                ckpt_step,
                meta["epoch"],
                meta["step_in_epoch"],
            )
        writer = metrics_lib.MetricWriter(
            workdir,
            resume_offset=meta["metrics_offset"],
            purge_step=meta["global_step"] + 1 if resuming else 0,
            enabled=is_main,
        )

        traces: collections.Counter = collections.Counter()
        replicated = parallel.replicated(mesh)
        step_fn = jax.jit(
            functools.partial(
                train_step,
                graphdef=graphdef_train,
                tx=tx,
                preprocess=bundle.preprocess,
                base_key=jax.random.key(int(config.seed)),
                num_classes=num_classes,
                time_steps=time_steps,
                trace_counter=traces,
            ),
            donate_argnums=0,
            out_shardings=replicated,
        )
        eval_fn = jax.jit(
            functools.partial(
                eval_step,
                graphdef=graphdef_eval,
                preprocess=bundle.preprocess,
                num_classes=num_classes,
                time_steps=time_steps,
                trace_counter=traces,
            ),
            out_shardings=replicated,
        )

        steps_per_epoch = bundle.train.num_batches
        if int(config.steps_per_epoch) > 0:
            steps_per_epoch = min(steps_per_epoch, int(config.steps_per_epoch))
        batch_size = int(config.batch_size)
        log_every = max(1, int(config.log_every_steps))
        num_epochs = int(config.num_epochs)

        from tqdm.auto import tqdm

        progress = tqdm(
            total=num_epochs * steps_per_epoch,
            initial=meta["epoch"] * steps_per_epoch + meta["step_in_epoch"],
            # None: drawn only when stderr is a terminal. A log file gets the per-epoch log
            # lines instead of a carriage-return redraw every couple of seconds.
            disable=None if (config.progress_bar and is_main) else True,
            unit="step",
            dynamic_ncols=True,
            mininterval=2.0,
        )
        stop.install()
        steps_this_process = 0
        status = "completed"

        def save(best: bool) -> None:
            meta["metrics_offset"] = writer.offset() if is_main else 0
            store.save(meta["global_step"], state, meta, best=best)

        epoch = meta["epoch"]
        while epoch < num_epochs:
            lr = float(learning_rate(epoch, config.optim.lr, config.optim.t_max))
            lr_in = np.float32(lr)
            epoch_in = np.int32(epoch)
            t_epoch = time.time()
            pending: tuple[int, int, Any] | None = None  # step n's metrics, read after n+1 runs

            def drain(pending_step, epoch=epoch):
                step_idx, global_step, m = pending_step
                m = jax.device_get(m)
                if not bool(m["finite"]):
                    raise FloatingPointError(
                        f"Non-finite loss or gradient at epoch {epoch}, step {step_idx} of the "
                        f"epoch (global step {global_step}): loss={float(m['loss'])}. Stopped "
                        f"without saving; the last good checkpoint in {store.directory} is kept."
                    )
                _accumulate(meta["epoch_acc"], m, batch_size)
                _accumulate(meta["window_acc"], m, batch_size)

            first_step = meta["step_in_epoch"]
            interrupted = False
            batches = bundle.train.batches(epoch=epoch, start=first_step)
            try:
                for step_idx in range(first_step, steps_per_epoch):
                    batch = _to_device(next(batches), mesh)
                    state, m = step_fn(state, batch, lr_in, epoch_in, np.int32(step_idx))
                    if pending is not None:
                        drain(pending)
                    pending = (step_idx, meta["global_step"], m)
                    meta["step_in_epoch"] = step_idx + 1
                    meta["global_step"] += 1
                    steps_this_process += 1
                    progress.update(1)
                    if meta["global_step"] % log_every == 0:
                        drain(pending)
                        pending = None
                        w = meta["window_acc"]
                        scalars = {
                            "train/loss": w["loss_sum"] / max(w["steps"], 1),
                            "train/accuracy": w["correct"] / max(w["count"], 1),
                            "lr": lr,
                        }
                        writer.write(epoch=epoch, step=meta["global_step"], scalars=scalars)
                        progress.set_postfix(
                            epoch=epoch, loss=f"{scalars['train/loss']:.4f}", lr=f"{lr:.2e}"
                        )
                        meta["window_acc"] = _zero_acc()
                    wants_stop = stop.signal is not None or (
                        stop_after_steps is not None and steps_this_process >= stop_after_steps
                    )
                    if wants_stop and meta["step_in_epoch"] < steps_per_epoch:
                        if pending is not None:
                            drain(pending)
                            pending = None
                        meta["train_seconds"] += time.time() - t_epoch
                        meta["train_samples"] += (meta["step_in_epoch"] - first_step) * batch_size
                        save(best=False)
                        interrupted = True
                        break
                if pending is not None:
                    drain(pending)
            finally:
                batches.close()
            if interrupted:
                status = "interrupted"
                break
            train_seconds = time.time() - t_epoch
            meta["train_seconds"] += train_seconds
            meta["train_samples"] += (steps_per_epoch - first_step) * batch_size

            # --- evaluation and the protocol's bookkeeping ---------------------------------
            test = evaluate(eval_fn, state, bundle.test.batches(), mesh)
            acc = meta["epoch_acc"]
            scalars = {
                "train/epoch_loss": acc["loss_sum"] / max(acc["steps"], 1),
                "train/epoch_accuracy": acc["correct"] / max(acc["count"], 1),
                "test/accuracy": test["accuracy"],
                "test/loss": test["loss"],
                "lr": lr,
            }
            val = None
            if config.protocol == "B":
                val = evaluate(eval_fn, state, bundle.val.batches(), mesh)
                scalars["val/accuracy"] = val["accuracy"]
                scalars["val/loss"] = val["loss"]
            improved = update_best(
                meta, config.protocol, epoch, test["accuracy"], val and val["accuracy"]
            )
            if config.protocol == "B":
                scalars["best/test_at_best_val"] = meta["test_at_best_val"]
            scalars["best/test_accuracy"] = meta["best_test_accuracy"]
            params_host = jax.device_get(state.params)
            scalars.update({f"tau/{k}": v for k, v in layer_taus(params_host).items()})
            scalars.update({f"alpha/{k}": v for k, v in layer_alphas(params_host).items()})
            scalars.update(
                {
                    f"firing_rate/{k}": v / max(acc["steps"], 1)
                    for k, v in sorted(acc["firing_rate"].items())
                }
            )
            scalars["perf/samples_per_sec"] = (
                (steps_per_epoch - first_step) * batch_size / max(train_seconds, 1e-9)
            )
            scalars["perf/epoch_seconds"] = time.time() - t_epoch
            writer.write(epoch=epoch, step=meta["global_step"], scalars=scalars)
            logging.info(
                "epoch %d: train loss %.5f acc %.4f | test acc %.4f%s | lr %.3e",
                epoch,
                scalars["train/epoch_loss"],
                scalars["train/epoch_accuracy"],
                test["accuracy"],
                f" | val acc {scalars['val/accuracy']:.4f}" if "val/accuracy" in scalars else "",
                lr,
            )
            epoch += 1
            meta.update(epoch=epoch, step_in_epoch=0, epoch_acc=_zero_acc())
            save(best=improved)
            if stop.signal is not None or (
                stop_after_steps is not None and steps_this_process >= stop_after_steps
            ):
                if epoch < num_epochs:
                    status = "interrupted"
                break
        progress.close()  # before the summary lines
        # The summary describes saved work only: a kill before the last save is on disk must
        # not leave a summary of a run that a restart will partly redo.
        store.wait()
        summary = _summary(config, meta, state, status, time.time() - t_start, traces, workdir)
        if is_main:
            checkpoint_lib.write_json_atomic(
                os.path.join(workdir, "summary.json"), summary, sort_keys=False
            )
        logging.info("Summary: %s", json.dumps(summary))
        return summary
    finally:
        stop.uninstall()
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
        store.close()


def _summary(config, meta, state, status, wall, traces, workdir) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dataset": config.dataset,
        "protocol": config.protocol,
        "status": status,
        "epochs_completed": meta["epoch"],
        "global_step": meta["global_step"],
        "best_test_accuracy": meta["best_test_accuracy"],
        "best_test_epoch": meta["best_test_epoch"],
        "final_test_accuracy": meta["last_test_accuracy"],
    }
    if config.protocol == "B":
        out.update(
            test_at_best_val=meta["test_at_best_val"],
            best_val_accuracy=meta["best_val_accuracy"],
            best_val_epoch=meta["best_val_epoch"],
        )
    out["tau"] = layer_taus(jax.device_get(state.params))
    out["wall_seconds"] = wall
    out["train_samples_per_sec"] = meta["train_samples"] / max(meta["train_seconds"], 1e-9)
    out["compilations"] = dict(traces)
    out["workdir"] = workdir
    return out


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
    if summary["tau"]:
        taus = ", ".join(f"{k} {v:.3f}" for k, v in summary["tau"].items())
        lines.append(f"tau per PLIF layer: {taus}")
    lines.append(f"summary: {os.path.join(summary['workdir'], 'summary.json')}")
    return "\n".join(lines)
