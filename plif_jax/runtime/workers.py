"""Worker processes that never outlive the command that started them.

A worker pool's processes are reaped when the parent shuts the pool down, but not when the parent
is killed (SIGKILL, or SIGTERM before a handler is installed): they keep converting, holding their
memory, until they finish. :func:`die_with_parent`, run first in each worker (a pool's
``initializer``), asks Linux to send the worker SIGKILL the moment its parent ends
(``prctl(PR_SET_PDEATHSIG)``), however it ends. It also leaves Ctrl-C to the parent: the terminal
sends SIGINT to the whole foreground process group, and a worker interrupted mid-file would print
its own traceback; the parent stops the pool instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """In a worker: SIGKILL when the parent ends; SIGINT ignored (the parent handles Ctrl-C).

    Args:
      parent_pid: the pid of the process that started the worker (checked after the request:
        a parent that died before it leaves the worker to end itself at once).

    Returns:
      True where the parent-death signal is set (Linux), False elsewhere.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    return True
