"""The static image datasets from files a user already has, written as tfds's own ArrayRecord copy.

``python -m experiments.prepare_data --dataset fashion_mnist --from_dir DIR`` runs
tensorflow-datasets' own ``mnist`` / ``fashion_mnist`` / ``cifar10`` builders with their
``_split_generators`` pointed at local files instead of the download manager. The result is the
dataset ``plif_jax`` reads with ``tfds.data_source`` (same name, version, features and splits as
the download path writes), so training does not care where the images came from.

Accepted layouts (``DIR`` is what the user passes; the first match wins):

- MNIST / Fashion-MNIST: the four original IDX files, gzipped or not (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; the variant
  ``train-images.idx3-ubyte`` too) in ``DIR``, ``DIR/raw`` (torchvision's ``MNIST/raw``,
  ``FashionMNIST/raw``), ``DIR/MNIST/raw`` or ``DIR/FashionMNIST/raw`` (the original repository's
  dataset root, which held torchvision's folders; Debian's ``dataset-fashion-mnist`` installs the
  gzipped files in ``/usr/share/datasets/fashion-mnist``).
- CIFAR-10: the python version, as ``cifar-10-python.tar.gz`` or its extracted
  ``cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5``, ``test_batch``,
  ``batches.meta``), in ``DIR``, ``DIR/CIFAR10`` (the original repository's root), or ``DIR``
  itself being ``cifar-10-batches-py``.

The files are read directly (gzip, IDX headers, CIFAR pickles through a restricted unpickler);
tfds's checksums are not involved, so copies that differ byte-wise from the ones tfds downloads
(Debian's .gz files carry another gzip header) work as long as their content is the dataset.
Images are handed to tfds as PIL images, which tfds encodes to PNG with PIL: preparing needs no
TensorFlow (the download path does). Decoded pixels equal the source files' pixels exactly.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from collections.abc import Iterator

import numpy as np

from plif_jax.data import registry
from plif_jax.errors import DataError, MissingDataError

LOCAL_DATASETS = tuple(n for n, r in registry.DATASETS.items() if "local files" in r.sources)

_IDX_PARTS = {
    "train_images": ("train", "images", "idx3"),
    "train_labels": ("train", "labels", "idx1"),
    "test_images": ("t10k", "images", "idx3"),
    "test_labels": ("t10k", "labels", "idx1"),
}
_IDX_SUBDIRS = {
    "mnist": ("", "raw", os.path.join("MNIST", "raw")),
    "fashion_mnist": ("", "raw", os.path.join("FashionMNIST", "raw")),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_MEMBERS = (*_CIFAR_TRAIN, "test_batch", "batches.meta")
_CIFAR_TARBALL = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"


def _idx_candidates(split: str, kind: str, idx: str) -> tuple[str, ...]:
    names = (f"{split}-{kind}-{idx}-ubyte", f"{split}-{kind}.{idx}-ubyte")
    return tuple(n + ext for n in names for ext in (".gz", ""))


def find_idx_files(name: str, root: str) -> dict[str, str]:
    """The four IDX files of ``name`` under ``root`` (see the module docstring for the layouts).

    Raises:
      MissingDataError: no folder holds all four; the message lists the folders searched, the
        files found and the files missing.
    """
    root = os.path.expanduser(root)
    best: tuple[str, dict[str, str]] | None = None
    searched = []
    for sub in _IDX_SUBDIRS[name]:
        folder = os.path.join(root, sub) if sub else root
        searched.append(folder)
        found = {}
        for key, parts in _IDX_PARTS.items():
            for cand in _idx_candidates(*parts):
                if os.path.isfile(os.path.join(folder, cand)):
                    found[key] = os.path.join(folder, cand)
                    break
        if len(found) == len(_IDX_PARTS):
            return found
        if best is None or len(found) > len(best[1]):
            best = (folder, found)
    assert best is not None
    folder, found = best
    missing = [_idx_candidates(*_IDX_PARTS[k])[1] for k in _IDX_PARTS if k not in found]
    if found:
        where = f"{folder} has {sorted(os.path.basename(p) for p in found.values())} but lacks "
    else:
        where = f"none of {searched} holds any of them; missing "
    raise MissingDataError(
        f"{name}: --from_dir {root} does not hold the four IDX files (train/t10k images and "
        f"labels, gzipped or not): {where}{missing}. Point --from_dir at the folder with "
        f"train-images-idx3-ubyte(.gz) etc., or at a torchvision root holding "
        f"{_IDX_SUBDIRS[name][2]}."
    )


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip raises EOFError / BadGzipFile on a cut file
        raise DataError(f"Cannot read {path}: {e}. Replace the file with a complete copy.") from e


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its declared shape.

    IDX (LeCun's MNIST format): two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32, then the data.

    Raises:
      DataError: not an unsigned-byte IDX file, or shorter than its header declares.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] == 0:
        raise DataError(
            f"{path} is not an unsigned-byte IDX file (magic bytes {data[:4]!r}, expected "
            f"00 00 08 0N). Check that it is the original MNIST-format file."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its IDX header; replace it.")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes but its IDX header declares "
            f"{shape} = {size}: the file is truncated or damaged; replace it."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx_split(files: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] uint8, labels [N] uint8)`` of ``split`` ('train' | 'test')."""
    images = read_idx(files[f"{split}_images"])
    labels = read_idx(files[f"{split}_labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{files[f'{split}_images']} ({images.shape}) and {files[f'{split}_labels']} "
            f"({labels.shape}) do not form one split (N images of HxW and N labels): the files "
            "are mixed up; use the four files of one dataset."
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{files[f'{split}_labels']} has label {labels.max()} > 9: not MNIST-like.")
    return images, labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches (dicts of bytes, lists and numpy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # truncated or foreign pickles raise many types
        msg = f"{where} is not a readable CIFAR-10 python batch ({e}); replace it."
        raise DataError(msg) from e
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR-10 python batch (a {type(obj).__name__}).")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def find_cifar_source(root: str) -> str:
    """The tarball or ``cifar-10-batches-py`` folder under ``root`` (module docstring layouts)."""
    root = os.path.expanduser(root)
    bases = (root, os.path.join(root, "CIFAR10"))
    for base in bases:
        for cand in (os.path.join(base, _CIFAR_FOLDER), os.path.join(base, _CIFAR_TARBALL)):
            if os.path.exists(cand):
                return cand
    if os.path.basename(os.path.normpath(root)) == _CIFAR_FOLDER or os.path.isfile(
        os.path.join(root, "data_batch_1")
    ):
        return root
    raise MissingDataError(
        f"cifar10: --from_dir {root} holds neither {_CIFAR_TARBALL} nor {_CIFAR_FOLDER}/ "
        f"(looked in {list(bases)}). Point --from_dir at the folder with the python version of "
        "CIFAR-10 (the original repository's CIFAR10/ root, or torchvision's download folder)."
    )


def read_cifar_members(source: str) -> dict[str, dict]:
    """Every CIFAR-10 python batch of ``source`` (tarball or folder), unpickled, by member name."""
    out = {}
    if os.path.isdir(source):
        missing = [m for m in _CIFAR_MEMBERS if not os.path.isfile(os.path.join(source, m))]
        if missing:
            raise MissingDataError(
                f"cifar10: {source} lacks {missing}; it needs {list(_CIFAR_MEMBERS)}. Extract "
                f"{_CIFAR_TARBALL} again or point --from_dir at the tarball."
            )
        for m in _CIFAR_MEMBERS:
            path = os.path.join(source, m)
            out[m] = _unpickle(_read_bytes(path), path)
        return out
    try:
        with tarfile.open(source, "r:gz") as tar:
            members = {os.path.basename(t.name): t for t in tar.getmembers() if t.isfile()}
            missing = [m for m in _CIFAR_MEMBERS if m not in members]
            if missing:
                raise MissingDataError(
                    f"cifar10: {source} lacks members {missing}; it needs {list(_CIFAR_MEMBERS)} "
                    "(the python version of CIFAR-10). Download it again."
                )
            for m in _CIFAR_MEMBERS:
                out[m] = _unpickle(tar.extractfile(members[m]).read(), f"{source}:{m}")
    except MissingDataError:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"Cannot read {source}: {e}. Replace it with a complete copy.") from e
    return out


def cifar_split(batches: dict[str, dict], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 32, 32, 3] uint8, labels [N] int)`` in file order (tfds's order too)."""
    names = _CIFAR_TRAIN if split == "train" else ("test_batch",)
    images, labels = [], []
    for n in names:
        b = batches[n]
        data, lab = np.asarray(b.get("data")), np.asarray(b.get("labels"))
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise DataError(
                f"cifar10 batch {n}: data {data.shape} / labels {lab.shape} are not N x 3072 "
                "images with N labels; the file is damaged or not CIFAR-10."
            )
        images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def cifar_label_names(batches: dict[str, dict]) -> list[str]:
    names = batches["batches.meta"].get("label_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)  # 'L' for [H, W], 'RGB' for [H, W, 3]


def _local_builder_class(name: str):
    """tfds's own builder class for ``name``, with the split generators reading local files."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar, mnist

    base = {"mnist": mnist.MNIST, "fashion_mnist": mnist.FashionMNIST, "cifar10": cifar.Cifar10}

    class LocalFiles(base[name], skip_registration=True):
        """Same name, version, features and splits as tfds's builder; files from ``source``."""

        def __init__(self, *, source, **kwargs):
            self._source = source
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager  # Nothing to download.
            if name == "cifar10":
                batches = read_cifar_members(self._source)
                self.info.features["label"].names = cifar_label_names(batches)
                return {
                    tfds.Split.TRAIN: self._examples(*cifar_split(batches, "train"), "train_"),
                    tfds.Split.TEST: self._examples(*cifar_split(batches, "test"), "test_"),
                }
            return {
                tfds.Split.TRAIN: self._examples(*read_idx_split(self._source, "train")),
                tfds.Split.TEST: self._examples(*read_idx_split(self._source, "test")),
            }

        def _examples(self, images, labels, id_prefix=None) -> Iterator[tuple[int, dict]]:
            # Keys are the file order, as tfds's own generators use.
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                record = {"image": _pil(image), "label": int(label)}
                if id_prefix is not None:
                    record["id"] = f"{id_prefix}{index:05d}"
                yield index, record

    LocalFiles.name = name
    return LocalFiles


def find_source(name: str, root: str):
    """What :func:`prepare_from_dir` reads for ``name``: IDX file paths or the CIFAR source."""
    if name not in LOCAL_DATASETS:
        raise MissingDataError(
            f"--from_dir supports {list(LOCAL_DATASETS)}, not {name!r}; event datasets are read "
            "from config.data.root directly (README, Data)."
        )
    if not os.path.isdir(os.path.expanduser(root)):
        raise MissingDataError(f"--from_dir {root} is not a directory.")
    return find_cifar_source(root) if name == "cifar10" else find_idx_files(name, root)


def prepare_from_dir(name: str, root: str, data_dir: str) -> dict[str, int]:
    """Writes tfds's ArrayRecord copy of ``name`` from the user's files under ``root``.

    Args:
      name: ``'mnist'``, ``'fashion_mnist'`` or ``'cifar10'``.
      root: the folder given as ``--from_dir`` (layouts: module docstring).
      data_dir: tfds data directory to write into (``config.data.root`` when training).

    Returns:
      ``{'train': N, 'test': M}`` examples as written.

    Raises:
      MissingDataError / DataError: files missing, truncated or not the dataset; the message names
        the file and the fix.
    """
    import tensorflow_datasets as tfds

    source = find_source(name, root)
    builder = _local_builder_class(name)(
        source=source, data_dir=os.path.expanduser(data_dir), file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return {split: info.num_examples for split, info in builder.info.splits.items()}
