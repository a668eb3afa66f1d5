"""Scalar logging: TensorBoard event files (tensorboardX) and ``metrics.jsonl`` side by side.

Every record is written to both: TensorBoard gets one scalar per key at ``step`` (the global
training step, a single x-axis for all tags so that a resumed run can purge what the interrupted
one wrote after its last checkpoint); ``metrics.jsonl`` gets one JSON object per record with
``epoch``, ``step`` and the values (the analysis notebook reads ``tau/<layer>`` trajectories from
it). On resume the JSONL file is cut back to its length at the checkpoint and TensorBoard events
after the checkpoint's step are purged, so a resumed run logs exactly what an uninterrupted one
would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from tensorboardX import SummaryWriter

JSONL_NAME = "metrics.jsonl"


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
            # Records written after the checkpoint belong to work that will be redone.
            f.truncate(offset)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = SummaryWriter(logdir=workdir, purge_step=purge_step, flush_secs=30)

    def write(self, *, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one record: ``{'epoch', 'step', **scalars}``."""
        if not self.enabled:
            return
        record = {"epoch": int(epoch), "step": int(step)}
        record.update({k: float(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            self._tb.add_scalar(key, float(value), global_step=int(step))

    def offset(self) -> int:
        """Flushes; returns the byte length of ``metrics.jsonl`` (saved in checkpoints)."""
        if not self.enabled:
            return 0
        self.flush()
        return os.path.getsize(self.path)

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
            self.enabled = False


def read_jsonl(path: str) -> list[dict[str, float]]:
    """Reads every record of a ``metrics.jsonl`` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Reads every scalar from the event files in ``logdir`` without TensorFlow.

    Parses the TFRecord framing (8-byte length, 4-byte CRC, payload, 4-byte CRC) and decodes each
    payload as a ``tensorboardX.proto.event_pb2.Event``. Honours purge markers: a
    ``SessionLog.START`` at step ``s`` discards earlier-read events with ``step >= s``, as
    TensorBoard does.

    Returns:
      ``{tag: [(step, value), ...]}`` in file order.
    """
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(f for f in os.listdir(logdir) if "tfevents" in f)
    for name in files:
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
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
