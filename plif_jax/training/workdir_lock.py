"""One writer per workdir: an OS file lock held by the training run for its whole duration.

Two training commands on one ``--workdir`` (a user launching twice, a scheduler retrying) would
both write checkpoints, metrics and the summary into it and leave a run that matches neither. The
first command takes an exclusive ``flock`` on ``<workdir>/.lock`` before it writes anything else
there; a second one finds it taken and stops at once with one line naming the other process (its
pid and host) and the fix.

The lock belongs to the open file, so the kernel drops it when the process ends however it ends
(``kill -9`` included): a stale lock never blocks a later run, whatever the file still says. The
file holds the holder's pid, host and start time for the message, and is emptied on release (a
finished run leaves an empty ``.lock``). Multi-host runs: process 0 holds the lock for all of them.

``flock`` is local to one machine on some network filesystems (NFS without lock support, some
FUSE mounts): there two machines may still both run on one workdir.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from plif_jax.errors import UserError

LOCK_NAME = ".lock"


class WorkdirBusyError(UserError, BlockingIOError):
    """Another training run holds the workdir's lock."""


class WorkdirLock:
    """The exclusive lock of one workdir (:func:`acquire` takes it; :meth:`release` drops it)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock, or raises :class:`WorkdirBusyError` naming the holder.

        Raises:
          WorkdirBusyError: another process holds it (a ``UserError``: one line, exit 2).
          OSError: the lock file cannot be created (a read-only or full disk).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirBusyError(self.busy_message(holder)) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            record = f"pid {os.getpid()} on host {socket.gethostname()}, since {_now()}\n"
            os.pwrite(fd, record.encode(), 0)
        except OSError:
            self.release()
            raise
        return self

    def busy_message(self, holder: str) -> str:
        workdir = os.path.dirname(self.path)
        who = holder or "another process (it wrote no pid yet)"
        return (
            f"--workdir {workdir} is in use by another training run ({who}); two runs on one "
            "workdir would overwrite each other's checkpoints. Wait for it to finish (or stop "
            "it: it checkpoints and a rerun resumes), or choose another --workdir."
        )

    def release(self) -> None:
        """Empties the file and drops the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a full or read-only disk: the kernel still drops the lock below
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_for_run(workdir: str) -> WorkdirLock:
    """The run's lock: process 0 takes it; every process stops if it is taken.

    Multi-host: process 0 tells the others whether it got the lock (one broadcast), so a refused
    run stops on every process at once instead of leaving the others waiting for it.

    Raises:
      WorkdirBusyError: another run holds the workdir (on every process of this run).
    """
    import jax

    lock = WorkdirLock(workdir)
    refused: WorkdirBusyError | None = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirBusyError as e:
            refused = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        busy = bool(multihost_utils.broadcast_one_to_all(np.int32(refused is not None)))
        if busy and refused is None:
            refused = WorkdirBusyError(
                lock.busy_message("its holder is named in process 0's message")
            )
    if refused is not None:
        raise refused
    return lock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
