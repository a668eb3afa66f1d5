"""Frame cache faults: runs sharing a cache, workers outliving a killed command, Ctrl-C and a
full or read-only disk during the conversion."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from plif_jax.data import cache as cache_lib
from plif_jax.data.cache import FrameStore
from plif_jax.errors import DiskError, Interrupted
from tests.support.frames import BASE, CountingProducer
from tests.support.runs import ROOT


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pid reuse within the test is negligible)


def test_conversion_removes_only_orphaned_temporary_files(tmp_path):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    store.directory.mkdir(parents=True)
    host, dead = socket.gethostname(), _dead_pid()
    other_run = subprocess.Popen(["sleep", "60"])  # a live process: another run's writer
    # Another run converting into the same cache now (a live writer), on this host or another.
    live = store.directory / f".000001.npy.{host}.{other_run.pid}.tmp"
    remote = store.directory / f".000002.npy.other-host.{dead}.tmp"
    # Left by writers that are gone: an earlier run killed mid-write (new and old name formats).
    orphans = [
        store.directory / f".000003.npy.{host}.{dead}.tmp",
        store.directory / f".000004.npy.{dead}.tmp",
    ]
    for path in (live, remote, *orphans):
        path.write_bytes(b"partial")
    try:
        store.ensure(CountingProducer(num_samples=6))
    finally:
        other_run.kill()
        other_run.wait()
    assert store.complete
    assert live.exists() and remote.exists()
    assert not any(p.exists() for p in orphans)


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    store.directory.mkdir(parents=True)

    def full_disk(file, arr, **kwargs):
        file.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_lib.np, "save", full_disk)
    with pytest.raises(OSError) as err:
        store.save(0, np.zeros((2, 2, 2, 2), np.float32))
    assert err.value.errno == errno.ENOSPC
    assert err.value.filename.endswith(f".000000.npy.{socket.gethostname()}.{os.getpid()}.tmp")
    assert not list(store.directory.iterdir())


@pytest.mark.parametrize(
    "code,what", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EIO, "")]
)
def test_disk_fault_during_conversion_is_a_disk_error_keeping_the_frames(
    tmp_path, monkeypatch, code, what
):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    real_save = FrameStore.save

    def save(self, index, frames):
        if index == 4:
            raise OSError(code, os.strerror(code), str(self.path(index)))
        real_save(self, index, frames)

    monkeypatch.setattr(FrameStore, "save", save)
    with pytest.raises(DiskError) as err:
        store.ensure(CountingProducer(num_samples=9))
    msg = str(err.value)
    assert f"cannot write {store.path(4)}: {what}" in msg and " free there)" in msg
    assert f"The 4 of 9 samples converted so far are kept in {store.directory}" in msg
    assert "--config.data.cache_dir" in msg and "run the same command again" in msg
    monkeypatch.setattr(FrameStore, "save", real_save)
    store.ensure(CountingProducer(num_samples=9))  # the rerun converts the rest
    assert store.complete and store.missing(9) == []


def test_ctrl_c_during_conversion_says_what_is_kept(tmp_path):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    with pytest.raises(Interrupted) as err:
        store.ensure(CountingProducer(num_samples=9, fail_at=7))
    assert str(err.value) == (
        f"frame conversion stopped: 6 of 9 samples are converted and kept in {store.directory}; "
        "run the same command again to convert the rest and continue."
    )


# The parent converts with 2 workers that each record their pid and then block; the test kills
# the parent with SIGKILL (no handler runs) and checks that the workers are gone too.
_PARENT = """
import dataclasses, os, sys, time
import numpy as np
from plif_jax.data.cache import FrameStore

@dataclasses.dataclass
class Blocking:
    num_samples: int = 4
    chunk_size: int = 1
    def frames(self, indices):
        import signal
        with open(os.path.join(sys.argv[1], f"worker.{os.getpid()}"), "w") as f:
            f.write(str(signal.getsignal(signal.SIGINT)))
        time.sleep(120)

FrameStore(sys.argv[1], "d", "train", {}).ensure(Blocking(), num_workers=2)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.e2e
@pytest.mark.e2e  # a converting process killed by SIGKILL
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_conversion_workers_die_with_a_killed_parent(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker.*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        files = list(tmp_path.glob("worker.*"))
        assert len(files) == 2, "workers did not start"
        # Ctrl-C is the parent's to handle: a worker ignores SIGINT.
        assert all(f.read_text() == str(signal.SIG_IGN) for f in files)
        workers = [int(f.name.split(".")[1]) for f in files]
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a conversion worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for f in tmp_path.glob("worker.*"):
            try:
                os.kill(int(f.name.split(".")[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass
