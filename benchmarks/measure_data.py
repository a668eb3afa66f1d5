"""Measures frame conversion and loader throughput at DVS128 Gesture shapes.

    python -m benchmarks.measure_data                      # 300,000 events per sample
    python -m benchmarks.measure_data --events 1000000 --train 16 --nodigits

Also times the offline digits_events conversion (all 5,000 digits, T=10) unless ``--nodigits``.

Writes synthetic samples in tonic's DVSGesture on-disk format (``user<NN>_<light>/<label>.npy``,
(N, 4) x, y, p, t in ms) under a temporary root, then times the real path: tonic's DVSGesture
class reads them, :func:`plif_jax.data.integrate_events` makes T=20 frames of 2x128x128, the
cache writes them (``num_workers`` processes), and a :class:`BatchSource` delivers batches of 16
(``[16, 20, 2, 128, 128]`` float32, 21 MB) with and without device prefetch, first as fast as
the consumer takes them, then with a consumer that spends ``--step_ms`` per batch. tonic's check for
>= 100 extracted files is lowered to 1 for this synthetic root (the one thing patched).
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

import numpy as np
from absl import flags

from plif_jax import cli

flags.DEFINE_integer("events", 300_000, "Events per synthetic sample.")
flags.DEFINE_integer("train", 64, "Number of training samples to write and convert.")
flags.DEFINE_integer("test", 16, "Number of test samples.")
flags.DEFINE_integer("num_workers", 2, "Conversion processes.")
flags.DEFINE_integer("epochs", 10, "Loader passes over the training split.")
flags.DEFINE_integer("batch_size", 16, "Loader batch size.")
flags.DEFINE_float("step_ms", 50.0, "Simulated device step per batch for the overlap check.")
flags.DEFINE_bool("digits", True, "Also time the digits_events conversion (5,000 digits).")
flags.DEFINE_string("measure_dir", None, "Where to write (default: a temporary directory).")
FLAGS = flags.FLAGS


def write_samples(root: str, folder: str, n: int, events: int, seed: int) -> None:
    """Writes ``n`` synthetic gestures: a blob moving across the 128x128 sensor for 6 s."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "DVSGesture")
    os.makedirs(os.path.join(base, folder), exist_ok=True)
    open(os.path.join(base, f"{folder}.tar.gz"), "wb").close()
    for i in range(n):
        d = os.path.join(base, folder, f"user{i // 11 + 1:02d}_fluorescent")
        os.makedirs(d, exist_ok=True)
        t = np.sort(rng.integers(0, 6000, events))  # ms, as in tonic's copy
        cx = 20 + 88 * t / 6000 + rng.normal(0, 6, events)
        cy = 64 + 30 * np.sin(t / 600) + rng.normal(0, 6, events)
        x = np.clip(np.rint(cx), 0, 127)
        y = np.clip(np.rint(cy), 0, 127)
        p = rng.integers(0, 2, events)
        np.save(os.path.join(d, f"{i % 11}.npy"), np.stack([x, y, p, t], 1).astype(np.int32))


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (load-independent)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str]) -> None:
    del argv
    import jax
    import ml_collections
    import tonic

    from plif_jax.data import get_datasets

    original = tonic.dataset.Dataset._folder_contains_at_least_n_files_of_type
    tonic.dataset.Dataset._folder_contains_at_least_n_files_of_type = (
        lambda self, n_files, file_type: original(self, 1, file_type)
    )
    work = FLAGS.measure_dir or tempfile.mkdtemp(prefix="plif_measure_")
    root, cache = os.path.join(work, "raw"), os.path.join(work, "cache")
    try:
        write_samples(root, "ibmGestureTrain", FLAGS.train, FLAGS.events, 0)
        write_samples(root, "ibmGestureTest", FLAGS.test, FLAGS.events, 1)
        config = ml_collections.ConfigDict(
            dict(
                dataset="dvsgesture",
                seed=0,
                protocol="A",
                batch_size=FLAGS.batch_size,
                eval_batch_size=FLAGS.batch_size,
                data=dict(root=root, cache_dir=cache, T=20, num_workers=FLAGS.num_workers),
            )
        )
        t0, c0 = time.perf_counter(), cpu_seconds()
        bundle = get_datasets(config)
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        n = FLAGS.train + FLAGS.test
        print(
            f"conversion: {n} samples x {FLAGS.events} events -> [20, 2, 128, 128] in {dt:.2f} s "
            f"= {n / dt:.1f} samples/s ({FLAGS.num_workers} workers, read + integrate + write; "
            f"{cpu:.1f} CPU s, load average {os.getloadavg()[0]:.1f})"
        )
        # step 0: batches as fast as they come; step > 0: the consumer spends step_ms per batch
        # (as a device step would), which prefetching overlaps with reading the next batches.
        for step_ms in (0.0, FLAGS.step_ms):
            for prefetch in (0, 2):
                bundle.train.prefetch = prefetch
                list(bundle.train.batches(epoch=0))  # warm the page cache and jax
                count, t0 = 0, time.perf_counter()
                for epoch in range(1, FLAGS.epochs + 1):
                    for batch in bundle.train.batches(epoch=epoch):
                        jax.block_until_ready(batch["x"])  # the data is there
                        time.sleep(step_ms / 1000)
                        count += 1
                dt = time.perf_counter() - t0
                print(
                    f"loader: batch {FLAGS.batch_size}, prefetch {prefetch}, consumer step "
                    f"{step_ms:.0f} ms: {count / dt:.1f} batches/s "
                    f"({count * FLAGS.batch_size / dt:.0f} samples/s, {count} batches)"
                )
        if FLAGS.digits:
            config.dataset = "digits_events"
            config.data.T = 10
            config.data.cache_dir = os.path.join(work, "digits_cache")
            t0, c0 = time.perf_counter(), cpu_seconds()
            bundle = get_datasets(config)
            dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            n = bundle.info.num_train + bundle.info.num_test
            print(
                f"digits_events: {n} digits emulated + integrated (T=10) + written in {dt:.1f} s "
                f"= {n / dt:.0f} samples/s ({FLAGS.num_workers} workers; {cpu:.1f} CPU s, "
                f"load average {os.getloadavg()[0]:.1f})"
            )
    finally:
        if FLAGS.measure_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    cli.run(main)  # a user's mistake: one "error: ..." line, exit status 2 (plif_jax/cli.py)
