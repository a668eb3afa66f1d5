"""Batching: shuffled training batches, padded evaluation batches, host-to-device prefetch.

A :class:`BatchSource` owns the labels of one split and a ``fetch(indices) -> x`` function that
reads the samples. Batch order is a pure function of ``(seed, epoch)``, and ``batches(epoch,
start)`` skips the first ``start`` batches without reading them, so the iterator position is
``(epoch, start batch)`` and a resumed run sees exactly the batches it would have seen.

In a multi-process run (``sharding`` spanning the devices of several processes) every process
computes the same batch order but reads only its own rows of each batch
(:func:`plif_jax.runtime.parallel.local_rows`), and the batch arrives as a global ``jax.Array``
assembled from every process's part.

Why the loader is not built on grain (order, speed, resume; measured):
``benchmarks/studies/grain_loader/README.md``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from plif_jax.data.cache import aligned_empty
from plif_jax.errors import ConfigError, DataError
from plif_jax.runtime import parallel

Batch = dict[str, np.ndarray]


class BatchSource:
    """One split as batches of ``{'x', 'y', 'mask'}``.

    Training sources (``train=True``) shuffle with ``np.random.default_rng([seed, epoch])`` and
    drop the last incomplete batch; ``mask`` is all ones. Evaluation sources keep the sample
    order and pad the last batch to ``batch_size`` with zeros and ``mask`` 0.

    With ``prefetch > 0`` a background thread keeps ``prefetch`` batches ready and already
    transferred with ``jax.device_put`` (to ``self.sharding`` when set, else the default
    device), so batches come as ``jax.Array``; with ``prefetch == 0`` they are NumPy arrays read
    synchronously. A ``sharding`` that spans several processes makes every batch a global
    ``jax.Array`` of which this process read and placed only its own rows, prefetch or not.
    """

    def __init__(
        self,
        *,
        name: str,
        labels: np.ndarray,
        fetch: Callable[[np.ndarray], np.ndarray],
        batch_size: int,
        train: bool,
        seed: int = 0,
        prefetch: int = 2,
        sample_shape: tuple[int, ...] = (),
        dtype: np.dtype | type = np.float32,
    ):
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int32)
        self.fetch = fetch
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self.sharding = None
        n = len(self.labels)
        if self.batch_size <= 0:
            raise ConfigError(f"{name}: batch size must be positive, got {self.batch_size}.")
        if self.train and self.batch_size > n:
            raise ConfigError(
                f"{name}: batch size {self.batch_size} is larger than the {n} samples of this "
                f"split; with drop_last there would be no batch. Use a batch size <= {n}."
            )
        if n == 0:
            raise DataError(
                f"{name}: the split holds no samples; check the dataset's files under "
                "config.data.root (a folder emptied or only partly extracted?)."
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_batches(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.train else -(-n // b)

    def batch_indices(self, epoch: int = 0) -> np.ndarray:
        """``[num_batches, batch_size]`` sample indices of an epoch; -1 marks evaluation padding."""
        n, b = len(self.labels), self.batch_size
        if self.train:
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            return order[: self.num_batches * b].reshape(-1, b)
        order = np.full(self.num_batches * b, -1, dtype=np.int64)
        order[:n] = np.arange(n)
        return order.reshape(-1, b)

    def read_batch(self, indices: np.ndarray) -> Batch:
        """Reads one batch (NumPy); indices -1 become zero padding with mask 0."""
        valid = indices >= 0
        take = indices[valid]
        if not valid.any():
            # A process's part of the last evaluation batch can be all padding.
            x = aligned_empty((len(indices), *self.sample_shape), self.dtype)
            x[...] = 0
        else:
            x_valid = self.fetch(take)
            if valid.all() and x_valid.ctypes.data % 64 == 0:
                x = x_valid
            else:
                # A 64-byte aligned buffer lets jax's CPU backend take it without a copy.
                x = aligned_empty((len(indices), *x_valid.shape[1:]), x_valid.dtype)
                x[valid] = x_valid
                x[~valid] = 0
        y = np.zeros(len(indices), dtype=np.int32)
        y[valid] = self.labels[take]
        return {"x": x, "y": y, "mask": valid.astype(np.float32)}

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yields the batches of ``epoch`` from batch number ``start`` on."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"{self.name}: start {start} outside [0, {self.num_batches}].")
        plan = self.batch_indices(epoch)[start:]
        if parallel.is_multiprocess(self.sharding):
            load = self._read_local_part
        elif self.prefetch > 0:
            load = self._read_and_place
        else:
            load = self.read_batch
        if self.prefetch <= 0:
            for idx in plan:
                yield load(idx)
            return
        yield from _prefetched(plan, load, self.prefetch)

    def _read_and_place(self, indices: np.ndarray):
        import jax

        return jax.device_put(self.read_batch(indices), self.sharding)

    def _read_local_part(self, indices: np.ndarray):
        """Reads this process's rows of one batch and assembles the global batch."""
        rows = parallel.local_rows(self.sharding, len(indices))
        return parallel.put_local_batch(self.read_batch(indices[rows]), self.sharding, len(indices))


_DONE = object()


def _prefetched(plan: np.ndarray, load: Callable[[np.ndarray], Batch], depth: int) -> Iterator:
    """Reads and places batches (``load``) in a background thread, ``depth`` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for idx in plan:
                if stop.is_set():
                    return
                batch = load(idx)
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(e)

    thread = threading.Thread(target=work, daemon=True, name="plif_jax-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
