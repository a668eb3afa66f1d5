"""Running an ``experiments`` script's ``main`` as its command line does, in this process or in a
fresh interpreter, and reading back its exit status and stderr."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from absl import flags
from absl import logging as absl_logging
from absl.testing import flagsaver

from plif_jax import cli
from plif_jax.runtime import allocator
from tests.support.runs import ROOT


@dataclasses.dataclass
class Run:
    returncode: int
    stderr: str
    cpu_seconds: float = 0.0  # user + system of a subprocess (and its children): load-independent
    wall_seconds: float = 0.0


def run_in_process(script: str, args: list[str], monkeypatch, capsys) -> Run:
    """``plif_jax.cli.run(experiments.<script>.main)`` on ``[script, *args]`` in this process.

    The path is the command line's: absl parses the flags (``cli.parse_flags``), ``main`` runs,
    a ``UserError`` or a command-line mistake ends in ``SystemExit``. What the process keeps is
    put back afterwards: flag values, ``sys.argv``, ``XLA_FLAGS``, the logging handlers. Two
    things differ from a fresh interpreter, neither part of the checked behaviour: glibc's malloc
    is not re-tuned (``allocator.keep_freed_memory``, a per-process setting), and the
    required-flag checks of *other* scripts imported into this test process are left out (one
    process never holds two scripts' flags).
    """
    module = importlib.import_module(f"experiments.{script}")
    argv = [f"experiments.{script}", *args]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.* overrides from it
    monkeypatch.setattr(allocator, "keep_freed_memory", allocator.in_effect)
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    root_level = logging.root.level
    absl_logger = absl_logging.get_absl_logger()
    monkeypatch.setattr(absl_logger, "filters", list(absl_logger.filters))
    xla_flags = os.environ.get("XLA_FLAGS")
    capsys.readouterr()
    try:
        with flagsaver.flagsaver():
            for name in list(flags.FLAGS):
                owner = flags.FLAGS.find_module_defining_flag(name) or ""
                if owner.startswith("experiments.") and owner != module.__name__:
                    flags.FLAGS[name].validators = []  # restored by flagsaver
            with pytest.raises(SystemExit) as exit_info:
                cli.run(module.main, argv)
    finally:
        logging.root.setLevel(root_level)
        if xla_flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = xla_flags
    return Run(exit_info.value.code, capsys.readouterr().err)


def run_subprocess(script: str, args: list[str], env: dict[str, str], log: str) -> Run:
    """``python -m experiments.<script> *args`` in a fresh interpreter: exit status, stderr, CPU
    and wall seconds (stdout and stderr also kept in ``log``.out / .err)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    t0 = time.monotonic()
    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"experiments.{script}", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )
        watchdog = threading.Timer(300, proc.kill)  # a hang fails the case, not the session
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # reaps it: rusage of this child only
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(log + ".err") as f:
        stderr = f.read()
    cpu = usage.ru_utime + usage.ru_stime
    return Run(proc.returncode, stderr, cpu, time.monotonic() - t0)
