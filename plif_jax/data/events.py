"""Event-camera datasets (N-MNIST, CIFAR10-DVS, DVS128 Gesture) read with tonic, as frames.

Every sample is read with tonic's own dataset class (``root`` = ``config.data.root``; tonic puts
each dataset under ``<root>/<ClassName>/``), integrated into ``T`` frames with
:func:`plif_jax.data.integrate_events` and cached (:mod:`plif_jax.data.cache`). Sample order is
the natural sort of the file paths (tonic's own order is the filesystem's).

Where to put the data (nothing is downloaded here; tonic checks only that the archive exists and
that enough files were extracted):

- N-MNIST: ``<root>/NMNIST/train.zip`` + ``Train/<digit>/<id>.bin`` (60,000 files) and
  ``test.zip`` + ``Test/<digit>/<id>.bin`` (10,000).
- CIFAR10-DVS: ``<root>/CIFAR10DVS/CIFAR10DVS.zip`` + ``<class>/<file>.aedat4`` (1,000 per class).
  tonic has no split; the paper's is used: per class, the first 90% of the files in natural
  sort order train and the rest test. With files numbered 0-999 per class, as the original
  ``cifar10_<class>_<i>`` recordings are, that is the paper's 0-899 / 900-999.
  Orientation, from tonic 1.7.0's reader code: ``CIFAR10DVS.__getitem__`` calls
  ``tonic.io.read_aedat4``, which concatenates the AEDAT4 event packets as the ``aedat`` package
  decodes them, and only renames the fields to ``t, x, y, p``: no flip, transposition or polarity
  inversion. tonic's x, y, p are therefore exactly what its AEDAT4 files store, and those were
  made from the original AEDAT 2.0 recordings with iniVation DV's converter (tonic pull request
  #172), whose DVS128 address mapping is not part of tonic and could not be read here. The
  original source (:mod:`plif_jax.data.original`) decodes the AEDAT 2.0 addresses as the paper
  did (``x = 127 - x_raw, y = y_raw, p = 1 - pol``); both sources give the same frames for the
  same (x, y, p) events (tested), but whether tonic's copy stores that orientation is unverified
  (libcaer's live DVS128 decoder, ``dvs128.c``, also inverts y; if DV's converter does the same,
  tonic's frames are the paper's flipped vertically). Use the original zips for the paper's frames.
- DVS128 Gesture: ``<root>/DVSGesture/ibmGestureTrain.tar.gz`` + ``ibmGestureTrain/user<NN>_
  <lighting>/<label>.npy`` and the same for ``ibmGestureTest``. This is tonic's pre-cut figshare
  copy: 1,077 training and 264 test samples. The paper's SpikingJelly pipeline cut the original
  AEDAT recordings itself into 1,176 / 288 samples, and its training run used only 936 of the
  1,176 (936 = 78 trials x 12 labelled segments, in the original repository's ``logs/``;
  inferred cause: the 2020 SpikingJelly converter split the trials into worker blocks and dropped
  the remainder, the last ~20 trials), so sizes and test accuracy are not directly comparable.

The original archives, laid out as the original repository's README lists them, are read by
:mod:`plif_jax.data.original` (``config.data.source``; ``'auto'`` prefers them).

tonic (on a machine with network) fetches them: ``python -c "import tonic;
tonic.datasets.NMNIST(save_to='ROOT', train=True)"`` (and ``train=False``; ``DVSGesture``,
``CIFAR10DVS`` likewise).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np
import tonic

from plif_jax.data import registry
from plif_jax.data.frames import integrate_events
from plif_jax.errors import DataError, MissingDataError

# name -> tonic class name, sensor (W, H, P), number of classes, paper T.
EVENT_DATASETS = {
    row.name: dict(tonic=row.tonic, sensor=row.shape, num_classes=row.num_classes)
    for row in registry.DATASETS.values()
    if row.tonic is not None
}
CIFAR10DVS_TRAIN_FRACTION = 0.9

_FETCH_HINT = (
    'tonic downloads it on a machine with network: python -c "import tonic; '
    "tonic.datasets.{cls}(save_to='{root}'{train})\"; or copy the archive and its extracted "
    "files there (see plif_jax/data/events.py)."
)


def _missing(cls: str, location: str, root: str, train: str) -> MissingDataError:
    return MissingDataError(
        f"{cls} not found (or incomplete) in {location}. "
        + _FETCH_HINT.format(cls=cls, root=root, train=train)
    )


class NMNIST(tonic.datasets.NMNIST):
    """tonic's N-MNIST that raises a clear error instead of downloading."""

    def download(self) -> None:
        train = ", train=True" if self.train else ", train=False"
        root = os.path.dirname(self.location_on_system)
        raise _missing("NMNIST", self.location_on_system, root, train)


class DVSGesture(tonic.datasets.DVSGesture):
    """tonic's DVS128 Gesture that raises a clear error instead of downloading."""

    def download(self) -> None:
        train = ", train=True" if self.train else ", train=False"
        root = os.path.dirname(self.location_on_system)
        raise _missing("DVSGesture", self.location_on_system, root, train)


class CIFAR10DVS(tonic.datasets.CIFAR10DVS):
    """tonic's CIFAR10-DVS that raises a clear error instead of downloading."""

    def download(self) -> None:
        root = os.path.dirname(self.location_on_system)
        raise _missing("CIFAR10DVS", self.location_on_system, root, "")


def natural_key(path: str) -> list:
    """Sort key comparing digit runs as numbers (``x_2`` before ``x_10``)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path)]


def _check_file(path: str) -> None:
    """Cheap format checks that tonic's readers skip (they would return garbage or crash)."""
    if path.endswith(".bin") and os.path.getsize(path) % 5:
        raise DataError(
            f"Truncated or corrupt N-MNIST file {path}: {os.path.getsize(path)} bytes is not a "
            f"multiple of the 5-byte event record. Re-extract it from the archive."
        )


def read_sample(dataset, index: int) -> np.ndarray:
    """Events of one tonic sample; any reading failure names the file."""
    path = dataset.data[index]
    try:
        _check_file(path)
        events, _ = dataset[index]
        if events.dtype.names is None or not {"x", "y", "t", "p"} <= set(events.dtype.names):
            raise ValueError(f"unexpected event fields {events.dtype.names}")
    except Exception as e:
        if isinstance(e, ValueError) and str(path) in str(e):
            raise
        raise DataError(
            f"Cannot read event file {path} ({type(e).__name__}: {e}). The file is truncated or "
            f"corrupt; re-extract it from the dataset archive."
        ) from e
    return events


@dataclasses.dataclass
class TonicSplit:
    """One split of a tonic dataset in sorted order: ``dataset.data[order[i]]`` is sample ``i``."""

    name: str
    dataset: object
    order: np.ndarray
    labels: np.ndarray
    sensor_size: tuple[int, int, int]

    @property
    def paths(self) -> list[str]:
        return [self.dataset.data[i] for i in self.order]


def open_split(name: str, root: str, train: bool) -> TonicSplit:
    """Opens a split of an event dataset with tonic, sorted by natural file-path order."""
    meta = EVENT_DATASETS[name]
    root = os.path.expanduser(root)
    if name == "nmnist":
        ds = NMNIST(save_to=root, train=train)
    elif name == "dvsgesture":
        ds = DVSGesture(save_to=root, train=train)
    else:
        ds = CIFAR10DVS(save_to=root)
    if len(ds.data) == 0:
        raise MissingDataError(
            f"{meta['tonic']} in {ds.location_on_system} holds no sample files; "
            f"expected the layout described in plif_jax/data/events.py."
        )
    order = np.array(
        sorted(range(len(ds.data)), key=lambda i: natural_key(ds.data[i])), dtype=np.int64
    )
    targets = np.asarray(ds.targets, dtype=np.int32)
    if name == "cifar10dvs":
        keep = []
        for c in np.unique(targets):
            idx = order[targets[order] == c]  # this class's files in sorted order
            k = int(round(CIFAR10DVS_TRAIN_FRACTION * len(idx)))
            keep.append(idx[:k] if train else idx[k:])
        order = np.array(
            sorted(np.concatenate(keep), key=lambda i: natural_key(ds.data[i])), dtype=np.int64
        )  # int64 even when a split is empty
    return TonicSplit(
        name=name,
        dataset=ds,
        order=order.astype(np.int64),
        labels=targets[order],
        sensor_size=tuple(meta["sensor"]),
    )


@dataclasses.dataclass
class TonicFrames:
    """Frame producer for the cache: reads tonic samples and integrates them (picklable)."""

    split: TonicSplit
    T: int
    split_by: str
    normalization: str | None
    drop_remainder: bool
    chunk_size: int = 16

    @property
    def num_samples(self) -> int:
        return len(self.split.order)

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i in indices:
            events = read_sample(self.split.dataset, int(self.split.order[i]))
            out.append(
                integrate_events(
                    events,
                    self.split.sensor_size,
                    self.T,
                    split_by=self.split_by,
                    normalization=self.normalization,
                    drop_remainder=self.drop_remainder,
                )
            )
        return out
