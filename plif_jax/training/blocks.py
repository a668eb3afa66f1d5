"""Several train steps per dispatch, and the training split kept on the device.

The host loop (:meth:`plif_jax.training.epochs.Epochs.train`) dispatches one compiled step per
batch. Here, with ``config.steps_per_dispatch = K > 1``, one dispatch runs K steps: one jitted
function calls the run's own step function (:attr:`plif_jax.training.steps.Steps.train_fn`) K
times and returns the K steps' metrics stacked, read once per block. The step is a pure function
of ``(state, batch, lr, epoch, step)`` (its augmentation key is ``fold_in(fold_in(key, epoch),
step)``), so the block computes what K dispatches compute, bit for bit on XLA:CPU, because:

- the K steps are written one after the other, not as a ``lax.scan``: XLA:CPU canonicalises
  (and runs with Eigen) only the convolutions of the top-level computation; in a loop body the
  gradient convolutions run on its generic emitter, which sums in another order (1e-6 apart after
  one step) and is slower;
- the state between two steps is an output of the block (then dropped): XLA:CPU contracts a
  multiply and an add in one fused loop into an FMA, so fusing a step's last updates (BatchNorm
  statistics, Adam's moments) into the next step's first uses rounds differently (1e-9 after
  two steps; ``lax.optimization_barrier`` does not prevent it, XLA:CPU expands it before
  fusion). As outputs they are computed as the one-step program computes its outputs.

The cost: K copies of the step to compile, and K - 1 states' memory per dispatch.

With ``config.data.on_device`` the training split lives on the device (:class:`Resident`, its
frames in their stored dtype: uint8 images, the frame cache's integer counts): for each block
the host sends its K batches' sample indices (the host's permutation, as the loader's), one
small program gathers the K batches on the device, and the block runs on them as on the
loader's; nothing else crosses from the host. The gather is a dispatch of its own on purpose:
inside the step's program XLA fuses it into the first layer, which rounds differently.

:func:`plan` cuts an epoch's steps into dispatches: blocks of K, and single steps where fewer
than K are left (a block never crosses the epoch's end); a single step is the one-step program
(:attr:`plif_jax.training.steps.Steps.train`), so a run compiles at most two step programs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from plif_jax.errors import ConfigError
from plif_jax.runtime import parallel
from plif_jax.training.steps import Steps, TrainState

# 'auto' keeps a split on the device when it takes at most this share of the device's memory.
AUTO_MEMORY_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class Resident:
    """A training split on the device, replicated over the mesh: ``x`` ``[N, ...]`` in its stored
    dtype, ``y`` ``[N]`` int32 labels."""

    x: jax.Array
    y: jax.Array


def split_nbytes(source: Any) -> int:
    """Bytes of a batch source's samples in the dtype they travel in."""
    count = len(source.labels)
    return count * int(np.prod(source.sample_shape)) * np.dtype(source.dtype).itemsize


def device_memory(mesh: jax.sharding.Mesh) -> int | None:
    """The smallest memory limit among the mesh's devices; on CPU the machine's physical memory
    (None where neither is known)."""
    limits = []
    for device in mesh.devices.flat:
        try:
            stats = device.memory_stats() or {}
        except (AttributeError, NotImplementedError, RuntimeError):
            stats = {}
        if "bytes_limit" in stats:
            limits.append(int(stats["bytes_limit"]))
        elif device.platform == "cpu":
            try:
                limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (AttributeError, ValueError, OSError):
                return None
        else:
            return None
    return min(limits) if limits else None


def keep_on_device(setting: Any, data: Any, mesh: jax.sharding.Mesh) -> bool:
    """Whether the training split lives on the device (``config.data.on_device``).

    ``'auto'``: when the split takes at most :data:`AUTO_MEMORY_SHARE` of the smallest device
    memory (on CPU: of the machine's memory), on every backend: on a quiet 2-core CPU the
    Fashion-MNIST paper net's loop ran at 93.9 % of its bare step with host batches and 98.5 %
    with the split on the device (2026-12-03; docs/explanation/performance.md). Off in
    multi-process runs. ``True`` refuses a multi-process run (each process reads only its own
    rows there).
    """
    multiprocess = parallel.is_multiprocess(parallel.replicated(mesh))
    if setting is True:
        if multiprocess:
            raise ConfigError(
                "config.data.on_device=true keeps the whole training split on every device; a "
                "multi-process run reads only its own rows. Use --config.data.on_device=auto."
            )
        return True
    if setting is False or multiprocess:
        return False
    limit, nbytes = device_memory(mesh), split_nbytes(data.train)
    fits = limit is not None and nbytes <= AUTO_MEMORY_SHARE * limit
    logging.info(
        "config.data.on_device=auto: the training split (%.1f MB) %s",
        nbytes / 1e6,
        "stays on the device." if fits else "does not fit comfortably; batches come from the host.",
    )
    return fits


def resident_split(source: Any, mesh: jax.sharding.Mesh) -> Resident:
    """Reads every sample of ``source`` (in its stored dtype) onto every device of ``mesh``."""
    x = source.read_batch(np.arange(len(source)))["x"]
    return Resident(*parallel.put_replicated((x, source.labels), mesh))


def plan(first: int, end: int, k: int) -> Iterator[tuple[int, int]]:
    """``(first step, number of steps)`` of each dispatch over steps ``[first, end)``: blocks of
    ``k``, then single steps for the remainder (fewer than ``k``)."""
    step = first
    while step < end:
        n = k if end - step >= k else 1
        yield step, n
        step += n


class Blocks:
    """The compiled multi-step programs of a run (one per block length, built on first use), and
    the gather of batches from ``resident``.

    ``run(state, batches, lr, epoch, first_step)`` runs ``len(batches)`` steps on placed batches
    and returns the state and the steps' metrics stacked on a leading axis. ``gather(indices)``:
    the placed batches of sample indices ``[n, B]`` (per-member data ``[n, k, B]``) into
    ``resident``, in their own dispatch: the step programs then see a batch argument exactly
    as from the host (a gather inside the step's program lets XLA fuse it into the first layer,
    which rounds differently: the quick start's taus moved in the 9th digit after 60 steps).
    """

    def __init__(self, steps: Steps, mesh: jax.sharding.Mesh, resident: Resident | None = None):
        if steps.train_fn is None:
            raise ValueError("Blocks needs the steps' train_fn (jit_steps / jit_member_steps).")
        self.steps, self.mesh, self.resident = steps, mesh, resident
        self._programs: dict[int, Callable] = {}
        self._gather = self._compile_gather()  # jitted on first use only

    def run(
        self, state: TrainState, batches: Sequence[Any], lr: Any, epoch: Any, first_step: int
    ) -> tuple[TrainState, dict[str, Any]]:
        n = len(batches)
        step_ids = np.arange(first_step, first_step + n, dtype=np.int32)
        state, metrics, _ = self._program(n)(state, tuple(batches), lr, epoch, step_ids)
        return state, metrics  # the states between the steps: dropped

    def gather(self, indices: Any) -> tuple[dict[str, jax.Array], ...]:
        """The batches of ``indices`` (``[n, B]`` or ``[n, k, B]``) gathered on the device."""
        if self.resident is None:
            raise ValueError("Blocks.gather needs the training split on the device (resident).")
        return self._gather(self.resident.x, self.resident.y, np.asarray(indices, np.int32))

    def _program(self, n: int) -> Callable:
        if n not in self._programs:
            self._programs[n] = self._compile()
        return self._programs[n]

    def _compile(self) -> Callable:
        train_fn, traces = self.steps.train_fn, self.steps.traces

        def block(state, batches, lr, epoch, step_ids):
            # Runs only while tracing: counts the block's compilations, not its K step traces.
            step_traces = traces["train_step"]
            metrics, between = [], []
            for i in range(len(step_ids)):
                if i:
                    between.append(state)
                    state = jax.lax.optimization_barrier(state)
                state, m = train_fn(state, batches[i], lr, epoch, step_ids[i])
                metrics.append(m)
            traces["train_step"] = step_traces
            if not step_traces:
                del traces["train_step"]
            traces[f"train_block_{len(step_ids)}"] += 1
            return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics), between

        return jax.jit(block, donate_argnums=0, out_shardings=parallel.replicated(self.mesh))

    def _compile_gather(self) -> Callable:
        """``(x, y, indices [n, B] or [n, k, B]) -> n batches``, each placed as the host's: the
        batch axis split over the mesh (a member axis first, as ``stacked_batches`` places it)."""

        traces = self.steps.traces

        def gather(x, y, indices):
            traces[f"gather_{len(indices)}"] += 1  # while tracing: the gather's compilations
            # The mask is all ones, as the loader's for a training batch.
            return tuple(
                {"x": x[idx], "y": y[idx], "mask": jnp.ones(idx.shape, jnp.float32)}
                for idx in indices
            )

        member_batch = NamedSharding(self.mesh, PartitionSpec(None, parallel.DATA_AXIS))
        programs = {
            2: jax.jit(gather, out_shardings=parallel.batch_sharded(self.mesh)),
            3: jax.jit(gather, out_shardings=member_batch),
        }
        return lambda x, y, indices: programs[indices.ndim](x, y, indices)


def block_indices(sources: Sequence[Any], epoch: int) -> np.ndarray:
    """The epoch's sample indices of every step ``[steps, B]`` (k sources: ``[steps, k, B]``)."""
    if len(sources) == 1:
        return sources[0].batch_indices(epoch)
    return np.stack([s.batch_indices(epoch) for s in sources], axis=1)
