"""prepare_data --from_dir: a user's own IDX / CIFAR-10 files -> tfds's ArrayRecord copy, read back.

The files are written here in the real formats (IDX with its big-endian header, gzipped or not; the
CIFAR-10 python batches as pickled dicts, in the tarball and as the extracted folder), prepared with
tfds's own builders pointed at them, and read back through ``tfds.data_source`` exactly as training
reads them.
"""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from plif_jax.data import local_static
from plif_jax.data import static as static_lib
from plif_jax.errors import DataError, MissingDataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def make_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # every image distinct, so a pair mix-up cannot pass
    return images, (np.arange(n) * 7 % 10).astype(np.uint8)


def write_idx_set(folder, *, gz: bool, n_train=11, n_test=4, seed=0) -> dict:
    os.makedirs(folder, exist_ok=True)
    data = {"train": make_images(n_train, (28, 28), seed), "test": make_images(n_test, (28, 28), 9)}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data[split]
        for kind, arr, idx in (("images", images, "idx3"), ("labels", labels, "idx1")):
            name = f"{prefix}-{kind}-{idx}-ubyte"
            raw = idx_bytes(arr)
            if gz:
                with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                    f.write(raw)
            else:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(raw)
    return data


def pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    """(image bytes, label) of every example, sorted: tfds stores records in its hashed order."""
    return sorted((im.tobytes(), int(lab)) for im, lab in zip(images, labels, strict=True))


def assert_reads_back(name: str, data_dir: str, expected: dict) -> None:
    for split, (images, labels) in expected.items():
        got_images, got_labels = static_lib.load_tfds_split(name, split, data_dir)
        assert got_images.shape == (len(images), *images.shape[1:3], got_images.shape[-1])
        assert pairs(got_images.reshape(images.shape), got_labels) == pairs(images, labels)


@pytest.mark.e2e
def test_fashion_mnist_from_plain_gzipped_idx_files_via_the_cli(tmp_path):
    # Debian's dataset-fashion-mnist layout: the four .gz files in one folder.
    data = write_idx_set(tmp_path / "src", gz=True)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.prepare_data",
            "--dataset=fashion_mnist",
            f"--from_dir={tmp_path / 'src'}",
            f"--data_dir={tmp_path / 'tfds'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fashion_mnist: 11 train / 4 test examples" in out.stdout
    assert_reads_back("fashion_mnist", str(tmp_path / "tfds"), data)


def test_mnist_from_torchvision_raw_folder_of_the_original_repository_root(tmp_path):
    # The original repository's dataset root: ROOT/MNIST/raw/ (torchvision), files not gzipped.
    data = write_idx_set(tmp_path / "root" / "MNIST" / "raw", gz=False, seed=3)
    counts = local_static.prepare_from_dir("mnist", str(tmp_path / "root"), str(tmp_path / "t"))
    assert counts == {"train": 11, "test": 4}
    assert_reads_back("mnist", str(tmp_path / "t"), data)


def test_the_local_builder_writes_tfds_own_dataset_name_version_and_features(tmp_path):
    import tensorflow_datasets as tfds

    write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True)
    local_static.prepare_from_dir("fashion_mnist", str(tmp_path), str(tmp_path / "t"))
    local = tfds.builder("fashion_mnist", data_dir=str(tmp_path / "t"))
    registered = tfds.builder_cls("fashion_mnist")
    assert str(local.version) == str(registered.VERSION) == "3.0.1"
    assert local.info.features["label"].names[0] == "T-shirt/top"
    assert local.info.features["image"].shape == (28, 28, 1)


def write_cifar(folder, *, as_tarball: bool, per_batch=2, n_test=3) -> dict:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    rng = np.random.default_rng(5)
    batches, train_images, train_labels = {}, [], []
    for k, name in enumerate(names):
        chw = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        chw[:, 0, 0, 0] = np.arange(per_batch) + 10 * k
        labels = [(k * per_batch + i) % 10 for i in range(per_batch)]
        batches[name] = {b"data": chw.reshape(per_batch, 3072), b"labels": labels}
        train_images.append(chw.transpose(0, 2, 3, 1))
        train_labels += labels
    test_chw = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    batches["test_batch"] = {b"data": test_chw.reshape(n_test, 3072), b"labels": [3, 1, 4]}
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    batches["batches.meta"] = {b"label_names": [c.encode() for c in classes]}
    inner = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(inner, exist_ok=True)
    for name, obj in batches.items():
        with open(os.path.join(inner, name), "wb") as f:
            pickle.dump(obj, f)
    if as_tarball:
        with tarfile.open(os.path.join(folder, "cifar-10-python.tar.gz"), "w:gz") as tar:
            tar.add(inner, arcname="cifar-10-batches-py")
        for name in batches:
            os.remove(os.path.join(inner, name))
        os.rmdir(inner)
    return {
        "train": (np.concatenate(train_images), np.asarray(train_labels)),
        "test": (test_chw.transpose(0, 2, 3, 1), np.asarray([3, 1, 4])),
    }


@pytest.mark.parametrize("as_tarball", [True, False], ids=["tarball", "batches_py_folder"])
def test_cifar10_from_the_python_version(tmp_path, as_tarball):
    # The original repository's root holds CIFAR10/ with torchvision's download in it.
    data = write_cifar(tmp_path / "root" / "CIFAR10", as_tarball=as_tarball)
    counts = local_static.prepare_from_dir("cifar10", str(tmp_path / "root"), str(tmp_path / "t"))
    assert counts == {"train": 10, "test": 3}
    assert_reads_back("cifar10", str(tmp_path / "t"), data)


def test_incomplete_idx_folder_names_the_missing_files(tmp_path):
    write_idx_set(tmp_path, gz=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(MissingDataError, match=r"lacks \['t10k-labels-idx1-ubyte'\]"):
        local_static.find_source("fashion_mnist", str(tmp_path))


def test_folder_without_any_dataset_file_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDataError, match="does not hold the four IDX files"):
        local_static.find_source("mnist", str(tmp_path))
    with pytest.raises(MissingDataError, match="holds neither cifar-10-python.tar.gz"):
        local_static.find_source("cifar10", str(tmp_path))
    with pytest.raises(MissingDataError, match="is not a directory"):
        local_static.find_source("mnist", str(tmp_path / "nope"))


def test_truncated_idx_file_is_named(tmp_path):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    files = local_static.find_source("mnist", str(tmp_path))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte holds .* truncated"):
        local_static.read_idx_split(files, "train")


def test_cut_gzip_and_foreign_file_are_named(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        local_static.read_idx(str(path))
    (tmp_path / "x").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="is not an unsigned-byte IDX file"):
        local_static.read_idx(str(tmp_path / "x"))


def test_cifar_tarball_without_a_batch_names_the_member(tmp_path):
    write_cifar(tmp_path, as_tarball=False)
    inner = tmp_path / "cifar-10-batches-py"
    os.remove(inner / "data_batch_4")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(inner, arcname="cifar-10-batches-py")
    with pytest.raises(MissingDataError, match=r"lacks members \['data_batch_4'\]"):
        local_static.read_cifar_members(str(tmp_path / "cifar-10-python.tar.gz"))
    with pytest.raises(MissingDataError, match=r"lacks \['data_batch_4'\]"):
        local_static.read_cifar_members(str(inner))


def test_cifar_pickle_may_only_hold_data(tmp_path):
    evil = pickle.dumps(os.system)  # a global that is not an array: refused, never called
    with pytest.raises(DataError, match="not a readable CIFAR-10 python batch"):
        local_static._unpickle(evil, "batch")
