"""Preemption: SIGTERM/SIGINT (or a step budget) ask the loop to checkpoint and return.

The handler only sets a flag; the training loop asks :attr:`StopRequest.requested` at every step
boundary, saves there and returns an ``'interrupted'`` summary, and the next start resumes
exactly from that step.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any


class StopRequest:
    """A stop asked for by a signal, or after ``stop_after_steps`` steps of this process.

    Use as a context manager: the SIGTERM/SIGINT handlers are installed on entry (main thread
    only, where Python allows it) and the previous ones restored on exit.
    """

    def __init__(self, stop_after_steps: int | None = None):
        self.stop_after_steps = stop_after_steps
        self.signal: int | None = None
        self.steps = 0  # training steps run by this process
        self._previous: dict[int, Any] = {}

    def count_step(self) -> None:
        self.steps += 1

    @property
    def requested(self) -> bool:
        """A signal arrived, or this process has run its ``stop_after_steps``."""
        budget = self.stop_after_steps
        return self.signal is not None or (budget is not None and self.steps >= budget)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("Received signal %d: checkpointing at the next step boundary.", signum)
        self.signal = signum
