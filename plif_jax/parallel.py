"""Data parallelism with ``jax.sharding``: a ``'data'`` mesh axis, batch sharded, params replicated.

Single host: the global batch is placed across the local devices. Multi-host (after
``jax.distributed.initialize``): every process loads the same global batch order (shuffled from the
seed) and contributes its own slice, assembled with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(enabled: bool) -> None:
    """Calls ``jax.distributed.initialize()`` once when ``enabled`` (multi-host runs)."""
    if enabled and jax.process_count() == 1:
        # Cluster settings come from the environment (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS...).
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def create_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over ``num_devices`` devices (0: all devices of every process)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(
                f"config.num_devices={num_devices} but only {len(devices)} devices are visible "
                f"({jax.default_backend()}); use --config.num_devices=0 for all of them."
            )
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError("Multi-host runs use every device: set --config.num_devices=0.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (params, optimiser state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places a global host batch on the mesh, split along the batch axis."""
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    n, i = jax.process_count(), jax.process_index()
    out = {}
    for k, v in batch.items():
        per = v.shape[0] // n
        out[k] = jax.make_array_from_process_local_data(sharding, v[i * per : (i + 1) * per])
    return out


def put_replicated(tree, mesh: Mesh):
    """Copies a pytree of arrays to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
