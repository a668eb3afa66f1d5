"""Preemption: SIGTERM/SIGINT (or a step budget) ask the loop to checkpoint and return.

The handler only sets a flag; the training loop asks :attr:`StopRequest.requested` at every step
boundary, saves there and returns an ``'interrupted'`` summary, and the next start resumes
exactly from that step.

Multi-host: a signal reaches one process (a scheduler may send it to each at a different time),
but every process must stop at the same step, or the others wait forever in the next collective
and the checkpoint is never complete. The processes agree every ``sync_every`` steps (one
all-gather of their flags, at the step boundary where the loop already reads its metrics): a stop
asked of any process stops all of them there, at the same step.
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

    def __init__(self, stop_after_steps: int | None = None, *, sync_every: int = 1):
        self.stop_after_steps = stop_after_steps
        self.signal: int | None = None
        self.steps = 0  # training steps run by this process
        self.sync_every = max(1, int(sync_every))
        self._agreed = False  # multi-host: some process asked to stop, as of the last sync
        self._previous: dict[int, Any] = {}

    def count_step(self) -> None:
        self.steps += 1
        if self.steps % self.sync_every == 0:
            self.sync()

    @property
    def asked_here(self) -> bool:
        """A signal reached this process, or it has run its ``stop_after_steps``."""
        budget = self.stop_after_steps
        return self.signal is not None or (budget is not None and self.steps >= budget)

    @property
    def requested(self) -> bool:
        """Stop now: single process, :attr:`asked_here`; multi-host, some process asked (as of
        the last :meth:`sync`, the same answer on every process)."""
        return self._agreed if _process_count() > 1 else self.asked_here

    def sync(self) -> None:
        """Multi-host: every process learns whether any asked to stop (a collective: all call it
        at the same step)."""
        if _process_count() > 1 and not self._agreed:
            import numpy as np
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.int32(self.asked_here))
            self._agreed = bool(np.any(flags))
            if self._agreed and not self.asked_here:
                logging.warning("Another process asked to stop: checkpointing at this step.")

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


def _process_count() -> int:
    import jax

    return jax.process_count()
