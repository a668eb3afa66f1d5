"""A checkpoint directory's files: JSON records, pytrees as Orbax-friendly nested dicts, and
how to tell a damaged checkpoint from one of another code version.

:mod:`plif_jax.training.checkpoint` (the store and ``restore``) is built on these.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from plif_jax.errors import CheckpointError, NoCheckpointError
from plif_jax.runtime import disk


def _key_str(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def write_json_atomic(path: str, obj: Any, *, sort_keys: bool = True) -> None:
    """Writes JSON to a temporary file, then renames it over ``path`` (``os.replace``).

    A process killed mid-write leaves the previous file intact, never a truncated one (a
    truncated ``config.json`` would make the next start fail on a run it could resume).
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with disk.writing(path), open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=sort_keys)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk: no partial file left beside the intact one
        raise


def _is_prng_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_nested(tree: Any) -> dict[str, Any]:
    """Any pytree as a nested dict of str keys (Orbax-friendly); PRNG keys become key data."""
    nested: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = nested
        keys = [_key_str(k) for k in path]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = jax.random.key_data(leaf) if _is_prng_key(leaf) else leaf
    return nested


def from_nested(nested: Mapping[str, Any], template: Any) -> Any:
    """Inverse of :func:`to_nested`, using ``template`` for the tree structure and key types."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, tmpl in paths_leaves:
        node = nested
        for k in path:
            node = node[_key_str(k)]
        if _is_prng_key(tmpl):
            node = jax.random.wrap_key_data(node, impl=jax.random.key_impl(tmpl))
        leaves.append(node)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def abstract_tree(nested: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        nested,
    )


def prepare_workdir(workdir: str) -> str:
    """Creates the run directory and checks that it can be written.

    Returns:
      The absolute path.

    Raises:
      CheckpointError: ``workdir`` is a file, or it (or a folder above it) cannot be created or
        written; nothing is written then.
    """
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(
            f"--workdir {workdir} is a file, not a directory: choose another --workdir "
            "(a run directory is created there)."
        )
    try:
        os.makedirs(path, exist_ok=True)  # checkpoints/ is made by the store, after the lock
        with tempfile.TemporaryFile(dir=path):
            pass  # writable: a run can save there
    except OSError as e:
        raise CheckpointError(
            f"--workdir {workdir} cannot be written ({e.strerror or e}: "
            f"{e.filename or path}): choose a directory you can write to, e.g. "
            "--workdir=runs/<name>."
        ) from e
    return path


def read_json(path: str) -> Any:
    """A run directory's JSON record; an unreadable one is a :class:`CheckpointError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"Cannot read {path} ({type(e).__name__}: {e}): the file is damaged. Copy it back "
            "from a backup, or start a new run with a new --workdir."
        ) from e


def read_run_records(directory: str) -> tuple[dict, dict]:
    """A run's ``checkpoints/config.json`` and ``model.json``, checked to be a plif_jax run's.

    Raises:
      NoCheckpointError: a record lacks the fields a run writes (another program's files).
      CheckpointError: a record is not readable JSON.
    """
    config = read_json(os.path.join(directory, "config.json"))
    spec = read_json(os.path.join(directory, "model.json"))
    missing = [
        f"{name}: {key!r}"
        for name, record, keys in (
            ("config.json", config, ("dataset", "seed", "checkpoint")),
            ("model.json", spec, ("name", "options")),
        )
        for key in keys
        if not isinstance(record, dict) or key not in record
    ]
    if missing:
        raise NoCheckpointError(
            f"{directory} does not hold a plif_jax run's records (missing {'; '.join(missing)}): "
            "point --workdir at the directory of a training run (python -m experiments.train "
            "--workdir=...)."
        )
    return config, spec


def read_failure(e: BaseException) -> str:
    """One line on why a checkpoint could not be read, e.g. ``ValueError: OUT_OF_RANGE reading
    checkpoints/latest/8/state/d/<file>: Requested byte range [0, 915) is not valid ...``."""
    text = " ".join(str(e).split()).split(" [tensorstore_spec", 1)[0]
    # TensorStore nests "Error opening ... driver: Error reading ... of local file "<f>": why".
    m = re.match(r'([A-Z_]{3,}): .*local file "([^"]+)"(?::\s*(.*))?$', text)
    if m:
        code, path, why = m.groups()
        if "/checkpoints/" in path:
            path = "checkpoints/" + path.split("/checkpoints/", 1)[1]
        text = f"{code} reading {path}" + (f": {why}" if why else "")
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_closed_loop_callback(exc: BaseException | None, tb: Any) -> bool:
    """A TensorStore callback of an abandoned read calling ``call_soon_threadsafe`` on Orbax's
    event loop after it was closed."""
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


def _is_abandoned_orbax_read(unraisable: Any) -> bool:
    # When one array of a checkpoint cannot be read, Orbax (0.12) abandons the reads of the
    # other arrays: Python reports each abandoned coroutine, and each TensorStore callback that
    # later finds Orbax's event loop closed, as "Exception ignored in" with a traceback, after
    # the failure itself was raised and reported.
    if getattr(unraisable.object, "__qualname__", "") == "_read_array_index_and_device_put":
        return True
    return _is_closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback)


class _AbandonedOrbaxTasks(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" for Orbax's abandoned array reads.

    The sibling reads of a failed one end with the same error once garbage-collected; asyncio logs
    each, after the failure itself was reported (seen in CI, GC-timing dependent): an Orbax read
    task ("Task exception", its coroutine ``async_deserialize``), or a TensorStore read future
    ("Future exception", its error naming the TensorStore spec it read; fresh-clone CI,
    2026-12-03, the all-damaged case: the error line, then these lines after it).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if "exception was never retrieved" not in msg:
            return True
        if msg.startswith("Task exception") and "async_deserialize" in msg:
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not (msg.startswith("Future exception") and "[tensorstore_spec=" in str(error))


def quiet_abandoned_orbax_reads() -> None:
    """Drops Orbax's reports of abandoned array reads (the failed read itself is reported)."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedOrbaxTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedOrbaxTasks())
    previous = sys.unraisablehook
    if getattr(previous, "_plif_jax_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if _is_abandoned_orbax_read(unraisable):
            logging.debug("Orbax read abandoned after a failed restore: %s", unraisable.exc_value)
            return
        previous(unraisable)

    hook._plif_jax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    # TensorStore reports an error in a callback with PyErr_Print, i.e. through sys.excepthook: a
    # bare traceback on stderr (seen once in a fresh-clone CI run of the all-damaged case).
    previous_except = sys.excepthook

    def excepthook(exc_type: type, exc: BaseException, tb: Any) -> None:
        if _is_closed_loop_callback(exc, tb):
            logging.debug("Orbax read abandoned after a failed restore: %s", exc)
            return
        previous_except(exc_type, exc, tb)

    sys.excepthook = excepthook


def tree_paths(nested: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    for k, v in nested.items():
        if isinstance(v, Mapping):
            yield from tree_paths(v, (*prefix, k))
        else:
            yield (*prefix, k), tuple(v.shape)


def stored_structure(step_dir: str) -> dict[tuple, tuple | None] | None:
    """``{path: shape}`` of the arrays in a checkpoint's ``state`` item (Orbax's ``_METADATA``).

    None when the metadata cannot be read or is not in the layout this code knows: the
    checkpoint is then judged by whether it restores, not by its structure.
    """
    try:
        with open(os.path.join(step_dir, "state", "_METADATA"), encoding="utf-8") as f:
            tree = json.load(f)["tree_metadata"]
        out = {}
        for key, entry in tree.items():
            path = ast.literal_eval(key)
            if not isinstance(path, tuple):
                return None
            shape = entry.get("value_metadata", {}).get("write_shape")
            out[tuple(str(p) for p in path)] = None if shape is None else tuple(shape)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SyntaxError):
        return None
