"""The original archives (CIFAR10-DVS AEDAT 2.0, N-MNIST zips), written here in their real formats
and laid out as the original repository's README lists them. DVS128 Gesture (AEDAT 3.1):
``test_data_original_gesture.py``."""

import os
import zipfile

import numpy as np
import pytest
import tonic

from plif_jax.data import aedat, get_datasets
from plif_jax.data import events as events_lib
from plif_jax.data import original as original_lib
from plif_jax.errors import ConfigError, DataError, MissingDataError
from tests.support.events import event_config, write_aedat4


def config(tmp_path, dataset, **data):
    return event_config(tmp_path, dataset, batch_size=1, **data)


def all_x(source):
    """Every sample of a split in sample order (training batches would come shuffled)."""
    return source.read_batch(np.arange(len(source)))["x"]


# --- AEDAT 2.0 (CIFAR10-DVS) ---------------------------------------------------------------


def write_aedat2(path, address, timestamp):
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"  # noqa: E501
    body = np.stack([np.asarray(address), np.asarray(timestamp)], 1).astype(">u4")
    path.write_bytes(header + body.tobytes())


def test_aedat2_cifar10dvs_decodes_in_the_papers_orientation(tmp_path):
    path = tmp_path / "cifar10_cat_3.aedat"
    write_aedat2(path, [0x00003A15, 0x00000000, 0x00007FFF], [7, 8, 1 << 31])
    ev = aedat.read_cifar10dvs(path)
    # 0x3A15: x_raw 10, y_raw 58, pol 1 -> x 117, y 58, p 0; 0x7FFF: x_raw 127, y_raw 127, pol 1.
    np.testing.assert_array_equal(ev["x"], [117, 127, 0])
    np.testing.assert_array_equal(ev["y"], [58, 0, 127])
    np.testing.assert_array_equal(ev["p"], [0, 1, 0])
    np.testing.assert_array_equal(ev["t"], [7, 8, 1 << 31])
    # tonic's own AEDAT 2.0 header + body reader sees the same (address, timestamp) pairs.
    version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
    theirs = tonic.io.get_aer_events_from_file(str(path), version, start)
    np.testing.assert_array_equal(theirs["address"], [0x00003A15, 0, 0x7FFF])
    np.testing.assert_array_equal(
        aedat.encode_cifar10dvs(ev["x"], ev["y"], ev["p"]), theirs["address"]
    )
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=f"Truncated or corrupt event file {path}"):
        aedat.read_cifar10dvs(path)


def make_cifar10dvs_zips(root, rng, numbers=(0, 899, 900)):
    """The ten class zips, each ``<class>/cifar10_<class>_<i>.aedat``; returns the events."""
    folder = root / "CIFAR10DVS"
    folder.mkdir(parents=True)
    written = {}
    for c in original_lib.CIFAR10DVS_CLASSES:
        with zipfile.ZipFile(folder / f"{c}.zip", "w") as z:
            for i in numbers:
                n = 30 + i % 7
                x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
                t = np.sort(rng.integers(1, 10**6, n))
                tmp = root.parent / "rec.aedat"
                write_aedat2(tmp, aedat.encode_cifar10dvs(x, y, p), t)
                z.write(tmp, f"{c}/cifar10_{c}_{i}.aedat")
                written[(c, i)] = (x, y, t, p)
    return written


def test_cifar10dvs_original_split_and_orientation(tmp_path):
    written = make_cifar10dvs_zips(tmp_path / "raw", np.random.default_rng(5))
    bundle = get_datasets(config(tmp_path, "cifar10dvs", T=2))
    assert (bundle.info.num_train, bundle.info.num_test) == (20, 10)  # files 0, 899 | 900
    np.testing.assert_array_equal(bundle.train.labels, np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(bundle.test.labels, np.arange(10))
    x, y, t, p = written[("bird", 900)]
    got = all_x(bundle.test)[2]
    assert got.sum() == len(t)
    for xi, yi, pi in zip(x, y, p, strict=True):  # every event at its (p, y, x), as written
        assert got[:, pi, yi, xi].sum() >= 1
    missing = tmp_path / "raw" / "CIFAR10DVS" / "truck.zip"
    missing.unlink()
    with pytest.raises(MissingDataError, match="truck.zip missing from"):
        get_datasets(config(tmp_path, "cifar10dvs", T=2, source="original"))


def test_cifar10dvs_original_and_tonic_aedat4_give_the_same_frames(tmp_path, tonic_few_files):
    raw = tmp_path / "raw"
    numbers = (0, 1, 2, 899, 900)  # tonic's 90 % of 5 files is 4: the same split here
    written = make_cifar10dvs_zips(raw, np.random.default_rng(6), numbers)
    # tonic's layout in the same folder: CIFAR10DVS.zip + <class>/*.aedat4 holding the events as
    # tonic reads them (its reader applies no flip: x, y, p are the AEDAT4 file's).
    (raw / "CIFAR10DVS" / "CIFAR10DVS.zip").write_bytes(b"placeholder")
    for c in ("airplane", "ship"):
        (raw / "CIFAR10DVS" / c).mkdir()
        for i in numbers:
            write_aedat4(raw / "CIFAR10DVS" / c / f"cifar10_{c}_{i}.aedat4", *written[(c, i)])
    orig = get_datasets(config(tmp_path, "cifar10dvs", T=3))
    ton = get_datasets(config(tmp_path, "cifar10dvs", T=3, source="tonic"))
    frames = {}
    for src, bundle, sp in (("original", orig, original_lib), ("tonic", ton, events_lib)):
        for train, part in ((True, bundle.train), (False, bundle.test)):
            s = sp.open_split("cifar10dvs", str(raw), train)
            paths = s.files if src == "original" else s.paths
            for path, x in zip(paths, all_x(part) if len(part) else [], strict=True):
                frames.setdefault(os.path.basename(path).split(".")[0], []).append(x)
    assert (len(ton.train), len(ton.test), len(orig.train), len(orig.test)) == (8, 2, 40, 10)
    compared = 0
    for pair in frames.values():
        if len(pair) == 2:
            np.testing.assert_array_equal(pair[0], pair[1])
            compared += 1
    assert compared == 10


# --- N-MNIST and the original root ----------------------------------------------------------


def write_nmnist_bin(x, y, t, p):
    rec = np.zeros((len(x), 5), np.uint8)
    rec[:, 0], rec[:, 1] = x, y
    rec[:, 2] = (p.astype(np.uint32) << 7) | ((t >> 16) & 0x7F)
    rec[:, 3], rec[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return rec.tobytes()


def test_nmnist_original_zips_give_tonics_frames(tmp_path, tonic_few_files):
    rng = np.random.default_rng(7)
    base = tmp_path / "raw" / "NMNIST"
    base.mkdir(parents=True)
    for split in ("Train", "Test"):
        with zipfile.ZipFile(base / f"{split}.zip", "w") as z:
            for d in range(3):
                for k in (2, 10):
                    n = 60 + d + k
                    ev = (rng.integers(0, 34, n), rng.integers(0, 34, n), np.sort(
                        rng.integers(0, 2**20, n)), rng.integers(0, 2, n))  # fmt: skip
                    data = write_nmnist_bin(*ev)
                    z.writestr(f"{split}/{d}/{k:05d}.bin", data)
                    (base / split / str(d)).mkdir(parents=True, exist_ok=True)
                    (base / split / str(d) / f"{k:05d}.bin").write_bytes(data)
        (base / f"{split.lower()}.zip").write_bytes(b"placeholder")  # tonic's marker
    assert original_lib.resolve_source("nmnist", tmp_path / "raw", "auto") == "original"
    orig = get_datasets(config(tmp_path, "nmnist", T=2))
    ton = get_datasets(config(tmp_path, "nmnist", T=2, source="tonic"))
    assert (orig.info.num_train, orig.info.num_test) == (6, 6)
    np.testing.assert_array_equal(orig.train.labels, ton.train.labels)
    np.testing.assert_array_equal(all_x(orig.test), all_x(ton.test))
    np.testing.assert_array_equal(all_x(orig.train), all_x(ton.train))


def test_original_readme_root_is_recognised(tmp_path):
    root = tmp_path / "datasets"
    for d in ("CIFAR10/cifar-10-batches-py", "FashionMNIST/FashionMNIST", "MNIST/MNIST"):
        (root / d).mkdir(parents=True)
    make_cifar10dvs_zips(root, np.random.default_rng(8), numbers=(0,))
    (root / "DVS128Gesture").mkdir()
    (root / "DVS128Gesture" / "DvsGesture.tar.gz").write_bytes(b"")
    (root / "NMNIST").mkdir()
    for a in ("Train.zip", "Test.zip"):
        (root / "NMNIST" / a).write_bytes(b"")
    for name in ("nmnist", "cifar10dvs", "dvsgesture"):
        assert original_lib.resolve_source(name, root, "auto") == "original"
        assert original_lib.resolve_source(name, root, "tonic") == "tonic"
    # tonic's layouts only: its CIFAR10DVS class zips hold .aedat4 files, not the original ones
    tonic_root = tmp_path / "tonic"
    (tonic_root / "CIFAR10DVS").mkdir(parents=True)
    with zipfile.ZipFile(tonic_root / "CIFAR10DVS" / "airplane.zip", "w") as z:
        z.writestr("airplane/cifar10_airplane_0.aedat4", b"")
    (tonic_root / "CIFAR10DVS" / "CIFAR10DVS.zip").write_bytes(b"")
    (tonic_root / "DVSGesture").mkdir()
    (tonic_root / "DVSGesture" / "ibmGestureTrain.tar.gz").write_bytes(b"")
    assert original_lib.resolve_source("cifar10dvs", tonic_root, "auto") == "tonic"
    assert original_lib.resolve_source("dvsgesture", tonic_root, "auto") == "tonic"
    with pytest.raises(MissingDataError, match="original dvsgesture archives are not in"):
        original_lib.resolve_source("dvsgesture", tonic_root / "x", "original")
    with pytest.raises(MissingDataError, match="neither the original archives .*NMNIST/Train"):
        original_lib.resolve_source("nmnist", tonic_root, "auto")
    with pytest.raises(ConfigError, match="Unknown config.data.source 'orig'"):
        get_datasets(config(tmp_path, "nmnist", source="orig"))
