"""The original dataset archives, laid out as the original repository's README lists them.

``fangwei123456/Parametric-Leaky-Integrate-and-Fire-Spiking-Neuron`` (README, "Datasets") reads
every dataset from one root::

    ROOT/CIFAR10/  CIFAR10DVS/{airplane,...,truck}.zip  DVS128Gesture/DvsGesture.tar.gz
    ROOT/FashionMNIST/  MNIST/  NMNIST/{Train,Test}.zip

Pointing ``config.data.root`` at such a tree makes the event datasets readable as the paper read
them (``source='original'``), next to tonic's layouts (``source='tonic'``,
:mod:`plif_jax.data.events`); ``source='auto'`` takes the original files when both are there.
The image folders are torchvision's and are not read here (the image datasets come from tfds).

- Each archive is extracted once into ``<dataset folder>/extracted_plif_jax/<archive name>/``
  (a tqdm bar; each member is written to a temporary name and renamed, members already there are
  kept, so an interrupted extraction resumes; the folder gets its final name only when complete).
- DVS128 Gesture (``DvsGesture.tar.gz``: AEDAT 3.1 ``user*_*.aedat``, ``*_labels.csv``,
  ``trials_to_train.txt``, ``trials_to_test.txt``): every label row of a trial is one sample,
  the events with ``start <= t < end`` (µs), label = csv class - 1; rows with the same label stay
  separate samples. 98 training trials give 1,176 samples and 24 test trials 288, SpikingJelly's
  cut (``dvs128_gesture.py``), on which the paper's 97.57 % = 281 / 288 was measured.
  ``dvsgesture_train='first_78_trials'`` keeps the first 78 trials of ``trials_to_train.txt``,
  936 samples: the training set the paper's run actually had (inferred from its logs: its
  conversion dropped the remaining trials).
- CIFAR10-DVS (ten class zips of AEDAT 2.0 ``cifar10_<class>_<i>.aedat``): decoded in the paper's
  orientation (:mod:`plif_jax.data.aedat`); per class, files 0-899 train and 900-999 test.
- N-MNIST (``Train.zip``, ``Test.zip``: ``Train/<digit>/*.bin``): the .bin files tonic reads,
  read with tonic's reader, so both sources give the same frames for the same files.

Samples are in archive order: DVS128 Gesture by trial-list order, then label-file row; CIFAR10-DVS
and N-MNIST by class, then file number.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tonic

from plif_jax.data import aedat, registry
from plif_jax.data.archives import extract
from plif_jax.data.events import _check_file, natural_key
from plif_jax.data.frames import integrate_events
from plif_jax.errors import ConfigError, DataError, MissingDataError

SOURCES = registry.SOURCE_CHOICES
# Bump when decoding or cutting changes: part of the frame cache key.
READER_VERSION = 1
DVSGESTURE_TRAIN = registry.DVSGESTURE_TRAIN
# The original repository's logs/B: 803 train + 133 val = 936 samples = 78 trials x 12.
PAPER_RUN_TRIALS = 78
CIFAR10DVS_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10DVS_TRAIN_FILES = 900  # files 0-899 train, 900-999 test (SpikingJelly split_ratio 0.9)
SENSORS = {name: registry.get(name).shape for name in ("nmnist", "cifar10dvs", "dvsgesture")}
# Where each dataset lies in the original root, and the archives it needs.
LAYOUT = {
    "nmnist": ("NMNIST", ("Train.zip", "Test.zip")),
    "cifar10dvs": ("CIFAR10DVS", tuple(f"{c}.zip" for c in CIFAR10DVS_CLASSES)),
    "dvsgesture": ("DVS128Gesture", ("DvsGesture.tar.gz",)),
}
# tonic's layout (plif_jax/data/events.py): its folder and the archives that mark it.
TONIC_LAYOUT = {
    "nmnist": ("NMNIST", ("train.zip", "test.zip")),
    "cifar10dvs": ("CIFAR10DVS", ("CIFAR10DVS.zip",)),
    "dvsgesture": ("DVSGesture", ("ibmGestureTrain.tar.gz", "ibmGestureTest.tar.gz")),
}


def _names(folder: Path) -> set[str]:
    # Exact names: on a case-insensitive disk 'train.zip' (tonic) would "exist" as 'Train.zip'.
    return set(os.listdir(folder)) if folder.is_dir() else set()


def has_original(name: str, root: str | os.PathLike) -> bool:
    """Whether ``root`` holds the original archives of ``name`` (the README's layout)."""
    folder_name, archives = LAYOUT[name]
    folder = Path(root) / folder_name
    present = _names(folder)
    if name != "cifar10dvs":
        return all(a in present for a in archives)
    # tonic's CIFAR10DVS.zip unpacks into class zips of the same names holding .aedat4 files:
    # only zips of AEDAT 2.0 '.aedat' recordings are the original ones.
    for a in archives:
        if a in present:
            try:
                with zipfile.ZipFile(folder / a) as z:
                    return any(n.endswith(".aedat") for n in z.namelist())
            except zipfile.BadZipFile as e:
                raise DataError(
                    f"{folder / a} is not a readable zip ({e}); download it again."
                ) from e
    return False


def has_tonic(name: str, root: str | os.PathLike) -> bool:
    """Whether ``root`` holds tonic's archives of ``name``."""
    folder_name, archives = TONIC_LAYOUT[name]
    return any(a in _names(Path(root) / folder_name) for a in archives)


def resolve_source(name: str, root: str | os.PathLike, source: str) -> str:
    """``'original'`` or ``'tonic'`` for ``config.data.source`` (``'auto'``: original first).

    Raises:
      ConfigError: unknown source.
      MissingDataError: the requested layout (or, for ``'auto'``, either) is not under ``root``.
    """
    if source not in SOURCES:
        raise ConfigError(
            f"Unknown config.data.source {source!r}; choose one of {', '.join(map(repr, SOURCES))}"
            " (e.g. --config.data.source=original)."
        )
    folder, archives = LAYOUT[name]
    want = ", ".join(str(Path(root) / folder / a) for a in archives[:2])
    if source == "tonic":
        return "tonic"
    if has_original(name, root):
        return "original"
    if source == "original":
        raise MissingDataError(
            f"config.data.source='original' but the original {name} archives are not in "
            f"{Path(root) / folder} (expected {want}{', ...' if len(archives) > 2 else ''}, "
            f"the original README's layout). Copy them there or use --config.data.source=tonic."
        )
    if has_tonic(name, root):
        return "tonic"
    tonic_folder, tonic_archives = TONIC_LAYOUT[name]
    cls = {"nmnist": "NMNIST", "cifar10dvs": "CIFAR10DVS", "dvsgesture": "DVSGesture"}[name]
    raise MissingDataError(
        f"{name} not found under {root}: neither the original archives ({want}"
        f"{', ...' if len(archives) > 2 else ''}; the original README's layout) nor tonic's "
        f"({Path(root) / tonic_folder / tonic_archives[0]} and its extracted files). Copy either "
        f'there, or let tonic download its copy on a machine with network: python -c "import '
        f"tonic; tonic.datasets.{cls}(save_to='{root}')\" (see plif_jax/data/original.py)."
    )


def _find(base: Path, name: str, archive: Path) -> Path:
    """The one file called ``name`` inside an extracted archive (at any depth)."""
    hits = sorted(base.rglob(name))
    if not hits:
        raise MissingDataError(
            f"{name} is missing from {archive} (looked in {base}); the archive is incomplete: "
            f"download it again and delete {base}."
        )
    return hits[0]


# --- splits --------------------------------------------------------------------------------


@dataclasses.dataclass
class OriginalSplit:
    """One split from original files: sample ``i`` is ``cuts[i]`` of ``files[file_of[i]]``.

    ``cuts[i]`` is ``(start, end)`` in µs for DVS128 Gesture (``start <= t < end``) and None
    (the whole recording) for the others; ``files`` are what the cache key fingerprints.
    """

    name: str
    files: list[str]
    file_of: np.ndarray
    cuts: list[tuple[int, int] | None]
    labels: np.ndarray
    sensor_size: tuple[int, int, int]
    description: str


def read_trials(path: Path) -> list[str]:
    """Trial names (``user01_fluorescent``) of ``trials_to_train.txt`` / ``trials_to_test.txt``."""
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n[: -len(".aedat")] if n.endswith(".aedat") else n for n in names if n]


def read_labels(path: Path) -> np.ndarray:
    """``[n, 3]`` int64 rows ``(class 1..11, start_us, end_us)`` of a ``*_labels.csv``."""
    if not path.is_file():
        raise MissingDataError(
            f"Label file {path} is missing; the DvsGesture archive is incomplete: download it "
            f"again and delete {path.parent}."
        )
    rows = []
    for k, line in enumerate(path.read_text().splitlines()[1:], start=2):  # header row first
        if line.strip():
            try:
                c, s, e = (int(v) for v in line.split(","))
            except ValueError as err:
                raise DataError(f"{path} line {k}: {line!r} is not 'class,start,end'.") from err
            if not 1 <= c <= 11 or e < s:
                raise DataError(f"{path} line {k}: class {c} or interval [{s}, {e}) is invalid.")
            rows.append((c, s, e))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def dvsgesture_split(root: str | os.PathLike, train: bool, subset: str = "all") -> OriginalSplit:
    """DVS128 Gesture from ``ROOT/DVS128Gesture/DvsGesture.tar.gz``, cut by the label files."""
    if subset not in DVSGESTURE_TRAIN:
        raise ConfigError(
            f"Unknown config.data.dvsgesture_train {subset!r}; choose 'all' (1,176 samples) or "
            "'first_78_trials' (936, the paper run's training set)."
        )
    archive = Path(root) / LAYOUT["dvsgesture"][0] / LAYOUT["dvsgesture"][1][0]
    base = extract(archive)
    trials_file = _find(base, "trials_to_train.txt" if train else "trials_to_test.txt", archive)
    trials = read_trials(trials_file)
    if train and subset == "first_78_trials":
        trials = trials[:PAPER_RUN_TRIALS]
    files, file_of, cuts, labels = [], [], [], []
    for trial in trials:
        recording = trials_file.parent / f"{trial}.aedat"
        if not recording.is_file():
            raise MissingDataError(
                f"{recording.name} (listed in {trials_file.name}) is missing from {archive}; "
                f"download the archive again and delete {base}."
            )
        for c, s, e in read_labels(trials_file.parent / f"{trial}_labels.csv"):
            file_of.append(len(files))
            cuts.append((int(s), int(e)))
            labels.append(int(c) - 1)
        files.append(str(recording))
    what = "all trials" if subset == "all" or not train else "first 78 trials"
    return OriginalSplit(
        name="dvsgesture",
        files=files,
        file_of=np.asarray(file_of, dtype=np.int64),
        cuts=cuts,
        labels=np.asarray(labels, dtype=np.int32),
        sensor_size=SENSORS["dvsgesture"],
        description=f"original IBM AEDAT 3.1 recordings cut by their label files, {what}",
    )


_FILE_NUMBER = re.compile(r"(\d+)\.aedat$")


def cifar10dvs_split(root: str | os.PathLike, train: bool) -> OriginalSplit:
    """CIFAR10-DVS from the ten class zips; per class files 0-899 train, 900-999 test."""
    folder = Path(root) / LAYOUT["cifar10dvs"][0]
    missing = [a for a in LAYOUT["cifar10dvs"][1] if not (folder / a).is_file()]
    if missing:
        raise MissingDataError(
            f"CIFAR10-DVS class archive(s) {', '.join(missing)} missing from {folder}; copy all "
            f"ten original zips there."
        )
    files, labels = [], []
    for label, cls in enumerate(CIFAR10DVS_CLASSES):
        base = extract(folder / f"{cls}.zip")
        numbered = []
        for path in base.rglob("*.aedat"):
            m = _FILE_NUMBER.search(path.name)
            if m is None:
                raise DataError(f"{path}: expected a name like cifar10_{cls}_<number>.aedat.")
            numbered.append((int(m.group(1)), str(path)))
        if not numbered:
            raise MissingDataError(f"{folder / (cls + '.zip')} holds no .aedat recordings.")
        for number, path in sorted(numbered):
            if (number < CIFAR10DVS_TRAIN_FILES) == train:
                files.append(path)
                labels.append(label)
    return _one_sample_per_file(
        "cifar10dvs",
        files,
        labels,
        "original AEDAT 2.0 recordings in the paper's orientation, files 0-899 / 900-999 per class",
    )


def _one_sample_per_file(name: str, files: list, labels: list, description: str) -> OriginalSplit:
    """A split whose every file is one whole sample (no cuts)."""
    return OriginalSplit(
        name=name,
        files=files,
        file_of=np.arange(len(files), dtype=np.int64),
        cuts=[None] * len(files),
        labels=np.asarray(labels, dtype=np.int32),
        sensor_size=SENSORS[name],
        description=description,
    )


def nmnist_split(root: str | os.PathLike, train: bool) -> OriginalSplit:
    """N-MNIST from ``ROOT/NMNIST/Train.zip`` / ``Test.zip`` (``<Split>/<digit>/*.bin``)."""
    archive = Path(root) / LAYOUT["nmnist"][0] / ("Train.zip" if train else "Test.zip")
    base = extract(archive)
    paths = sorted((str(p) for p in base.rglob("*.bin")), key=natural_key)
    if not paths:
        raise MissingDataError(f"{archive} holds no .bin files; download it again.")
    labels = [int(Path(p).parent.name) for p in paths]
    return _one_sample_per_file("nmnist", paths, labels, f"original {archive.name}")


def open_split(name: str, root: str | os.PathLike, train: bool, **options: Any) -> OriginalSplit:
    """One split of ``name`` from the original archives under ``root``."""
    if name == "dvsgesture":
        return dvsgesture_split(root, train, options.get("dvsgesture_train", "all"))
    if name == "cifar10dvs":
        return cifar10dvs_split(root, train)
    return nmnist_split(root, train)


# --- frames --------------------------------------------------------------------------------


def read_recording(name: str, path: str) -> np.ndarray:
    """All events of one original recording (fields x, y, t, p)."""
    if name == "dvsgesture":
        return aedat.read_aedat31_polarity(path)
    if name == "cifar10dvs":
        return aedat.read_cifar10dvs(path)
    try:
        _check_file(path)
    except ValueError as e:
        raise DataError(str(e)) from e
    return tonic.io.read_mnist_file(path, dtype=tonic.datasets.NMNIST.dtype)


@dataclasses.dataclass
class OriginalFrames:
    """Frame producer for the cache (picklable): reads, cuts and integrates original samples."""

    split: OriginalSplit
    T: int
    split_by: str
    normalization: str | None
    drop_remainder: bool
    chunk_size: int = 12  # one DVS128 Gesture trial's samples, so a trial is decoded ~once
    _last: tuple[int, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None}  # never ship a decoded recording to workers

    @property
    def num_samples(self) -> int:
        return len(self.split.labels)

    def events(self, index: int) -> np.ndarray:
        """Events of sample ``index`` (its cut of the recording, in file order)."""
        f = int(self.split.file_of[index])
        if self._last is None or self._last[0] != f:
            self._last = (f, read_recording(self.split.name, self.split.files[f]))
        ev = self._last[1]
        cut = self.split.cuts[index]
        if cut is None:
            return ev
        return ev[(ev["t"] >= cut[0]) & (ev["t"] < cut[1])]

    def frames(self, indices) -> list[np.ndarray]:
        return [
            integrate_events(
                self.events(int(i)),
                self.split.sensor_size,
                self.T,
                split_by=self.split_by,
                normalization=self.normalization,
                drop_remainder=self.drop_remainder,
            )
            for i in indices
        ]
