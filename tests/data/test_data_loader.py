"""Batching (shuffle, drop_last, padding, resume, prefetch) and the accuracy-B split."""

import math

import jax
import numpy as np
import pytest

from plif_jax.data import accuracy_b_split
from plif_jax.data.loader import BatchSource

N = 23


def source(train, batch_size=5, prefetch=0, seed=3, reads=None):
    data = np.arange(N, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)

    def fetch(idx):
        if reads is not None:
            reads.append(list(idx))
        return data[idx]

    labels = np.arange(N) % 4
    return BatchSource(
        name="toy",
        labels=labels,
        fetch=fetch,
        batch_size=batch_size,
        train=train,
        seed=seed,
        prefetch=prefetch,
        sample_shape=(2,),
    )


def test_training_batches_shuffled_by_seed_and_epoch_with_drop_last():
    src = source(train=True)
    assert src.num_batches == 4  # 23 // 5, drop_last
    e0 = [b["x"][:, 0].astype(int) for b in src.batches(epoch=0)]
    assert len(e0) == 4 and all(len(b) == 5 for b in e0)
    seen = np.concatenate(e0)
    assert len(set(seen)) == 20 and set(seen) <= set(range(N))
    again = [b["x"][:, 0].astype(int) for b in source(train=True).batches(epoch=0)]
    np.testing.assert_array_equal(np.concatenate(again), seen)
    e1 = np.concatenate([b["x"][:, 0].astype(int) for b in src.batches(epoch=1)])
    assert not np.array_equal(e1, seen)
    other_seed = source(train=True, seed=4).batch_indices(0).ravel()
    assert not np.array_equal(other_seed, seen)
    for b in src.batches(epoch=0):
        np.testing.assert_array_equal(b["mask"], np.ones(5, np.float32))
        np.testing.assert_array_equal(b["y"], b["x"][:, 0].astype(int) % 4)
        assert b["y"].dtype == np.int32 and b["mask"].dtype == np.float32


def test_resume_start_skips_batches_without_reading_them():
    reads = []
    src = source(train=True, reads=reads)
    full = [b["x"] for b in src.batches(epoch=2)]
    reads.clear()
    resumed = [b["x"] for b in src.batches(epoch=2, start=3)]
    assert len(resumed) == 1 and len(reads) == 1
    np.testing.assert_array_equal(resumed[0], full[3])
    with pytest.raises(ValueError, match="start 5 outside"):
        next(src.batches(epoch=0, start=5))


def test_eval_batches_in_order_complete_and_padded_with_mask_zero():
    src = source(train=False)
    assert src.num_batches == 5
    batches = list(src.batches())
    xs = np.concatenate([b["x"][:, 0] for b in batches])
    masks = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(xs[:N], np.arange(N))
    np.testing.assert_array_equal(xs[N:], 0.0)
    np.testing.assert_array_equal(masks, np.r_[np.ones(N), np.zeros(25 - N)])
    assert all(b["x"].shape == (5, 2) for b in batches)
    assert batches[-1]["y"][-2:].tolist() == [0, 0]


def test_prefetch_yields_device_arrays_equal_to_synchronous_batches():
    sync = list(source(train=True, prefetch=0).batches(epoch=1))
    pre = list(source(train=True, prefetch=2).batches(epoch=1))
    assert len(pre) == len(sync)
    for a, b in zip(sync, pre, strict=True):
        assert isinstance(b["x"], jax.Array)
        for k in ("x", "y", "mask"):
            np.testing.assert_array_equal(np.asarray(b[k]), a[k])


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():
    it = source(train=True, prefetch=1).batches()
    next(it)
    it.close()  # must not hang
    import threading

    assert not any(t.name == "plif_jax-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetch_reraises_a_reading_error():
    def bad(idx):
        raise OSError("disk gone")

    src = BatchSource(
        name="bad", labels=np.zeros(4), fetch=bad, batch_size=2, train=True, prefetch=2
    )
    with pytest.raises(OSError, match="disk gone"):
        list(src.batches())


def test_batch_larger_than_split_is_a_clear_error():
    with pytest.raises(ValueError, match="batch size 30 is larger than the 23 samples"):
        source(train=True, batch_size=30)
    assert source(train=False, batch_size=30).num_batches == 1


MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize(
    "counts,n_train,n_val",
    [
        (MNIST_TRAIN_CLASS_COUNTS, 51005, 8995),  # MNIST and N-MNIST
        ([6000] * 10, 51000, 9000),  # Fashion-MNIST
        ([5000] * 10, 42500, 7500),  # CIFAR-10
        ([900] * 10, 7650, 1350),  # CIFAR10-DVS
    ],
)
def test_accuracy_b_split_sizes_match_the_paper_logs(counts, n_train, n_val):
    # Interleave the classes so that the per-class index order matters.
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    tr, va = accuracy_b_split(labels, 0.15)
    assert (len(tr), len(va)) == (n_train, n_val)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        k = math.ceil(0.85 * n)
        np.testing.assert_array_equal(np.intersect1d(tr, idx), idx[:k])  # first k in order


def test_accuracy_b_split_rejects_bad_ratio():
    with pytest.raises(ValueError, match=r"val_ratio must be in \[0, 1\)"):
        accuracy_b_split(np.zeros(4), 1.0)
