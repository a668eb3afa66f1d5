"""Environment faults at the command line (plif_jax.cli.guard): a full, read-only or failing disk
is one ``error: ...`` line naming the path and the free space (exit 2), Ctrl-C one
``interrupted: ...`` line (exit 130); a bug keeps its traceback. In-process: the entry points all
go through ``cli.run`` / ``cli.run_plain``, which call ``guard``."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from plif_jax import cli
from plif_jax.errors import Interrupted
from plif_jax.runtime import disk
from plif_jax.training import workdir_lock
from tests.support.runs import ROOT


def _exit(capsys, call):
    with pytest.raises(SystemExit) as stop:
        cli.run_plain(call)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return stop.value.code, err[0]


@pytest.mark.parametrize(
    "code,what",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EROFS, "read-only filesystem"),
        (errno.EIO, "input/output error"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_disk_fault_is_one_line_naming_path_and_free_space(capsys, tmp_path, code, what):
    path = str(tmp_path / "out" / "summary.json")

    def main():
        raise OSError(code, os.strerror(code), path)

    status, line = _exit(capsys, main)
    assert status == 2
    assert line.startswith(f"error: cannot write {path}: {what} (")
    assert " free there). Make room there or choose another, writable location" in line
    assert disk.free_space(path) in line


def test_orbax_style_disk_fault_names_the_quoted_file():
    e = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/x/ckpt/8.orbax-checkpoint-tmp/_sharding": '
        "Failed to write 11010 bytes to file 13: No space left on device [os_error_code='28']"
    )
    assert disk.fault(RuntimeError("wrapped")) is None
    assert disk.fault(e) == (errno.ENOSPC, "/x/ckpt/8.orbax-checkpoint-tmp/_sharding")
    try:
        try:
            raise e
        except ValueError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert disk.fault(outer)[0] == errno.ENOSPC


def test_ctrl_c_is_one_interrupted_line_exit_130(capsys):
    def main():
        raise KeyboardInterrupt

    status, line = _exit(capsys, main)
    assert status == 130
    assert line.startswith("interrupted: stopped by Ctrl-C; every file already written is kept")
    assert line.endswith("run the same command again to continue.")

    def converting():
        raise Interrupted("frame conversion stopped: 6 of 9 samples are converted and kept in /c")

    status, line = _exit(capsys, converting)
    assert (status, line) == (
        130,
        "interrupted: frame conversion stopped: 6 of 9 samples are converted and kept in /c",
    )


def test_other_os_errors_keep_their_traceback():
    def main():
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):
        cli.run_plain(main)


def test_writing_names_the_file_of_a_failed_write(tmp_path):
    with pytest.raises(OSError) as err, disk.writing(tmp_path / "m.jsonl"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(tmp_path / "m.jsonl") and err.value.errno == errno.ENOSPC


@pytest.mark.e2e
@pytest.mark.e2e
def test_train_on_a_workdir_in_use_exits_2_with_one_line(tmp_path):
    # The real command line (one subprocess for the family): refused before any data or model.
    workdir = tmp_path / "run"
    workdir.mkdir()
    with workdir_lock.WorkdirLock(str(workdir)):
        before = sorted(os.listdir(workdir))
        proc = subprocess.run(
            [
                sys.executable, "-m", "experiments.train", "--config=configs/quickstart.py",
                f"--workdir={workdir}",
            ],
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert sorted(os.listdir(workdir)) == before
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --workdir {workdir} is in use by another training run (pid ")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in last
    assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 1
    print(last)


def test_the_logs_of_a_save_that_hit_a_full_disk_are_dropped():
    import logging

    full = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/x/8.orbax-checkpoint-tmp/d/1": '
        "No space left on device [os_error_code='28']"
    )
    quiet = disk._QuietOrbaxDiskFaults()

    def record(name, pathname, exc, msg="Task exception was never retrieved"):
        info = (type(exc), exc, None)
        return logging.LogRecord(name, logging.ERROR, pathname, 1, msg, None, info)

    assert not quiet.filter(record("asyncio", "/py/asyncio/base_events.py", full))
    assert not quiet.filter(record("absl", "/site/orbax/checkpoint/future.py", full))
    other = RuntimeError("a bug")
    assert quiet.filter(record("asyncio", "/py/asyncio/base_events.py", other))
    assert quiet.filter(record("absl", "/site/plif_jax/x.py", full))  # not Orbax's: kept
