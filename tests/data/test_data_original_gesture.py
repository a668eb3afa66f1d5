"""The original DVS128 Gesture archive (IBM's ``DvsGesture.tar.gz``: AEDAT 3.1 recordings cut by
their label files), written here in its real format and laid out as the original repository's
README lists it. The CIFAR10-DVS and N-MNIST archives: ``test_data_original.py``."""

import logging
import os
import struct
import tarfile

import numpy as np
import pytest
import tonic

from plif_jax.data import aedat, archives, get_datasets, integrate_events
from plif_jax.data import events as events_lib
from plif_jax.data import original as original_lib
from plif_jax.errors import ConfigError, DataError, MissingDataError
from tests.support.events import event_config


def config(tmp_path, dataset, **data):
    return event_config(tmp_path, dataset, batch_size=1, **data)


def all_x(source):
    """Every sample of a split in sample order (training batches would come shuffled)."""
    return source.read_batch(np.arange(len(source)))["x"]


# --- AEDAT 3.1 (DVS128 Gesture) ------------------------------------------------------------

AEDAT31_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def aedat31_packet(etype, words, ts, overflow=0):
    """28-byte header (type, source, size 8, offset 4, overflow, capacity, number, valid) + data."""
    n = len(words)
    head = struct.pack("<hhiiiiii", etype, 1, 8, 4, overflow, n, n, n)
    body = np.stack([np.asarray(words), np.asarray(ts)], axis=1).astype("<u4").tobytes()
    return head + body


def gesture_word(x, y, p):
    return (np.asarray(x) << 17) | (np.asarray(y) << 2) | (np.asarray(p) << 1) | 1


def test_aedat31_polarity_packets_decode_to_hand_computed_fields(tmp_path):
    path = tmp_path / "user01_lab.aedat"
    path.write_bytes(
        AEDAT31_HEADER
        + aedat31_packet(0, [0x12345678, 0x0BADF00D], [1, 2])  # special events: skipped
        + aedat31_packet(1, [0x000A001F, 0x00FE0001], [100, 200])
        + aedat31_packet(1, [0x000601FF], [5], overflow=1)  # timestamp overflow
    )
    ev = aedat.read_aedat31_polarity(path)
    # 0x000A001F: x = 5, y = 7, p = 1; 0x00FE0001: x = 127, y = 0, p = 0; 0x000601FF: 3, 127, 1.
    np.testing.assert_array_equal(ev["x"], [5, 127, 3])
    np.testing.assert_array_equal(ev["y"], [7, 0, 127])
    np.testing.assert_array_equal(ev["p"], [1, 0, 1])
    np.testing.assert_array_equal(ev["t"], [100, 200, 2**31 + 5])
    # tonic 1.7.0, for comparison: read_dvs_ibm cannot run, and its AEDAT 3 path keeps the
    # special packet's events and drops the overflow.
    with pytest.raises(ValueError, match="too many values to unpack"):
        tonic.io.read_dvs_ibm(str(path))
    raw = tonic.io.get_aer_events_from_file(str(path), 3.1, len(AEDAT31_HEADER))
    assert len(raw) == 5 and raw["timeStamp"].max() < 2**31


def test_truncated_aedat31_names_the_file(tmp_path):
    path = tmp_path / "user02_led.aedat"
    full = AEDAT31_HEADER + aedat31_packet(1, [0x000A001F] * 4, [1, 2, 3, 4])
    for cut in (5, 30):  # inside the last event; inside the packet header
        path.write_bytes(full[:-cut])
        with pytest.raises(DataError, match=f"Truncated or corrupt event file {path}"):
            aedat.read_aedat31_polarity(path)
    path.write_bytes(b"#!AER-DAT2.0\r\n" + bytes(8))
    with pytest.raises(DataError, match="not an AER-DAT3 file"):
        aedat.read_aedat31_polarity(path)


def write_trial(folder, name, events, rows):
    """``<name>.aedat`` (two polarity packets, a special packet between) and its labels csv."""
    x, y, t, p = events
    half = len(t) // 2
    words = gesture_word(x, y, p)
    (folder / f"{name}.aedat").write_bytes(
        AEDAT31_HEADER
        + aedat31_packet(1, words[:half], t[:half])
        + aedat31_packet(2, [7, 8, 9], [0, 0, 0])
        + aedat31_packet(1, words[half:], t[half:])
    )
    lines = ["class,startTime_usec,endTime_usec"] + [f"{c},{s},{e}" for c, s, e in rows]
    (folder / f"{name}_labels.csv").write_text("\n".join(lines) + "\n")


def trial_events(rng, n, t_end):
    t = np.sort(rng.integers(0, t_end, n)) // 1000 * 1000  # whole ms: tonic's copy stores ms
    return rng.integers(0, 128, n), rng.integers(0, 128, n), t, rng.integers(0, 2, n)


def make_gesture_archive(root, train_trials, test_trials, rng, skip=()):
    """``root/DVS128Gesture/DvsGesture.tar.gz`` with ``DvsGesture/`` inside, as IBM ships it.

    ``*_trials`` map a trial name to its label rows; returns ``{trial: events}``.
    """
    src = root.parent / "src" / "DvsGesture"
    src.mkdir(parents=True)
    written = {}
    for name, rows in {**train_trials, **test_trials}.items():
        written[name] = trial_events(rng, 400, max(e for _, _, e in rows) + 3000)
        write_trial(src, name, written[name], rows)
    (src / "trials_to_train.txt").write_text("".join(f"{n}.aedat\n" for n in train_trials))
    (src / "trials_to_test.txt").write_text("".join(f"{n}.aedat\n" for n in test_trials))
    for name in skip:
        (src / name).unlink()
    (root / "DVS128Gesture").mkdir(parents=True)
    with tarfile.open(root / "DVS128Gesture" / "DvsGesture.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="DvsGesture")
    return written


def cut(events, start, end):
    x, y, t, p = events
    keep = (t >= start) & (t < end)
    ev = np.zeros(int(keep.sum()), dtype=aedat.EVENTS_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x[keep], y[keep], t[keep], p[keep]
    return ev


TRAIN_ROWS = {
    "user01_fluorescent": [(1, 0, 40_000), (4, 40_000, 90_000), (11, 90_000, 150_000)],
    # user26_fluorescent-style: the same label twice, two samples
    "user02_lab": [(4, 10_000, 60_000), (4, 60_000, 120_000)],
}
TEST_ROWS = {"user24_led": [(2, 5_000, 50_000), (8, 50_000, 100_000)]}


def test_dvsgesture_original_cut_by_label_rows(tmp_path, caplog):
    raw = tmp_path / "raw"
    written = make_gesture_archive(raw, TRAIN_ROWS, TEST_ROWS, np.random.default_rng(0))
    caplog.set_level(logging.INFO)
    bundle = get_datasets(config(tmp_path, "dvsgesture", T=3))
    assert (bundle.info.num_train, bundle.info.num_test, bundle.info.num_classes) == (5, 2, 11)
    np.testing.assert_array_equal(bundle.train.labels, [0, 3, 10, 3, 3])  # csv class - 1
    np.testing.assert_array_equal(bundle.test.labels, [1, 7])
    rows = [(n, r) for n, rs in TRAIN_ROWS.items() for r in rs]
    for i, (name, (_, s, e)) in enumerate(rows):
        want = integrate_events(cut(written[name], s, e), (128, 128, 2), 3)
        np.testing.assert_array_equal(bundle.train.read_batch(np.array([i]))["x"][0], want)
    assert "dvsgesture: source original (original IBM AEDAT 3.1" in caplog.text
    assert "5 train / 0 val / 2 test samples" in caplog.text
    # start <= t < end, hand-checked: an event exactly at a boundary belongs to the later sample.
    ev = original_lib.OriginalFrames(
        original_lib.open_split("dvsgesture", raw, True), 3, "number", None, False
    )
    t = written["user01_fluorescent"][2]
    for i, (_, _, s, e) in enumerate(
        [(0, *r) for r in TRAIN_ROWS["user01_fluorescent"]]
    ):  # fmt: skip
        got = ev.events(i)["t"]
        assert len(got) == np.sum((t >= s) & (t < e)) and got.min() >= s and got.max() < e


def test_dvsgesture_first_78_trials_is_the_paper_runs_training_set(tmp_path):
    rng = np.random.default_rng(1)
    train = {f"user{k // 4 + 1:02d}_trial{k}": [(k % 11 + 1, 0, 9_000)] for k in range(80)}
    train["user01_trial0"] = [(3, 0, 9_000), (3, 9_000, 18_000)]  # a repeated label: 81 samples
    make_gesture_archive(tmp_path / "raw", train, TEST_ROWS, rng)
    full = get_datasets(config(tmp_path, "dvsgesture", T=1, split_by="time"))
    paper = get_datasets(
        config(tmp_path, "dvsgesture", T=1, split_by="time", dvsgesture_train="first_78_trials")
    )
    assert (full.info.num_train, paper.info.num_train) == (81, 79)  # 78 trials, one with 2 rows
    assert paper.info.num_test == full.info.num_test == 2
    np.testing.assert_array_equal(paper.train.labels, full.train.labels[:79])
    np.testing.assert_array_equal(
        paper.train.read_batch(np.array([78]))["x"], full.train.read_batch(np.array([78]))["x"]
    )
    with pytest.raises(ConfigError, match="dvsgesture_train='first_78_trials'.*source=original"):
        get_datasets(
            config(tmp_path, "dvsgesture", T=1, source="tonic", dvsgesture_train="first_78_trials")
        )
    with pytest.raises(ConfigError, match="Unknown config.data.dvsgesture_train 'paper'"):
        get_datasets(config(tmp_path, "dvsgesture", T=1, dvsgesture_train="paper"))


def test_dvsgesture_original_and_tonic_copy_give_the_same_frames(tmp_path, tonic_few_files, caplog):
    raw = tmp_path / "raw"
    written = make_gesture_archive(raw, TRAIN_ROWS, TEST_ROWS, np.random.default_rng(2))
    # tonic's copy of the same events: user<NN>_<lighting>/<label>.npy, x y p t with t in ms.
    base = raw / "DVSGesture"
    for folder, trials in (("ibmGestureTrain", TRAIN_ROWS), ("ibmGestureTest", TEST_ROWS)):
        (base / f"{folder}.tar.gz").parent.mkdir(parents=True, exist_ok=True)
        (base / f"{folder}.tar.gz").write_bytes(b"placeholder")
        for name, rows in trials.items():
            (base / folder / name).mkdir(parents=True)
            for c, s, e in rows[:1] if name == "user02_lab" else rows:  # one file per label
                ev = cut(written[name], s, e)
                arr = np.stack([ev["x"], ev["y"], ev["p"], ev["t"] // 1000], 1).astype(np.float64)
                np.save(base / folder / name / f"{c - 1}.npy", arr)
    caplog.set_level(logging.INFO)
    auto = get_datasets(config(tmp_path, "dvsgesture", T=4))
    tonic_ = get_datasets(config(tmp_path, "dvsgesture", T=4, source="tonic"))
    assert "source tonic (DVSGesture layout)" in caplog.text
    assert "tonic's layout is also there: --config.data.source=tonic reads it" in caplog.text
    assert (auto.info.num_train, tonic_.info.num_train) == (5, 4)
    for sub, trials in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        a, b = getattr(auto, sub), getattr(tonic_, sub)
        keys = [(n, c - 1) for n, rows in trials.items() for c, _, _ in rows]  # original order
        paths = events_lib.open_split("dvsgesture", str(raw), sub == "train").paths
        xa, xb = all_x(a), all_x(b)
        for j, path in enumerate(paths):  # tonic: user folder, then <label>.npy
            key = (os.path.basename(os.path.dirname(path)), int(os.path.basename(path)[:-4]))
            i = keys.index(key)  # user02_lab: its first label-4 row
            np.testing.assert_array_equal(xa[i], xb[j])
            assert xa[i].sum() > 0


def test_missing_or_truncated_gesture_members_are_named(tmp_path):
    raw = tmp_path / "raw"
    make_gesture_archive(
        raw, TRAIN_ROWS, TEST_ROWS, np.random.default_rng(3), ["trials_to_test.txt"]
    )
    with pytest.raises(MissingDataError, match="trials_to_test.txt is missing from .*DvsGesture"):
        get_datasets(config(tmp_path, "dvsgesture", T=2))
    for name, pattern in (
        ("user02_lab_labels.csv", "Label file .*user02_lab_labels.csv is missing"),
        ("user01_fluorescent.aedat", "user01_fluorescent.aedat .listed in trials_to_train.txt"),
    ):
        root = tmp_path / name
        make_gesture_archive(root / "raw", TRAIN_ROWS, TEST_ROWS, np.random.default_rng(3), [name])
        with pytest.raises(MissingDataError, match=pattern):
            get_datasets(config(root, "dvsgesture", T=2))
    # a recording cut short inside the archive
    root = tmp_path / "short"
    make_gesture_archive(root / "raw", TRAIN_ROWS, TEST_ROWS, np.random.default_rng(3))
    extracted = archives.extract(root / "raw" / "DVS128Gesture" / "DvsGesture.tar.gz")
    bad = extracted / "DvsGesture" / "user02_lab.aedat"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DataError, match=f"Truncated or corrupt event file {bad}"):
        get_datasets(config(root, "dvsgesture", T=2))


def test_truncated_archive_is_an_error_and_extraction_resumes(tmp_path):
    raw = tmp_path / "raw"
    make_gesture_archive(raw, TRAIN_ROWS, TEST_ROWS, np.random.default_rng(4))
    archive = raw / "DVS128Gesture" / "DvsGesture.tar.gz"
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(DataError, match=f"Cannot extract {archive}: the archive is truncated"):
        get_datasets(config(tmp_path, "dvsgesture", T=2))
    partial = raw / "DVS128Gesture" / archives.EXTRACTED / ".DvsGesture.tar.gz.partial"
    kept = sorted(p for p in partial.rglob("*") if p.is_file())
    assert kept and not [p for p in kept if p.suffix == ".tmp"], "whole members before the cut"
    first, stamp = kept[0], kept[0].stat().st_mtime_ns
    (first.parent / ".stale.123.tmp").write_bytes(b"x")  # as a killed run leaves it
    archive.write_bytes(good)
    final = archives.extract(archive)
    assert final == raw / "DVS128Gesture" / archives.EXTRACTED / "DvsGesture.tar.gz"
    assert not partial.exists() and not list(final.rglob("*.tmp"))
    assert (final / first.relative_to(partial)).stat().st_mtime_ns == stamp  # not rewritten
    with tarfile.open(archive) as t:
        assert {m.name for m in t if m.isfile()} == {
            str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()
        }
    (raw / "NMNIST").mkdir()
    (raw / "NMNIST" / "Train.zip").write_bytes(b"PK\x03\x04 truncated")
    (raw / "NMNIST" / "Test.zip").write_bytes(b"")
    with pytest.raises(DataError, match="Train.zip: the archive is truncated or corrupt"):
        get_datasets(config(tmp_path, "nmnist", T=2))
