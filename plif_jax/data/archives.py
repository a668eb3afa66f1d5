"""Extracting dataset archives once: atomic, resumable, with a progress bar.

Used for the original archives (:mod:`plif_jax.data.original`). ``extract(archive)`` writes
``<archive's folder>/extracted_plif_jax/<archive name>/``: members go to a ``.partial`` folder
first, each through a temporary file renamed into place (``os.replace`` is atomic); a rerun after
an interruption keeps the members already written (same size) and writes the rest, and the folder
gets its final name only once every member is there.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import tqdm

from plif_jax.errors import DataError, MissingDataError

EXTRACTED = "extracted_plif_jax"


def _safe_target(base: Path, member: str) -> Path:
    target = (base / member).resolve()
    if not str(target).startswith(str(base.resolve()) + os.sep):
        raise DataError(f"Archive member {member!r} would be written outside {base}; refusing.")
    return target


def _write_member(stream, target: Path, bar) -> None:
    """Copies one member to ``target`` through a temporary file renamed into place (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    except BaseException:
        tmp.unlink(missing_ok=True)  # a member cut short never takes the final name
        raise
    os.replace(tmp, target)


def _have(target: Path, size: int) -> bool:
    return target.is_file() and target.stat().st_size == size


def _extract_zip(archive: Path, partial: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        todo = [
            i
            for i in z.infolist()
            if not i.is_dir() and not _have(_safe_target(partial, i.filename), i.file_size)
        ]
        total = sum(i.file_size for i in todo)
        with tqdm.tqdm(
            total=total, unit="B", unit_scale=True, desc=f"extract {archive.name}"
        ) as bar:
            for info in todo:
                with z.open(info) as stream:
                    _write_member(stream, _safe_target(partial, info.filename), bar)


def _extract_tar(archive: Path, partial: Path) -> None:
    # One streaming pass (a .tar.gz cannot seek); the bar follows the compressed bytes read.
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as t:
        desc = f"extract {archive.name}"
        with tqdm.tqdm(total=archive.stat().st_size, unit="B", unit_scale=True, desc=desc) as bar:
            for m in t:
                if m.isfile():
                    target = _safe_target(partial, m.name)
                    if not _have(target, m.size):
                        _write_member(t.extractfile(m), target, None)
                bar.update(raw.tell() - bar.n)


def extract(archive: str | os.PathLike) -> Path:
    """Extracts ``archive`` once; returns the folder holding its members.

    The folder is ``<archive's folder>/extracted_plif_jax/<archive name>``; it appears only when
    every member is there. Members go to ``.<archive name>.partial`` first, each one through a
    temporary file renamed into place; a rerun after an interruption keeps the members already
    written (same size) and writes the rest.

    Raises:
      MissingDataError: the archive does not exist.
      DataError: the archive is truncated or corrupt (names it), or its folder is not writable.
    """
    archive = Path(archive)
    final = archive.parent / EXTRACTED / archive.name
    if final.is_dir():
        return final
    if not archive.is_file():
        raise MissingDataError(f"Archive {archive} not found; copy the original file there.")
    partial = archive.parent / EXTRACTED / f".{archive.name}.partial"
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create {partial} to extract {archive} ({e}); make {archive.parent} writable "
            f"or copy the dataset to a writable config.data.root."
        ) from e
    try:
        if archive.name.endswith(".zip"):
            _extract_zip(archive, partial)
        else:
            _extract_tar(archive, partial)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"Cannot extract {archive}: the archive is truncated or corrupt "
            f"({type(e).__name__}: {e}). Download it again; the members extracted so far are kept."
        ) from e
    for tmp in partial.rglob(".*.tmp"):  # left by an interrupted run
        tmp.unlink(missing_ok=True)
    os.replace(partial, final)
    return final
