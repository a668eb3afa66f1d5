"""On-disk frame cache: computed once, keyed by every setting that changes the frames.

Layout: ``<cache_dir>/<dataset>/<split>-<key>/`` holding one ``<index:06d>.npy`` per sample (in
the dataset's sorted sample order), ``settings.json`` (what the key was made of, for people) and
``complete`` once every sample is there. ``key`` is a hash of the settings, which include
:data:`FORMAT_VERSION` and a fingerprint of the source files, so a changed setting or changed data
lands in a new directory and can never read stale frames (tonic's own disk cache has served
stale frames: tonic issues #148, #160).

Conversion runs in worker processes (``num_workers``), shows a tqdm progress bar, and is safe to
interrupt: each sample is written to a temporary file and renamed into place (``os.replace`` is
atomic), and a rerun converts only the samples that are missing.

A frame file damaged later (truncated or emptied by a disk or copy fault, or deleted) cannot be
parsed as the ``.npy`` it claims to be; :meth:`FrameStore.load` detects that, reconverts the
sample from its source with a warning naming the file, and returns the new frames: damaged
frames are never fed to training.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import socket
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tqdm

from plif_jax.errors import DataError, DiskError, Interrupted
from plif_jax.runtime import disk, workers

# Bump whenever the frame computation or the file layout changes.
FORMAT_VERSION = 1
_log = logging.getLogger(__name__)
# One repair at a time (the prefetch thread and the main thread may both read).
_REPAIR_LOCK = threading.Lock()
# What reading a truncated, emptied, overwritten or deleted .npy raises.
_DAMAGED = (ValueError, EOFError, FileNotFoundError)


class FrameProducer(Protocol):
    """Computes the frames of samples; must be picklable (it is sent to worker processes)."""

    num_samples: int
    chunk_size: int

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Frames ``[T, 2, H, W]`` float32 of the given samples, in order."""
        ...


def cache_key(settings: dict[str, Any]) -> str:
    """A short, stable hash of ``settings`` (JSON with sorted keys) plus the format version."""
    full = {**settings, "format_version": FORMAT_VERSION}
    payload = json.dumps(full, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def files_fingerprint(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> str:
    """Hash of the source files' paths (relative to ``root``) and sizes, in order.

    New, removed, renamed or resized files change it; moving the whole root does not.
    """
    h = hashlib.sha256()
    for p in paths:
        rel = os.path.relpath(p, root)
        h.update(f"{rel}\0{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """``np.empty`` whose data starts on an ``align``-byte boundary.

    jax's CPU backend adopts such a buffer in ``device_put`` without copying (a misaligned one
    is copied); NumPy's large allocations are only 16-byte aligned.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def holding_dtype(dtypes: Sequence[Any]) -> np.dtype:
    """The dtype that holds every one of ``dtypes`` (stored frame dtypes) exactly: the widest
    unsigned integer type among them, or float32 if any is not an unsigned integer type."""
    dtypes = [np.dtype(d) for d in dtypes]
    if not dtypes or any(d.kind != "u" for d in dtypes):
        return np.dtype(np.float32)
    return max(dtypes, key=lambda d: d.itemsize)


def _compact(frames: np.ndarray) -> np.ndarray:
    """Stores integer counts in the smallest unsigned dtype that holds them exactly."""
    if frames.size and np.all(frames >= 0) and np.all(frames == np.floor(frames)):
        peak = frames.max()
        for dt in (np.uint8, np.uint16, np.uint32):
            if peak <= np.iinfo(dt).max:
                return frames.astype(dt)
    return frames.astype(np.float32)


class FrameStore:
    """A directory of per-sample frame files for one (dataset, split, settings) combination."""

    def __init__(self, cache_dir: str | os.PathLike, dataset: str, split: str, settings: dict):
        self.settings = dict(settings)
        self.key = cache_key(self.settings)
        self.directory = Path(cache_dir).expanduser() / dataset / f"{split}-{self.key}"
        # Set by ensure(): reconverts damaged files. Kept off the copies sent to workers.
        self._producer: FrameProducer | None = None
        self.repaired: list[int] = []  # samples reconverted because their file was damaged

    def path(self, index: int) -> Path:
        return self.directory / f"{index:06d}.npy"

    @property
    def complete(self) -> bool:
        return (self.directory / "complete").exists()

    def missing(self, num_samples: int) -> list[int]:
        """Indices whose frame file does not exist yet."""
        present = {p.name for p in self.directory.glob("*.npy")}
        return [i for i in range(num_samples) if f"{i:06d}.npy" not in present]

    def save(self, index: int, frames: np.ndarray) -> None:
        """Writes one sample atomically (temporary file, then ``os.replace``).

        The temporary file is named after this process and host (:func:`_tmp_name`): runs
        sharing the cache never touch each other's.
        """
        final = self.path(index)
        tmp = final.with_name(_tmp_name(final.name))
        try:
            with disk.writing(tmp), open(tmp, "wb") as f:
                np.save(f, _compact(frames))
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk, Ctrl-C: no half-written file left
            raise

    def load(self, index: int) -> np.ndarray:
        """Frames of one sample as float32 (a damaged file is reconverted first)."""
        return self._read(index).astype(np.float32, copy=False)

    def _read(self, index: int) -> np.ndarray:
        """The stored (compact) frames of one sample; repairs a damaged file."""
        try:
            return np.load(self.path(index))
        except _DAMAGED as e:
            return self._repair(index, e)

    def _repair(self, index: int, error: Exception) -> np.ndarray:
        path = self.path(index)
        reason = f"{type(error).__name__}: {error}"
        if self._producer is None:
            raise DataError(
                f"Damaged frame cache file {path} ({reason}). Delete {self.directory} and run "
                "again: the frames are reconverted from the dataset."
            ) from error
        with _REPAIR_LOCK:
            try:
                return np.load(path)  # repaired meanwhile by another thread
            except _DAMAGED:
                pass
            _log.warning(
                "Frame cache file %s is damaged (%s): reconverting sample %d from its source.",
                path,
                reason,
                index,
            )
            self.save(index, self._producer.frames([index])[0])
            self.repaired.append(index)
            return np.load(path)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_producer"] = None  # workers get the producer separately
        return state

    def load_many(self, indices: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """Frames of several samples stacked, ``[B, T, 2, H, W]`` in ``dtype``.

        ``dtype``: float32, or :meth:`stored_dtype` (every sample's stored dtype fits in it, so
        the batch travels compact and becomes float32 on the device, exactly).
        """
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("load_many needs at least one index.")
        first = self._read(indices[0])
        out = aligned_empty((len(indices), *first.shape), dtype)
        out[0] = first
        for j, i in enumerate(indices[1:], start=1):
            out[j] = self._read(i)  # casts the compact dtype while copying, once
        return out

    def stored_dtype(self, num_samples: int) -> np.dtype:
        """The one dtype that holds every sample's stored frames exactly.

        The smallest unsigned integer type holding every sample's (each sample is stored in its
        own smallest one, :func:`_compact`), or float32 if any sample is not integer counts.
        Read from the files' headers once, then remembered in the directory's ``dtype`` file
        (not written where the cache is read-only).
        """
        memo = self.directory / "dtype"
        try:
            return holding_dtype([memo.read_text().strip()])
        except (OSError, TypeError, ValueError):
            pass
        names = {str(self._header_dtype(i)) for i in range(num_samples)}
        dtype = holding_dtype(sorted(names))
        tmp = memo.with_name(_tmp_name(memo.name))
        try:
            tmp.write_text(str(dtype))
            os.replace(tmp, memo)
        except OSError:  # a read-only or full cache: read the headers again next time
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return dtype

    def _header_dtype(self, index: int) -> np.dtype:
        """A sample file's stored dtype, from its ``.npy`` header (repairs a damaged file)."""
        try:
            with open(self.path(index), "rb") as f:
                version = np.lib.format.read_magic(f)
                read = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")
                return np.dtype(read(f)[2])
        except _DAMAGED as e:
            return self._repair(index, e).dtype

    def ensure(self, producer: FrameProducer, num_workers: int = 1, desc: str = "") -> None:
        """Converts the missing samples (in parallel), then marks the store complete.

        ``producer`` is kept to reconvert any file found damaged later (:meth:`load`).
        """
        if self.complete:
            self._producer = producer
            return
        try:
            self._convert_missing(producer, num_workers, desc)
        except KeyboardInterrupt:
            raise Interrupted(
                f"frame conversion stopped: {self._count_done(producer)} of "
                f"{producer.num_samples} samples are converted and kept in {self.directory}; run "
                "the same command again to convert the rest and continue."
            ) from None
        except OSError as e:
            message = disk.with_fix(
                e,
                f"The {self._count_done(producer)} of {producer.num_samples} samples converted "
                f"so far are kept in {self.directory}; make room there (or choose another, "
                "writable --config.data.cache_dir), then run the same command again to continue.",
                default_path=str(self.directory),
            )
            if message is None:
                raise
            raise DiskError(message) from None
        self._producer = producer

    def _count_done(self, producer: FrameProducer) -> int:
        try:
            return producer.num_samples - len(self.missing(producer.num_samples))
        except OSError:
            return 0

    def _convert_missing(self, producer: FrameProducer, num_workers: int, desc: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        settings = self.directory / "settings.json"
        with disk.writing(settings), open(settings, "w") as f:
            json.dump({**self.settings, "format_version": FORMAT_VERSION}, f, indent=1, default=str)
        todo = self.missing(producer.num_samples)
        size = producer.chunk_size
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        bar = tqdm.tqdm(total=len(todo), desc=desc or str(self.directory), unit="sample")
        try:
            if num_workers <= 1 or len(chunks) <= 1:
                for chunk in chunks:
                    _write_chunk(producer, self, chunk)
                    bar.update(len(chunk))
            else:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*fork.*", category=RuntimeWarning)
                    self._convert_parallel(producer, chunks, num_workers, bar)
        finally:
            bar.close()
        still = self.missing(producer.num_samples)
        if still:
            raise RuntimeError(f"{len(still)} samples still missing in {self.directory}.")
        _remove_orphaned_tmp(self.directory)
        (self.directory / "complete").touch()

    def _convert_parallel(self, producer, chunks, num_workers: int, bar) -> None:
        with futures.ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=_mp_context(),
            initializer=_init_worker,
            initargs=(producer, self, os.getpid()),
        ) as pool:
            pending = {pool.submit(_worker_chunk, c): len(c) for c in chunks}
            try:
                for fut in futures.as_completed(pending):
                    fut.result()
                    bar.update(pending[fut])
            except BaseException:
                # Interrupted or failed: drop queued chunks; written samples stay valid.
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _mp_context():
    """Worker processes: fork on Linux, spawn elsewhere.

    fork starts workers instantly and re-runs nothing (spawn re-imports the caller's main script,
    which breaks unguarded scripts and costs a JAX import per worker). JAX warns that fork and
    its threads can deadlock; that applies to children that use JAX. These workers never do:
    they only read files and run NumPy.
    """
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _write_chunk(producer: FrameProducer, store: FrameStore, indices: Sequence[int]) -> None:
    for i, frames in zip(indices, producer.frames(indices), strict=True):
        store.save(i, frames)


_WORKER: dict[str, Any] = {}


def _init_worker(producer: FrameProducer, store: FrameStore, parent_pid: int) -> None:
    workers.die_with_parent(parent_pid)  # no orphan converting on after a kill of the command
    _WORKER["producer"], _WORKER["store"] = producer, store


def _tmp_name(name: str) -> str:
    """``.<name>.<host>.<pid>.tmp``: whose temporary file it is."""
    return f".{name}.{socket.gethostname()}.{os.getpid()}.tmp"


_TMP = re.compile(r"^\.\d+\.npy\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp$")


def _remove_orphaned_tmp(directory: Path) -> None:
    """Removes the temporary files of writers that are gone (an interrupted earlier run).

    A file of a live process (another run converting into the same cache right now), or of
    another host (a shared filesystem: its process cannot be checked), is left alone.
    """
    host = socket.gethostname()
    for tmp in directory.glob(".*.tmp"):
        m = _TMP.match(tmp.name)
        if m is None or m.group("host") not in (None, host) or _alive(int(m.group("pid"))):
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _worker_chunk(indices: Sequence[int]) -> int:
    _write_chunk(_WORKER["producer"], _WORKER["store"], indices)
    return len(indices)
