"""Frame cache: keys, stale frames, interruption and resumption, parallel conversion, damage."""

import os

import numpy as np
import pytest

from plif_jax.data import cache as cache_lib
from plif_jax.data.cache import FrameStore, cache_key, files_fingerprint
from plif_jax.errors import DataError
from tests.support.frames import BASE, CountingProducer


@pytest.mark.parametrize(
    "field,value",
    [
        ("dataset", "dvsgesture"),
        ("split", "test"),
        ("T", 20),
        ("split_by", "time"),
        ("normalization", "max"),
        ("drop_remainder", True),
    ],
)
def test_cache_key_changes_with_every_setting(field, value):
    assert cache_key({**BASE, field: value}) != cache_key(BASE)


def test_cache_key_changes_with_format_version(monkeypatch):
    before = cache_key(BASE)
    monkeypatch.setattr(cache_lib, "FORMAT_VERSION", cache_lib.FORMAT_VERSION + 1)
    assert cache_key(BASE) != before
    assert cache_key(dict(reversed(list(BASE.items())))) == cache_key(BASE) != before


def test_files_fingerprint_sees_changed_files_not_a_moved_root(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "x.bin").write_bytes(b"12345")
    fa = files_fingerprint([tmp_path / "a" / "x.bin"], tmp_path / "a")
    fb = files_fingerprint([tmp_path / "b" / "x.bin"], tmp_path / "b")
    assert fa == fb
    (tmp_path / "b" / "x.bin").write_bytes(b"1234567890")
    assert files_fingerprint([tmp_path / "b" / "x.bin"], tmp_path / "b") != fa


def test_changed_setting_never_reads_stale_frames(tmp_path):
    s2 = FrameStore(tmp_path, "nmnist", "train", {**BASE, "T": 2})
    s2.ensure(CountingProducer(5, T=2))
    s3 = FrameStore(tmp_path, "nmnist", "train", {**BASE, "T": 3})
    assert s3.directory != s2.directory and not s3.complete
    s3.ensure(CountingProducer(5, T=3))
    assert s2.load(4).shape == (2, 2, 2, 2) and s2.load(4)[0, 0, 0, 0] == 24
    assert s3.load(4).shape == (3, 2, 2, 2) and s3.load(4)[0, 0, 0, 0] == 34


def test_integer_counts_stored_compact_and_read_back_exactly(tmp_path):
    store = FrameStore(tmp_path, "d", "train", BASE)
    store.directory.mkdir(parents=True)
    counts = np.array([[0.0, 3.0], [300.0, 7.0]], np.float32)
    store.save(0, counts)
    assert np.load(store.path(0)).dtype == np.uint16
    np.testing.assert_array_equal(store.load(0), counts)
    assert store.load(0).dtype == np.float32
    normed = np.array([0.25, -1.5], np.float32)
    store.save(1, normed)
    np.testing.assert_array_equal(store.load(1), normed)


def test_split_travels_in_the_dtype_holding_every_sample_exactly(tmp_path):
    store = FrameStore(tmp_path, "d", "train", BASE)
    store.directory.mkdir(parents=True)
    samples = [np.full((2, 2), v, np.float32) for v in (3.0, 300.0, 7.0)]  # uint8, uint16, uint8
    for i, x in enumerate(samples):
        store.save(i, x)
    assert store.stored_dtype(3) == np.uint16
    assert (store.directory / "dtype").read_text() == "uint16"  # remembered: headers read once
    batch = store.load_many([1, 0], dtype=store.stored_dtype(3))
    assert batch.dtype == np.uint16 and batch.ctypes.data % 64 == 0
    np.testing.assert_array_equal(batch, np.stack([samples[1], samples[0]]))
    np.testing.assert_array_equal(store.load_many([1, 0]), batch.astype(np.float32))
    assert store.stored_dtype(1) == np.uint16  # the remembered answer, not the headers again
    (store.directory / "dtype").unlink()
    assert store.stored_dtype(1) == np.uint8
    store.save(3, np.array([[0.5]], np.float32))  # not counts (normalised frames)
    (store.directory / "dtype").unlink()
    assert store.stored_dtype(4) == np.float32
    assert cache_lib.holding_dtype(["uint8", "uint32", "uint16"]) == np.uint32


def test_interrupted_conversion_continues_with_the_missing_samples(tmp_path):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    with pytest.raises(KeyboardInterrupt):
        store.ensure(CountingProducer(10, fail_at=7))
    assert not store.complete
    assert store.missing(10) == [6, 7, 8, 9]  # chunks of 3: 0-2, 3-5 written, 6 lost with 7
    assert not list(store.directory.glob(".*.tmp"))  # no half-written file left behind
    written = {i: os.path.getmtime(store.path(i)) for i in range(6)}

    calls = []

    class Recording(CountingProducer):
        def frames(self, indices):
            calls.append(list(indices))
            return super().frames(indices)

    store.ensure(Recording(10))
    assert sorted(i for c in calls for i in c) == [6, 7, 8, 9]
    assert store.complete
    assert {i: os.path.getmtime(store.path(i)) for i in range(6)} == written
    np.testing.assert_array_equal(store.load_many(range(10))[:, 0, 0, 0, 0], np.arange(10) + 20)


def test_parallel_conversion_matches_serial(tmp_path):
    a = FrameStore(tmp_path / "serial", "nmnist", "train", BASE)
    b = FrameStore(tmp_path / "parallel", "nmnist", "train", BASE)
    a.ensure(CountingProducer(11), num_workers=1)
    b.ensure(CountingProducer(11), num_workers=2)
    np.testing.assert_array_equal(a.load_many(range(11)), b.load_many(range(11)))
    assert b.complete and (b.directory / "settings.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "emptied", "deleted"])
def test_damaged_frame_file_is_reconverted_and_reported_never_fed(damage, tmp_path, caplog):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    store.ensure(CountingProducer(5))
    path = store.path(3)
    if damage == "deleted":
        path.unlink()
    else:
        os.truncate(path, path.stat().st_size // 2 if damage == "truncated" else 0)
    # A fresh store on the complete directory, as the next run opens it.
    again = FrameStore(tmp_path, "nmnist", "train", BASE)
    again.ensure(CountingProducer(5))
    with caplog.at_level("WARNING", logger="plif_jax.data.cache"):
        frames = again.load_many(range(5))
    np.testing.assert_array_equal(frames[:, 0, 0, 0, 0], np.arange(5) + 20)
    assert again.repaired == [3]
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert f"Frame cache file {path} is damaged" in record.getMessage()
    assert "reconverting sample 3" in record.getMessage()
    np.testing.assert_array_equal(np.load(path), np.load(again.path(2)) + 1)  # repaired on disk


def test_damaged_frame_file_without_its_producer_is_an_error_naming_it(tmp_path):
    store = FrameStore(tmp_path, "nmnist", "train", BASE)
    store.ensure(CountingProducer(2))
    os.truncate(store.path(1), 10)
    reader = FrameStore(tmp_path, "nmnist", "train", BASE)  # never given a producer
    with pytest.raises(DataError, match=rf"Damaged frame cache file {store.path(1)} .*Delete"):
        reader.load_many([0, 1])
