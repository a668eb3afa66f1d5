"""Disk faults: a full, read-only or failing disk as one line naming the path and the free space.

A write that fails for want of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``), because the filesystem
is read-only (``EROFS``) or not the user's to write (``EACCES``), or with an I/O error (``EIO``)
is not a bug: the callers report it as a :class:`plif_jax.errors.DiskError` (one ``error: ...``
line, exit status 2) that names the file, the free space on its filesystem and the fix (this module
builds the message; it sits below ``plif_jax.errors`` and imports nothing of the package).

Python raises these as ``OSError`` with ``errno``; Orbax and TensorStore (checkpoints) raise a
``ValueError`` whose text carries ``[os_error_code='28']`` and the file in quotes. :func:`fault`
reads both, through the exception's causes. A write on an open file raises without a file name:
:func:`writing` adds it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator

# errno -> what it means, as the message says it.
FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the filesystem",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EIO: "input/output error (a failing disk or network filesystem)",
}
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def fault(e: BaseException) -> tuple[int, str | None] | None:
    """``(errno, path or None)`` when ``e`` (or an exception it came from) is a disk fault.

    The path is the first one named along ``e``'s causes (an outer exception may name none).
    """
    code, path, seen = None, None, 0
    while e is not None and seen < 8 and path is None:
        seen += 1
        this, where = None, None
        if isinstance(e, OSError) and e.errno in FAULTS:
            this, where = e.errno, e.filename
        elif not isinstance(e, OSError):
            m = _OS_CODE.search(str(e))
            if m and int(m.group(1)) in FAULTS:
                paths = _QUOTED_PATH.findall(str(e))
                this, where = int(m.group(1)), (paths[-1] if paths else None)
        if this is not None:
            code = code if code is not None else this
            path = where
        e = e.__cause__ or e.__context__
    return None if code is None else (code, path)


def free_space(path: str) -> str:
    """The free space on ``path``'s filesystem (its nearest existing folder), e.g. ``1.2 GB``."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1000
    return "unknown"


def describe(e: BaseException, default_path: str | None = None) -> str | None:
    """``'cannot write PATH: no space left on the device (0 B free there)'``, or None."""
    found = fault(e)
    if found is None:
        return None
    code, path = found
    path = path or default_path or "a file"
    return f"cannot write {path}: {FAULTS[code]} ({free_space(path)} free there)"


def with_fix(e: BaseException, fix: str, default_path: str | None = None) -> str | None:
    """:func:`describe` of ``e`` followed by ``fix`` (the caller raises it as a ``DiskError``),
    or None when ``e`` is no disk fault."""
    text = describe(e, default_path)
    return None if text is None else f"{text}. {fix}"


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Names ``path`` in an ``OSError`` raised without a file name (a ``write`` on an open file)."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, os.strerror(e.errno), os.fspath(path)) from e
        raise


class _QuietOrbaxDiskFaults(logging.Filter):
    """Drops the error logs (with tracebacks) of a checkpoint save that failed on a disk fault:
    Orbax's own, and asyncio's "exception was never retrieved" for its abandoned writes.

    The same failure reaches the caller, which reports it as one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if "orbax" not in record.pathname and record.name != "asyncio":
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and fault(exc):
            return False
        m = _OS_CODE.search(record.getMessage())
        return not (m and int(m.group(1)) in FAULTS)


def quiet_orbax_disk_faults() -> None:
    """Installs :class:`_QuietOrbaxDiskFaults` where Orbax (absl) and asyncio log, once."""
    for name in ("absl", "", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietOrbaxDiskFaults) for f in logger.filters):
            logger.addFilter(_QuietOrbaxDiskFaults())
