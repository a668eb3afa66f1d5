"""Scalar logging: TensorBoard event files (tensorboardX) and ``metrics.jsonl`` side by side.

Every record is written to both: TensorBoard gets one scalar per key at ``step`` (the global
training step, a single x-axis for all tags so that a resumed run can purge what the interrupted
one wrote after its last checkpoint); ``metrics.jsonl`` gets one JSON object per record with
``epoch``, ``step`` and the values (the analysis notebook reads ``tau/<layer>`` trajectories from
it). On resume the JSONL file is cut back to its length at the checkpoint and TensorBoard events
after the checkpoint's step are purged, so a resumed run logs exactly what an uninterrupted one
would.

Both files are written so that a ``kill -9`` at any moment loses nothing a checkpoint refers to:
every record is one ``write`` system call on an unbuffered file (no half-written line or event is
left in a Python buffer), and the event file is written synchronously (tensorboardX's
``SummaryWriter`` queues events for a background thread, and its ``flush`` does not drain that
queue, so events logged before a checkpoint could be lost by a kill after it). Each run start
opens a new event file whose name sorts after the earlier ones (TensorBoard reads a directory's
event files in name order).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from plif_jax.errors import DataError
from plif_jax.runtime import disk

JSONL_NAME = "metrics.jsonl"


class EventFile:
    """A TensorBoard event file, one synchronous ``write`` per event.

    Args:
      logdir: directory of the file.
      purge_step: written first as a ``SessionLog.START`` at this step, which tells TensorBoard
        to drop the events of earlier files with ``step >= purge_step``; None writes no marker.
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        from tensorboardX.proto import event_pb2

        self._event_pb2 = event_pb2
        stamp, host = int(time.time()), socket.gethostname()
        n = sum("tfevents" in f for f in os.listdir(logdir))
        while True:  # the sequence number keeps names unique and in creation order
            self.path = os.path.join(logdir, f"events.out.tfevents.{stamp:010d}.{host}.{n:04d}")
            try:
                self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 (closed in close())
                break
            except FileExistsError:
                n += 1
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._write(event_pb2.Event(wall_time=time.time(), step=purge_step, session_log=log))

    def _write(self, event) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", masked_crc32c(header))
        record += data + struct.pack("<I", masked_crc32c(data))
        self._file.write(record)

    def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One event holding every scalar of a record."""
        from tensorboardX.proto import summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
        ]
        summary = summary_pb2.Summary(value=values)
        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class MetricWriter:
    """Writes scalar records to TensorBoard and ``<workdir>/metrics.jsonl``.

    Args:
      workdir: run directory (event files and ``metrics.jsonl`` go here).
      resume_offset: byte length of ``metrics.jsonl`` at the checkpoint being resumed (the file
        is truncated to it); ``None`` for a fresh run (the file is truncated to empty).
      purge_step: TensorBoard drops events with ``step >= purge_step`` written by an earlier,
        interrupted run.
      enabled: only the first process of a multi-host run writes.
    """

    def __init__(
        self,
        workdir: str,
        *,
        resume_offset: int | None = None,
        purge_step: int | None = None,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.path = os.path.join(workdir, JSONL_NAME)
        if not enabled:
            self._file = None
            self._tb = None
            return
        os.makedirs(workdir, exist_ok=True)
        offset = resume_offset or 0
        with open(self.path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:  # only a machine crash (not a killed process) can lose flushed data
                logging.warning(
                    "%s is %d bytes, shorter than the %d bytes the checkpoint recorded: records "
                    "of earlier epochs are missing from it (TensorBoard's copy has them).",
                    self.path,
                    size,
                    offset,
                )
                f.seek(0)
                offset = f.read().rfind(b"\n") + 1  # keep the complete lines
            # Records written after the checkpoint belong to work that will be redone.
            f.truncate(offset)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (closed in close())
        self._tb = EventFile(workdir, purge_step=purge_step)

    def write(self, *, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one record: ``{'epoch', 'step', **scalars}``."""
        if not self.enabled:
            return
        record = {"epoch": int(epoch), "step": int(step)}
        record.update({k: float(v) for k, v in scalars.items()})
        with disk.writing(self.path):
            self._file.write((json.dumps(record) + "\n").encode())  # one write: never half a line
        with disk.writing(self._tb.path):
            self._tb.add_scalars(int(step), scalars)

    def offset(self) -> int:
        """Syncs both files to disk; returns the byte length of ``metrics.jsonl``.

        Called when a checkpoint is saved (the checkpoint records this offset).
        """
        if not self.enabled:
            return 0
        self.flush()
        return os.path.getsize(self.path)

    def flush(self) -> None:
        """Both files are unbuffered; this makes them survive a machine crash too."""
        if self.enabled:
            with disk.writing(self.path):
                os.fsync(self._file.fileno())
            with disk.writing(self._tb.path):
                self._tb.sync()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
            self.enabled = False


class MetricsFileError(DataError, json.JSONDecodeError):
    """A line of ``metrics.jsonl`` is not valid JSON (the message names the file and line)."""

    def __init__(self, path: str, lineno: int, error: json.JSONDecodeError):
        json.JSONDecodeError.__init__(self, error.msg, error.doc, error.pos)
        self.path, self.lineno = path, lineno
        self.args = (
            f"{path}:{lineno} is not valid JSON ({error.msg}); delete that line (a run killed "
            "while writing leaves a truncated last line) and retry.",
        )

    def __str__(self) -> str:
        return str(self.args[0])


def read_metrics(path_or_workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl`` file, in file order (blank lines skipped).

    Args:
      path_or_workdir: the file, or a run directory holding it.

    Raises:
      FileNotFoundError: there is no such file.
      MetricsFileError: a line is not valid JSON (a ``DataError`` and a ``json.JSONDecodeError``;
        the message names the file and line).
    """
    path = os.fspath(path_or_workdir)
    if os.path.isdir(path):
        path = os.path.join(path, JSONL_NAME)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MetricsFileError(path, lineno, e) from e
    return records


# The name plif_jax.analysis.paper_runs still calls (it switches to read_metrics).


def read_tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Reads every scalar from the event files in ``logdir`` without TensorFlow.

    Parses the TFRecord framing (8-byte length, 4-byte CRC, payload, 4-byte CRC) and decodes each
    payload as a ``tensorboardX.proto.event_pb2.Event``. Honours purge markers: a
    ``SessionLog.START`` at step ``s`` discards earlier-read events with ``step >= s``, as
    TensorBoard does. A record cut short at the end of a file (a writer killed mid-record) is
    ignored, as TensorBoard ignores it.

    Returns:
      ``{tag: [(step, value), ...]}`` in file order.
    """
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(f for f in os.listdir(logdir) if "tfevents" in f)
    for name in files:
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            if pos + 12 + length + 4 > len(data):
                break
            payload = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(payload)
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                for tag in out:
                    out[tag] = [(s, v) for s, v in out[tag] if s < event.step]
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out
