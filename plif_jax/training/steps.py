"""The paper's train and eval steps, as pure functions jit-compiled once per run.

- Loss: MSE between the firing rate ``counts / T`` and the one-hot label, mean over B x classes.
- Adam (b1 0.9, b2 0.999, eps 1e-8, no weight decay, every parameter including PLIF's ``w``).
- Periodic cosine learning rate stepped per epoch: ``lr(e) = 0.5 lr0 (1 + cos(pi e / T_max))``
  (PyTorch's recursive ``CosineAnnealingLR`` run past ``T_max``; period ``2 T_max``).

The train step is a pure function of ``(TrainState, batch, lr, epoch, step)`` around
``nnx.merge``/``nnx.split``: the learning rate, epoch and step are array inputs, so nothing
retraces across epochs. :func:`jit_steps` binds the run's constants, donates the state buffers
and replicates the outputs over the ``'data'`` mesh (batches are sharded over it; on several
devices the step is batch-parallel, :mod:`.sharded`). :func:`evaluate` is the one evaluation loop.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from plif_jax import layers, models
from plif_jax.runtime import parallel
from plif_jax.training import sharded
from plif_jax.training.stacking import check_same_structure, member_view, stack

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

    Batch-parallel (:mod:`~plif_jax.training.sharded`): the sums cover every device's rows.
    """
    rate = counts.astype(jnp.float32) / time_steps
    target = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    per_sample = jnp.sum(jnp.square(rate - target), axis=-1)
    total, count = layers.batch_sum(jnp.sum(per_sample * mask)), layers.batch_sum(jnp.sum(mask))
    return total / (jnp.maximum(count, 1.0) * num_classes)


def init_train_state(model: nnx.Module, config: ml_collections.ConfigDict) -> TrainState:
    """The model's state split for the pure step, plus a fresh Adam state."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return TrainState(params, rest, make_optimizer(config).init(params))


def assign_state(model: nnx.Module, state: TrainState) -> None:
    """Writes a train state's params and other state back into ``model``."""
    nnx.update(model, state.params, state.rest)


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
    shard: sharded.Shard | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One Adam step on one batch (pure; jit it with the keyword arguments bound).

    ``shard`` (several devices): the step after the preprocessing runs under
    :meth:`~plif_jax.training.sharded.Shard.train`, each device on its rows of the batch.

    Returns:
      The new state and ``{'loss', 'correct', 'finite', 'firing_rate': {layer: rate}}``
      (``finite``: the loss, the gradients and the updated state are all finite).
    """
    if trace_counter is not None:
        trace_counter["train_step"] += 1  # runs only while tracing: counts compilations
    # Augmentation randomness is a pure function of (seed, epoch, step): resumable exactly.
    key = jax.random.fold_in(jax.random.fold_in(base_key, epoch), step)
    x = preprocess(batch["x"], train=True, rng=key)
    update = functools.partial(
        _update, graphdef=graphdef, tx=tx, num_classes=num_classes, time_steps=time_steps
    )
    if shard is not None:
        update = shard.train(update)
    return update(state, x, batch["y"], batch["mask"], lr)


def _update(state, x, y, mask, lr, *, graphdef, tx, num_classes, time_steps):
    """The train step on the preprocessed batch ``x``: forward, loss, gradients, Adam."""

    # `rest` is an argument (not a closure) so that its Variables are rebuilt at the grad trace
    # level, where BatchNorm may update them.
    def objective(params, rest):
        model = nnx.merge(graphdef, params, rest, copy=True)
        counts, rates = models.run_with_rates(model, x)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss_fn(counts, y, mask, num_classes, time_steps), (counts, rates, rest)

    # Several devices: each differentiates its rows' share of the global loss, then the sum.
    (loss, (counts, rates, rest)), grads = jax.value_and_grad(objective, has_aux=True)(
        layers.batch_varying(state.params), state.rest
    )
    grads = layers.batch_sum(grads)
    direction, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(
        lambda p, d: p - lr.astype(p.dtype) * d, state.params, direction
    )
    correct = layers.batch_sum(jnp.sum((jnp.argmax(counts, axis=-1) == y) * mask).astype(jnp.int32))
    # The loss, the gradients AND what the step writes (parameters, BatchNorm statistics): a
    # learning rate far too high can overflow the update or the running variance while the loss
    # and gradients stay finite, and a checkpoint must never hold such a state.
    finite = jnp.isfinite(loss) & _all_finite(grads, params, rest)
    rates = jax.tree.map(layers.batch_mean, rates)
    metrics = {"loss": loss, "correct": correct, "finite": finite, "firing_rate": rates}
    return TrainState(params, rest, opt_state), metrics


def _all_finite(*trees: PyTree) -> Array:
    """One boolean: every float array of ``trees`` is finite (keys and integers are skipped)."""
    leaves = [
        x for tree in trees for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


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
    shard: sharded.Shard | None = None,
) -> dict[str, Array]:
    """The masked sums of one (possibly padded) batch, and its per-sample predictions.

    Returns:
      ``correct`` (int), ``loss_sum`` and ``count`` (masked sums); ``pred`` ``[B]`` (the argmax
      of the spike counts: ties, e.g. no output spike at all, go to the lowest class), ``silent``
      ``[B]`` (no output spike), ``y`` and ``mask`` ``[B]`` as given.
    """
    if trace_counter is not None:
        trace_counter["eval_step"] += 1
    x = preprocess(batch["x"], train=False, rng=jax.random.key(0))
    measure = functools.partial(
        _measure, graphdef=graphdef, num_classes=num_classes, time_steps=time_steps
    )
    if shard is not None:
        measure = shard.eval(measure)
    return measure(params, rest, x, batch["y"], batch["mask"])


def _measure(params, rest, x, y, mask, *, graphdef, num_classes, time_steps) -> dict[str, Array]:
    """:func:`eval_step` on the preprocessed batch ``x``."""
    model = nnx.merge(graphdef, params, rest)
    counts = model(x)  # a plain call records nothing
    n = layers.batch_sum(jnp.sum(mask))
    pred = jnp.argmax(counts, axis=-1)
    return {
        "correct": layers.batch_sum(jnp.sum((pred == y) * mask).astype(jnp.int32)),
        "loss_sum": loss_fn(counts, y, mask, num_classes, time_steps) * n,
        "count": n,
        "pred": pred,
        "silent": jnp.all(counts == 0, axis=-1),
        "y": y,
        "mask": mask,
    }


@dataclasses.dataclass(frozen=True)
class Steps:
    """A run's compiled steps, and how the host sees their members.

    ``train(state, batch, lr, epoch, step) -> (state, metrics)`` (``state`` donated), the jitted
    ``train_fn`` (:mod:`~plif_jax.training.blocks` calls it for several steps per dispatch);
    ``eval(params, rest, batch) -> metrics``; ``traces`` counts each step's compilations;
    ``graphdef`` is the eval-mode structure (:meth:`model` rebuilds a network from a state).
    ``k = 1``: the single-member program (:func:`jit_steps`, no member axis); ``k > 1``: the
    stacked one (:mod:`~plif_jax.training.member_steps`, a leading member axis on the state, the
    learning rate and the metrics). The methods give the host k >= 1 members either way.
    """

    train: Callable[..., tuple[TrainState, dict[str, Any]]]
    eval: Callable[..., dict[str, Array]]
    traces: collections.Counter
    graphdef: nnx.GraphDef
    k: int = 1
    train_fn: Callable[..., tuple[TrainState, dict[str, Any]]] | None = None

    def model(self, state: TrainState) -> nnx.Module:
        """The eval-mode network holding one member's ``state`` arrays (not copied)."""
        return nnx.merge(self.graphdef, state.params, state.rest)

    def stack_states(self, states: Sequence[TrainState]) -> TrainState:
        """The train step's state from the members' states (k > 1: stacked)."""
        if self.k == 1:
            (state,) = states
            return state
        check_same_structure(states)
        return stack(states)

    def member_states(self, state: TrainState) -> list[TrainState]:
        """Each member's params and rest (k > 1: no optimizer state)."""
        if self.k == 1:
            return [state]
        return [member_view(state, i) for i in range(self.k)]

    def member_models(self, state: TrainState) -> list[nnx.Module]:
        """Each member's eval-mode network (:meth:`model`)."""
        return [self.model(s) for s in self.member_states(state)]

    def lr_input(self, lrs: Sequence[float]) -> np.ndarray:
        """The train step's learning-rate input from the members' rates."""
        return np.float32(lrs[0]) if self.k == 1 else np.asarray(lrs, np.float32)

    def member_metrics(self, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Host-side train metrics (``jax.device_get``'s) split into the members' own."""
        if self.k == 1:
            return [dict(metrics)]
        return [jax.tree.map(lambda a, i=i: np.asarray(a)[i], metrics) for i in range(self.k)]

    def evaluate(self, state: TrainState, batches, mesh: jax.sharding.Mesh) -> dict[str, Any]:
        """Each member's accuracy and loss: ``{'accuracy': [k], 'loss': [k], 'count'}``."""
        if self.k == 1:
            one = evaluate(self.eval, state, batches, mesh)
            return {"accuracy": [one["accuracy"]], "loss": [one["loss"]], "count": one["count"]}
        return evaluate_stacked(self.eval, state, batches, mesh)


def with_precision(fn: Callable, precision: str | None) -> Callable:
    """``fn`` traced under ``jax.default_matmul_precision(precision)``: the precision of every
    convolution and matmul in it (``None`` or ``'default'``: ``fn`` itself, the backend's)."""
    if precision in (None, "default"):
        return fn

    def traced(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return traced


def jit_steps(
    model: nnx.Module,
    *,
    tx: optax.GradientTransformation,
    preprocess: Callable[..., Array],
    seed: int,
    num_classes: int,
    time_steps: int,
    mesh: jax.sharding.Mesh,
    precision: str | None = None,
) -> Steps:
    """:func:`train_step` and :func:`eval_step` jitted with the run's constants bound.

    Takes ``model``'s train- and eval-mode structures (it is left in eval mode); the outputs are
    replicated over ``mesh``.
    """
    model.train()
    graphdef_train = nnx.graphdef(model)
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    traces: collections.Counter = collections.Counter()
    common = dict(
        preprocess=preprocess, num_classes=num_classes, time_steps=time_steps, trace_counter=traces
    )
    replicated = parallel.replicated(mesh)
    common["shard"] = sharded.for_mesh(mesh, model)  # None on one device
    train_fn = with_precision(
        functools.partial(
            train_step, graphdef=graphdef_train, tx=tx, base_key=jax.random.key(seed), **common
        ),
        precision,
    )
    train = jax.jit(train_fn, donate_argnums=0, out_shardings=replicated)
    evaluate_ = jax.jit(
        with_precision(functools.partial(eval_step, graphdef=graphdef_eval, **common), precision),
        out_shardings=replicated,
    )
    return Steps(train, evaluate_, traces, graphdef_eval, train_fn=train_fn)


def to_device(batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Array]:
    """A batch sharded over the mesh's ``'data'`` axis (as it is if the loader placed it)."""
    if all(isinstance(v, jax.Array) for v in batch.values()):
        # Placed by the loader: its prefetch thread, or (multi-process) assembled from the
        # rows this process read.
        return dict(batch)
    return parallel.put_batch({k: np.asarray(v) for k, v in batch.items()}, mesh)


def evaluate(
    eval_fn: Callable[..., dict[str, Array]],
    state: TrainState,
    batches: Iterable[Mapping[str, Any]],
    mesh: jax.sharding.Mesh,
    *,
    predictions: bool = False,
) -> dict[str, Any]:
    """Accuracy and loss of ``state`` (its ``params`` and ``rest``) over every batch.

    Args:
      eval_fn: a jitted :func:`eval_step` (e.g. ``jit_steps(...).eval``).
      state: anything with ``params`` and ``rest`` (``TrainState(params, rest, None)``).
      batches: dicts with ``x``, ``y`` and ``mask`` (padding has mask 0 and is not counted).
      mesh: the mesh the batches are sharded over.
      predictions: also return the per-sample ``pred``, ``y`` and ``silent`` (numpy arrays over
        the unmasked samples, in batch order).

    Returns:
      ``{'accuracy', 'loss', 'count'}`` (+ ``'pred'``, ``'y'``, ``'silent'``).
    """
    results = [
        eval_fn(state.params, state.rest, to_device(batch, mesh)) for batch in batches
    ]  # dispatch everything, then fetch once
    results = jax.device_get(results)
    correct = sum(int(r["correct"]) for r in results)
    count = sum(float(r["count"]) for r in results)
    loss = sum(float(r["loss_sum"]) for r in results)
    out: dict[str, Any] = {
        "accuracy": correct / max(count, 1.0),
        "loss": loss / max(count, 1.0),
        "count": int(count),
    }
    if predictions:
        for key in ("pred", "y", "silent"):
            parts = [np.asarray(r[key])[np.asarray(r["mask"]) > 0] for r in results]
            out[key] = np.concatenate(parts) if parts else np.zeros((0,), np.int32)
    return out


def evaluate_stacked(
    eval_fn: Callable[..., dict[str, Array]],
    state: TrainState,
    batches: Iterable[Mapping[str, Any]],
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """k stacked members' accuracy and loss: ``{'accuracy': [k], 'loss': [k], 'count'}``."""
    results = [eval_fn(state.params, state.rest, to_device(batch, mesh)) for batch in batches]
    results = jax.device_get(results)
    correct = np.sum([np.asarray(r["correct"], np.int64) for r in results], axis=0)
    loss = np.sum([np.asarray(r["loss_sum"], np.float64) for r in results], axis=0)
    count = float(sum(float(np.asarray(r["count"])[0]) for r in results))
    return {
        "accuracy": [int(c) / max(count, 1.0) for c in correct],
        "loss": [float(v) / max(count, 1.0) for v in loss],
        "count": int(count),
    }
