"""Batch-parallel steps on several devices: the per-device part under ``jax.shard_map``.

On a mesh of more than one device the train and eval steps preprocess the global batch as on
one device (the batch axis sharded over ``'data'``), then run the rest (forward, loss, gradients,
Adam; eval: forward and the sums) under ``jax.shard_map`` over ``'data'``: each device sees only
its rows of the batch, so the networks' time fold (``[T*B, ...]``, time-major) merges T with a
local batch axis and never needs a collective. The global batch's math is kept with collectives
on small arrays only (:func:`plif_jax.layers.batch_axis`):

- BatchNorm's batch mean and variance: ``pmean`` of the devices' own (every device holds as many
  rows), the running statistics updated from those, so they stay replicated;
- the dropout mask: the global batch's, drawn from the replicated stream, each device taking its
  rows;
- the loss: ``psum`` of the devices' masked sums over ``psum`` of their counts; each device
  differentiates it with respect to its own (``pcast`` to varying) copy of the parameters, and
  the gradients are ``psum``'d (:func:`plif_jax.training.steps.train_step`), so Adam sees the
  global batch's gradients on every device;
- the metrics: ``psum`` (correct, counts) and ``pmean`` (firing rates).

The result equals the one-device step on the whole batch up to float reassociation (sums split
over devices). One device keeps the program without ``shard_map`` (:func:`for_mesh` is None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from plif_jax import layers
from plif_jax.runtime import parallel

REPLICATED = PartitionSpec()
ROWS = PartitionSpec(parallel.DATA_AXIS)
# eval_step's outputs: the sums replicated, the per-sample values split as the batch.
EVAL_OUT = {
    "correct": REPLICATED, "loss_sum": REPLICATED, "count": REPLICATED,
    "pred": ROWS, "silent": ROWS, "y": ROWS, "mask": ROWS,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Shard:
    """How a step's per-device part is mapped over ``mesh``: the preprocessed input's batch axis
    is ``x_axis`` (0: ``[B, ...]`` images; 1: ``[T, B, ...]`` event frames)."""

    mesh: Mesh
    x_axis: int

    @property
    def x_spec(self) -> PartitionSpec:
        return PartitionSpec(*([None] * self.x_axis), parallel.DATA_AXIS)

    def _mapped(self, fn: Callable, in_specs: tuple, out_specs: Any) -> Callable:
        def local(*args):
            with layers.batch_axis(parallel.DATA_AXIS):
                return fn(*args)

        return jax.shard_map(local, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)

    def train(self, update: Callable) -> Callable:
        """``update(state, x, y, mask, lr) -> (state, metrics)`` per device; state, learning
        rate and results replicated."""
        specs = (REPLICATED, self.x_spec, ROWS, ROWS, REPLICATED)
        return self._mapped(update, specs, REPLICATED)

    def eval(self, measure: Callable) -> Callable:
        """``measure(params, rest, x, y, mask) -> metrics`` per device (:data:`EVAL_OUT`)."""
        specs = (REPLICATED, REPLICATED, self.x_spec, ROWS, ROWS)
        return self._mapped(measure, specs, EVAL_OUT)


def input_batch_axis(model: Any) -> int:
    """The batch axis of ``model``'s input: 1 for the event nets' time-major ``[T, B, ...]``,
    else 0."""
    return 0 if getattr(model, "is_static", True) else 1


def for_mesh(mesh: Mesh | None, model: Any) -> Shard | None:
    """The :class:`Shard` of a step of ``model`` on ``mesh``; None on one device (the step is
    then the one-device program, unchanged)."""
    if mesh is None or mesh.devices.size == 1:
        return None
    return Shard(mesh, input_batch_axis(model))
