"""Event datasets: small files in the real on-disk formats, read by tonic's own classes."""

import os

import numpy as np
import pytest
import tonic

from plif_jax.data import events as events_lib
from plif_jax.data import get_datasets, integrate_events
from tests.support.events import event_config, write_aedat4

# tonic insists on >= 10,000 / 1,000 / 100 extracted files; its check is kept, with n = 1.
pytestmark = pytest.mark.usefixtures("tonic_few_files")


def random_events(rng, n, size, t_max=300_000):
    return (
        rng.integers(0, size, n),
        rng.integers(0, size, n),
        np.sort(rng.integers(0, t_max, n)),
        rng.integers(0, 2, n),
    )


def write_nmnist_bin(path, x, y, t, p):
    """N-MNIST's 5-byte records: x, y, polarity in bit 7 of byte 2, 23-bit µs timestamp."""
    rec = np.zeros((len(x), 5), np.uint8)
    rec[:, 0], rec[:, 1] = x, y
    rec[:, 2] = (p.astype(np.uint32) << 7) | ((t >> 16) & 0x7F)
    rec[:, 3], rec[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rec.tofile(path)


def tonic_struct(x, y, t, p):
    ev = np.zeros(len(x), dtype=tonic.datasets.NMNIST.dtype)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def make_nmnist(root, rng):
    """3 training files per digit 0-2 and 1 test file per digit 0-2; returns the events."""
    base = root / "NMNIST"
    base.mkdir(parents=True)
    (base / "train.zip").write_bytes(b"placeholder")
    (base / "test.zip").write_bytes(b"placeholder")
    written = {}
    for folder, per_class in (("Train", 3), ("Test", 1)):
        for digit in range(3):
            for k in range(per_class):
                # ids 2, 10, 11: natural order differs from string order
                fid = (2, 10, 11)[k]
                ev = random_events(rng, 200 + 37 * digit + k, 34)
                path = base / folder / str(digit) / f"{fid:d}.bin"
                write_nmnist_bin(str(path), *ev)
                written[(folder, digit, fid)] = tonic_struct(*ev)
    return written


def all_x(source):
    return np.concatenate([b["x"][b["mask"] > 0] for b in source.batches()])


def test_nmnist_bin_files_come_out_as_the_expected_frames(tmp_path):
    written = make_nmnist(tmp_path / "raw", np.random.default_rng(0))
    bundle = get_datasets(event_config(tmp_path, "nmnist", T=5))
    info = bundle.info
    assert (info.num_train, info.num_test, info.sample_shape) == (9, 3, (5, 2, 34, 34))
    assert (info.model_name, info.num_classes, info.time_steps) == ("nmnist", 10, 5)
    # Sorted (natural) order: digit 0 files 2, 10, 11, then digit 1, ...
    order = [(d, f) for d in range(3) for f in (2, 10, 11)]
    np.testing.assert_array_equal(bundle.train.labels, [d for d, _ in order])
    got = all_x(bundle.test)
    np.testing.assert_array_equal(bundle.test.labels, [0, 1, 2])
    for i, (d, f) in enumerate(order):
        want = integrate_events(written[("Train", d, f)], (34, 34, 2), 5)
        batch = bundle.train.read_batch(np.array([i]))
        np.testing.assert_array_equal(batch["x"][0], want)
        assert batch["x"][0].sum() == len(written[("Train", d, f)])
    for i in range(3):
        np.testing.assert_array_equal(
            got[i], integrate_events(written[("Test", i, 2)], (34, 34, 2), 5)
        )


def test_nmnist_record_layout_matches_a_hand_decoded_event(tmp_path):
    path = tmp_path / "one.bin"
    write_nmnist_bin(str(path), np.array([5]), np.array([7]), np.array([0x123456]), np.array([1]))
    assert path.read_bytes() == bytes([5, 7, 0x80 | 0x12, 0x34, 0x56])
    ev = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
    assert (ev["x"][0], ev["y"][0], ev["t"][0], ev["p"][0]) == (5, 7, 0x123456, 1)


def test_truncated_nmnist_file_error_names_the_file(tmp_path):
    make_nmnist(tmp_path / "raw", np.random.default_rng(1))
    bad = tmp_path / "raw" / "NMNIST" / "Train" / "1" / "10.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(ValueError, match=f"Truncated or corrupt N-MNIST file {bad}"):
        get_datasets(event_config(tmp_path, "nmnist", T=4))


def test_empty_sample_gives_zero_frames(tmp_path):
    make_nmnist(tmp_path / "raw", np.random.default_rng(2))
    (tmp_path / "raw" / "NMNIST" / "Test" / "2" / "2.bin").write_bytes(b"")
    bundle = get_datasets(event_config(tmp_path, "nmnist", T=4))
    got = all_x(bundle.test)
    assert got.shape == (3, 4, 2, 34, 34)
    np.testing.assert_array_equal(got[2], 0.0)
    assert got[0].sum() > 0


def test_missing_event_data_names_the_location_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_datasets(event_config(tmp_path, "nmnist", T=10))
    msg = str(err.value)
    assert str(tmp_path / "raw" / "NMNIST") in msg
    assert "tonic.datasets.NMNIST(save_to=" in msg


def make_dvsgesture(root, rng):
    """tonic's preprocessed copy: user<NN>_<lighting>/<label>.npy with x, y, p, t (ms)."""
    written = {}
    for folder, users in (("ibmGestureTrain", (1, 2)), ("ibmGestureTest", (24,))):
        base = root / "DVSGesture"
        (base / folder).mkdir(parents=True, exist_ok=True)
        (base / f"{folder}.tar.gz").write_bytes(b"placeholder")
        for u in users:
            for lighting in ("fluorescent", "lab"):
                d = base / folder / f"user{u:02d}_{lighting}"
                d.mkdir()
                for label in (0, 3, 10):
                    n = 500 + 10 * label + u
                    x, y, t, p = random_events(rng, n, 128, t_max=6000)
                    arr = np.stack([x, y, p, t], axis=1).astype(np.float64)  # t in ms
                    np.save(d / f"{label}.npy", arr)
                    written[(folder, u, lighting, label)] = tonic_struct(x, y, t * 1000, p)
    return written


def test_dvsgesture_npy_files_sorted_by_path_come_out_as_the_expected_frames(tmp_path):
    written = make_dvsgesture(tmp_path / "raw", np.random.default_rng(3))
    bundle = get_datasets(event_config(tmp_path, "dvsgesture", T=3, split_by="time"))
    info = bundle.info
    assert (info.num_train, info.num_test, info.num_classes) == (12, 6, 11)
    assert info.sample_shape == (3, 2, 128, 128) and info.model_name == "dvsgesture"
    keys = [(u, lt, lab) for u in (1, 2) for lt in ("fluorescent", "lab") for lab in (0, 3, 10)]
    np.testing.assert_array_equal(bundle.train.labels, [k[2] for k in keys])
    for i, (u, lt, lab) in enumerate(keys):
        want = integrate_events(
            written[("ibmGestureTrain", u, lt, lab)], (128, 128, 2), 3, split_by="time"
        )
        np.testing.assert_array_equal(bundle.train.read_batch(np.array([i]))["x"][0], want)


def make_cifar10dvs(root, rng, classes=("airplane", "cat"), per_class=12):
    base = root / "CIFAR10DVS"
    base.mkdir(parents=True)
    (base / "CIFAR10DVS.zip").write_bytes(b"placeholder")
    written = {}
    for c in classes:
        (base / c).mkdir()
        for i in range(per_class):
            ev = random_events(rng, 50 + i, 128, t_max=1_000_000)
            ev = (ev[0], ev[1], ev[2] + 1, ev[3])  # aedat timestamps > 0
            write_aedat4(base / c / f"cifar10_{c}_{i}.aedat4", *ev)
            written[(c, i)] = tonic_struct(*ev)
    return written


def test_cifar10dvs_aedat4_paper_split_by_natural_file_index(tmp_path):
    written = make_cifar10dvs(tmp_path / "raw", np.random.default_rng(4))
    bundle = get_datasets(event_config(tmp_path, "cifar10dvs", T=4))
    # round(0.9 * 12) = 11 train per class (files 0-10); file 11 tests (string order would
    # have put file 9 last).
    assert (bundle.info.num_train, bundle.info.num_test) == (22, 2)
    np.testing.assert_array_equal(bundle.test.labels, [0, 3])
    got = all_x(bundle.test)
    for j, c in enumerate(("airplane", "cat")):
        np.testing.assert_array_equal(got[j], integrate_events(written[(c, 11)], (128, 128, 2), 4))
    first_train = bundle.train.read_batch(np.array([0, 10]))["x"]
    np.testing.assert_array_equal(
        first_train[0], integrate_events(written[("airplane", 0)], (128, 128, 2), 4)
    )
    np.testing.assert_array_equal(
        first_train[1], integrate_events(written[("airplane", 10)], (128, 128, 2), 4)
    )


def test_corrupt_aedat4_error_names_the_file(tmp_path):
    make_cifar10dvs(tmp_path / "raw", np.random.default_rng(5), classes=("dog",), per_class=2)
    bad = tmp_path / "raw" / "CIFAR10DVS" / "dog" / "cifar10_dog_1.aedat4"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(ValueError, match=f"Cannot read event file {bad}"):
        get_datasets(event_config(tmp_path, "cifar10dvs", T=2))


def test_natural_key_orders_numbers_numerically():
    paths = ["a/x_10.bin", "a/x_2.bin", "a/x_1.bin", "b/x_0.bin"]
    assert sorted(paths, key=events_lib.natural_key) == [
        "a/x_1.bin",
        "a/x_2.bin",
        "a/x_10.bin",
        "b/x_0.bin",
    ]


def test_truncated_dvsgesture_npy_error_names_the_file(tmp_path):
    make_dvsgesture(tmp_path / "raw", np.random.default_rng(6))
    bad = tmp_path / "raw" / "DVSGesture" / "ibmGestureTest" / "user24_lab" / "3.npy"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"Cannot read event file {bad}"):
        get_datasets(event_config(tmp_path, "dvsgesture", T=2))
