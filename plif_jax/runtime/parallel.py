"""Data parallelism with ``jax.sharding``: a ``'data'`` mesh axis, batch sharded, params replicated.

Single host: the global batch is placed across the local devices. Multi-host (after
``jax.distributed.initialize``): every process knows the same global batch order (shuffled from
the seed) but reads only the rows of each batch that its own devices hold
(:func:`local_rows`), and the global batch is assembled from these parts with
``jax.make_array_from_process_local_data`` (:func:`put_local_batch`).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Set by the launcher when no cluster manager (SLURM, Open MPI...) describes the job.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def distributed_settings(environ=os.environ) -> dict[str, object]:
    """``jax.distributed.initialize`` keyword arguments taken from the environment.

    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` are passed through when set (jax 0.10 itself reads only the first);
    anything unset is left to JAX's cluster detection (SLURM, Open MPI, TPU, Kubernetes).
    """
    out: dict[str, object] = {}
    if environ.get(ENV_COORDINATOR):
        out["coordinator_address"] = environ[ENV_COORDINATOR]
    for name, key in ((ENV_NUM_PROCESSES, "num_processes"), (ENV_PROCESS_ID, "process_id")):
        if environ.get(name):
            try:
                out[key] = int(environ[name])
            except ValueError:
                raise ValueError(f"{name}={environ[name]!r} is not an integer.") from None
    return out


def initialize_distributed(enabled: bool) -> None:
    """Calls ``jax.distributed.initialize`` once when ``enabled`` (multi-host runs).

    Must run before anything touches a JAX backend (``jax.devices()``, ``jax.process_count()``,
    the first computation): JAX refuses to join a cluster afterwards. On CPU the processes
    exchange collectives through gloo over TCP (jax's default CPU implementation).
    """
    if not enabled or jax.distributed.is_initialized():
        return
    settings = distributed_settings()
    jax.distributed.initialize(**settings)
    logging.info(
        "jax.distributed: process %d of %d (coordinator %s)",
        jax.process_index(),
        jax.process_count(),
        settings.get("coordinator_address", "from the cluster environment"),
    )


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


def is_multiprocess(sharding: jax.sharding.Sharding | None) -> bool:
    """Whether ``sharding`` spans devices of more than this process."""
    return sharding is not None and not sharding.is_fully_addressable


def local_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
    """The rows of a ``[batch_size, ...]`` batch that this process's devices hold.

    A 1-D ``'data'`` mesh built from ``jax.devices()`` (process-major) gives every process one
    contiguous block; anything else is a bug in how the mesh was made.
    """
    blocks = sorted(
        {
            (index[0].start or 0, batch_size if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map((batch_size,)).values()
        }
    )
    lo, hi = blocks[0][0], blocks[0][1]
    for start, stop in blocks[1:]:
        if start > hi:
            raise RuntimeError(f"This process's batch rows are not contiguous: {blocks}.")
        hi = max(hi, stop)
    return slice(lo, hi)


def put_local_batch(
    local: dict[str, np.ndarray], sharding: jax.sharding.Sharding, batch_size: int
) -> dict[str, jax.Array]:
    """Assembles global ``[batch_size, ...]`` arrays from this process's rows (``local_rows``)."""
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
        for k, v in local.items()
    }


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places a global host batch on the mesh, split along the batch axis.

    In a multi-process run each process passes the same global batch and contributes only its
    own rows (the loader avoids reading the others: :func:`local_rows`).
    """
    sharding = batch_sharded(mesh)
    if not is_multiprocess(sharding):
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    out = {}
    for k, v in batch.items():
        rows = local_rows(sharding, v.shape[0])
        out.update(put_local_batch({k: v[rows]}, sharding, v.shape[0]))
    return out


def put_replicated(tree, mesh: Mesh):
    """Copies a pytree of arrays to every device of the mesh.

    Multi-process: every process holds the same values (the same seed built them) and places
    its own copies; ``device_put`` cannot address other processes' devices.
    """
    sharding = replicated(mesh)
    if not is_multiprocess(sharding):
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)
