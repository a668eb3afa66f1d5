"""The k members of a run (:mod:`plif_jax.training.members`) in one compiled train step.

:func:`jit_run_steps` is the one place a run picks its compiled program: the single-member
step for one member, :func:`jit_member_steps` for k > 1. Their states are stacked on a leading
member axis (every leaf, Adam's step count and the dropout RNG keys included).
:func:`jit_member_steps` compiles :func:`plif_jax.training.steps.train_step` over that axis in
one of two layouts:

- ``'vmap'``: ``jax.vmap`` of the step (one batched program; the convolutions of k members
  become one batched, feature-grouped convolution);
- ``'loop'``: the k steps written one after the other in one jitted function (XLA sees k
  independent copies of the single-member program). The default (``config.members.layout``):
  on XLA:CPU the vmapped step was 1.1x sequential at k = 4 against the loop's 1.9x (README,
  Performance), its grouped convolutions being slow there.

Both give member ``i`` the same results as a one-member run of
:func:`plif_jax.training.members.member_config` up to float rounding (the batched kernels may sum in
another order). With shared data the batch, its augmentation key and thus the preprocessing are
the same for every member (computed once under ``vmap``); per-member data stacks k batches.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from plif_jax.runtime import parallel
from plif_jax.training import sharded
from plif_jax.training.stacking import check_same_structure, member_view, stack, unstack
from plif_jax.training.steps import (
    Steps,
    eval_step,
    jit_steps,
    to_device,
    train_step,
    with_precision,
)

Array = jax.Array


def jit_member_steps(
    graphdef_model: nnx.Module,
    *,
    k: int,
    tx: optax.GradientTransformation,
    preprocess: Callable[..., Array],
    data_seeds: Sequence[int],
    per_member_data: bool,
    num_classes: int,
    time_steps: int,
    mesh: jax.sharding.Mesh,
    layout: str = "loop",
    precision: str | None = None,
) -> Steps:
    """:func:`~plif_jax.training.steps.train_step` and ``eval_step`` over k stacked members.

    ``train(state, batch, lr[k], epoch, step)``: ``batch`` leaves are ``[B, ...]`` (shared) or
    ``[k, B, ...]`` (per-member data); the metrics have a leading member axis.
    ``eval(params, rest, batch)``: the batch is shared; the metrics have a member axis.
    ``Steps.model`` takes a single member's state (:func:`unstack`).
    """
    model = graphdef_model
    model.train()
    graphdef_train = nnx.graphdef(model)
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    traces: collections.Counter = collections.Counter()
    # Traces are counted once per compiled k-member step (the loop traces the step k times).
    common = dict(preprocess=preprocess, num_classes=num_classes, time_steps=time_steps)
    common["shard"] = sharded.for_mesh(mesh, model)  # None on one device
    if per_member_data:
        keys = jnp.stack([jax.random.key(int(s)) for s in data_seeds])
    else:
        keys = jax.random.key(int(data_seeds[0]))

    def one_train(state, batch, lr, key, epoch, step):
        return train_step(
            state, batch, lr, epoch, step, graphdef=graphdef_train, tx=tx, base_key=key, **common
        )

    def one_eval(params, rest, batch):
        return eval_step(params, rest, batch, graphdef=graphdef_eval, **common)

    data_axis = 0 if per_member_data else None
    if layout == "vmap":
        train_k = jax.vmap(one_train, in_axes=(0, data_axis, 0, data_axis, None, None))
        eval_k = jax.vmap(one_eval, in_axes=(0, 0, None))
    elif layout == "loop":

        def train_k(state, batch, lr, key, epoch, step):
            outs = [
                one_train(
                    unstack(state, i),
                    unstack(batch, i) if per_member_data else batch,
                    lr[i],
                    key[i] if per_member_data else key,
                    epoch,
                    step,
                )
                for i in range(k)
            ]
            return stack([o[0] for o in outs]), stack([o[1] for o in outs])

        def eval_k(params, rest, batch):
            return stack([one_eval(unstack(params, i), unstack(rest, i), batch) for i in range(k)])

    else:
        raise ValueError(f"layout must be 'vmap' or 'loop', got {layout!r}.")

    def train_fn(state, batch, lr, epoch, step):
        traces["train_step"] += 1  # runs only while tracing
        return train_k(state, batch, lr, keys, epoch, step)

    def eval_fn(params, rest, batch):
        traces["eval_step"] += 1
        return eval_k(params, rest, batch)

    replicated = parallel.replicated(mesh)
    train_fn = with_precision(train_fn, precision)
    train = jax.jit(train_fn, donate_argnums=0, out_shardings=replicated)
    evaluate_ = jax.jit(with_precision(eval_fn, precision), out_shardings=replicated)
    return Steps(train, evaluate_, traces, graphdef_eval, k=k, train_fn=train_fn)


def stacked_batches(iterators: Sequence[Iterable[Mapping[str, Any]]], mesh) -> Iterable[dict]:
    """Per-member data: the members' batches stacked on a leading member axis."""
    for batches in zip(*iterators, strict=True):
        placed = [to_device(b, mesh) for b in batches]
        yield {key: jnp.stack([b[key] for b in placed]) for key in placed[0]}


def jit_run_steps(
    model: nnx.Module,
    *,
    k: int,
    tx: optax.GradientTransformation,
    preprocess: Callable[..., Array],
    data_seeds: Sequence[int],
    per_member_data: bool,
    num_classes: int,
    time_steps: int,
    mesh: jax.sharding.Mesh,
    layout: str = "loop",
    precision: str | None = None,
) -> Steps:
    """A run's compiled steps for its k members: the one place that picks the program.

    ``k = 1``: :func:`~plif_jax.training.steps.jit_steps` (the single-member program, as fast as
    the bare step); ``k > 1``: :func:`jit_member_steps` over stacked states. Either way
    :class:`~plif_jax.training.steps.Steps` gives the host k >= 1 members.
    """
    if k == 1:
        return jit_steps(
            model, tx=tx, preprocess=preprocess, seed=int(data_seeds[0]),
            num_classes=num_classes, time_steps=time_steps, mesh=mesh, precision=precision,
        )  # fmt: skip
    return jit_member_steps(
        model, k=k, tx=tx, preprocess=preprocess, data_seeds=data_seeds,
        per_member_data=per_member_data, num_classes=num_classes, time_steps=time_steps,
        mesh=mesh, layout=layout, precision=precision,
    )  # fmt: skip


__all__ = [
    "check_same_structure", "jit_member_steps", "jit_run_steps", "member_view", "stack",
    "stacked_batches", "unstack",
]  # fmt: skip
