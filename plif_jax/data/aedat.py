"""Decoders of the original event files: AEDAT 3.1 (DVS128 Gesture) and AEDAT 2.0 (CIFAR10-DVS).

Both follow the paper's code, SpikingJelly at ``fangwei123456/spikingjelly@73f94ab``
(``spikingjelly/datasets/dvs128_gesture.py`` and ``cifar10_dvs.py``), which the original
repository's README pins:

- AEDAT 3.1 (IBM's ``user*_*.aedat``): ``#`` header lines up to ``#!END-HEADER``, then packets of a
  28-byte little-endian header (``eventType`` int16, ``eventSource`` int16, ``eventSize``,
  ``eventTSOffset``, ``eventTSOverflow``, ``eventCapacity``, ``eventNumber``, ``eventValid``:
  int32) followed by ``eventCapacity * eventSize`` bytes. Only packets of type 1 (polarity) are
  decoded, each event a 32-bit data word and a 32-bit timestamp: ``x = (data >> 17) & 0x7FFF``,
  ``y = (data >> 2) & 0x7FFF``, ``p = (data >> 1) & 1``, ``t = ts | (eventTSOverflow << 31)``
  (µs). As in the paper's code, every event of the packet's capacity is decoded and the valid bit
  (bit 0) is not checked.
- AEDAT 2.0 (``cifar10_<class>_<i>.aedat``): ``#`` header lines, then big-endian uint32 pairs
  ``(address, timestamp)``, no DVS/APS filtering. ``x_raw = (addr & 0xFE) >> 1``,
  ``y_raw = (addr & 0x7F00) >> 8``, ``pol = addr & 1``, stored **as x = 127 - x_raw, y = y_raw,
  p = 1 - pol** (the paper's orientation; newer SpikingJelly transposes it).

tonic 1.7.0's ``tonic.io`` is used where it is right and not where it is not: its AEDAT 2.0 body
reader (``get_aer_events_from_file`` with version 2: big-endian pairs) is used here; its
``read_dvs_ibm`` cannot run (it unpacks the three values ``read_aedat_header_from_file``
returns into two), and its AEDAT 3 path reads every packet whatever its event type and drops
``eventTSOverflow``, so the AEDAT 3.1 decoder is written here (``tests/data/test_data_original.py``
shows both).
"""

from __future__ import annotations

import os
import struct

import numpy as np
import tonic

from plif_jax.errors import DataError

# The event arrays handed to integrate_events (tonic's field names).
EVENTS_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
POLARITY_EVENT = 1  # AEDAT 3.1 eventType of polarity packets
PACKET_HEADER = struct.Struct("<hhiiiiii")  # 28 bytes
CIFAR10DVS_SIZE = 128


def _events(x, y, t, p) -> np.ndarray:
    out = np.empty(len(t), dtype=EVENTS_DTYPE)
    out["x"], out["y"], out["t"], out["p"] = x, y, t, p
    return out


def _truncated(path: str, what: str) -> DataError:
    return DataError(
        f"Truncated or corrupt event file {path}: {what}. Re-extract it (delete the 'extracted' "
        f"folder next to the archive) or download the archive again."
    )


def header_end(buf: bytes, path: str, magic: bytes) -> int:
    """Byte offset of the first data byte after the ``#`` header lines (which start with magic)."""
    if not buf.startswith(magic):
        raise DataError(
            f"{path} is not an {magic[2:].decode()} file (its first line does not start with "
            f"{magic.decode()!r}); check that the archive holds the original recordings."
        )
    pos = 0
    while pos < len(buf) and buf[pos : pos + 1] == b"#":
        nl = buf.find(b"\n", pos)
        if nl < 0:
            raise _truncated(path, "the header has no end")
        line, pos = buf[pos:nl], nl + 1
        if line.rstrip(b"\r") == b"#!END-HEADER":
            break
    return pos


def read_aedat31_polarity(path: str | os.PathLike) -> np.ndarray:
    """Polarity events of an AEDAT 3.1 file (DVS128 Gesture), in file order.

    Args:
      path: a ``user*_*.aedat`` file.

    Returns:
      Structured array with fields ``x``, ``y``, ``t`` (µs, int64, overflow applied), ``p``.

    Raises:
      DataError: not AEDAT 3.x, or a packet header or packet body cut short (names the file).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        buf = f.read()
    pos = header_end(buf, path, b"#!AER-DAT3")
    words, overflows = [], []
    while pos < len(buf):
        if len(buf) - pos < PACKET_HEADER.size:
            raise _truncated(
                path,
                f"{len(buf) - pos} bytes left at offset {pos}, less than a "
                f"{PACKET_HEADER.size}-byte packet header",
            )
        etype, _src, esize, _off, overflow, capacity, _num, _valid = PACKET_HEADER.unpack_from(
            buf, pos
        )
        pos += PACKET_HEADER.size
        nbytes = capacity * esize
        if esize < 0 or capacity < 0 or len(buf) - pos < nbytes:
            raise _truncated(
                path,
                f"a packet at offset {pos - PACKET_HEADER.size} announces "
                f"{nbytes} bytes, {len(buf) - pos} remain",
            )
        if etype == POLARITY_EVENT and capacity:
            if esize < 8 or esize % 4:
                raise DataError(f"{path}: polarity packet with event size {esize}, expected 8.")
            block = np.frombuffer(buf, dtype="<u4", count=nbytes // 4, offset=pos)
            block = block.reshape(capacity, esize // 4)
            words.append(block[:, :2])
            overflows.append(np.full(capacity, overflow, dtype=np.int64))
        pos += nbytes
    if not words:
        return _events([], [], [], [])
    w = np.concatenate(words)
    data = w[:, 0]  # bit fields on uint32: no 64-bit copy of the data words
    t = w[:, 1].astype(np.int64) | (np.concatenate(overflows) << 31)
    return _events((data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, t, (data >> 1) & 1)


def read_aedat2(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(address, timestamp)`` uint32 arrays of an AEDAT 2.0 file.

    The header is skipped here; the body is read with tonic's AEDAT 2 reader (big-endian pairs).

    Raises:
      DataError: not AEDAT 2.x, or a body that is not a whole number of 8-byte records.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    start = header_end(head, path, b"#!AER-DAT2")
    body = os.path.getsize(path) - start
    if body % 8:
        raise _truncated(path, f"{body} data bytes is not a whole number of 8-byte events")
    events = tonic.io.get_aer_events_from_file(path, 2.0, start)
    return events["address"].astype(np.uint32), events["timeStamp"].astype(np.uint32)


def decode_cifar10dvs(address: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """CIFAR10-DVS addresses in the paper's orientation (``x = 127 - x_raw``, ``p = 1 - pol``).

    Args:
      address: AEDAT 2.0 addresses (uint32).
      timestamp: their timestamps (µs).

    Returns:
      Structured array with fields ``x``, ``y``, ``t``, ``p``.
    """
    a = address.astype(np.int64)
    x_raw = (a & 0xFE) >> 1
    y_raw = (a & 0x7F00) >> 8
    pol = a & 1
    return _events(CIFAR10DVS_SIZE - 1 - x_raw, y_raw, timestamp.astype(np.int64), 1 - pol)


def read_cifar10dvs(path: str | os.PathLike) -> np.ndarray:
    """Events of one original CIFAR10-DVS recording (AEDAT 2.0), in the paper's orientation."""
    return decode_cifar10dvs(*read_aedat2(path))


def encode_cifar10dvs(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_cifar10dvs`'s orientation: the AEDAT 2.0 address of (x, y, p)."""
    x_raw = CIFAR10DVS_SIZE - 1 - np.asarray(x, np.int64)
    pol = 1 - np.asarray(p, np.int64)
    return ((np.asarray(y, np.int64) << 8) | (x_raw << 1) | pol).astype(np.uint32)
