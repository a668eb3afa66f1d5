"""Why the loader is not built on grain: order, speed and resume against a grain pipeline.

    pip install grain==0.2.18   # not a dependency of plif_jax
    python -m benchmarks.studies.grain_loader.measure [--cache_dir DIR]

On the quick start's ``digits_events`` train split (``configs/quickstart.py``; converts and caches
the frames on the first run) it prints (a) where grain's ``MapDataset.shuffle(seed)`` order first
differs from :meth:`plif_jax.data.loader.BatchSource.batch_indices` (epochs 0 and 1); (b) one
epoch's batches/s of ``BatchSource.batches`` and of a grain pipeline over the SAME index plan
(``MapDataset.source(plan).map(read_batch).to_iter_dataset(ReadOptions)`` +
``grain.experimental.device_put``, 1 and 2 read threads), median of 3 in this process; (c)
whether that pipeline's batches equal ours and whether ``get_state()`` / ``set_state()`` resume
mid-epoch exactly. The figures and the decision are in this folder's README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache_dir", default=None, help="frame cache (default: the config's)")
    args = p.parse_args(argv)
    import grain
    import grain.experimental as grain_exp
    import jax

    from configs import quickstart
    from plif_jax import data as data_lib

    cfg = quickstart.get_config()
    if args.cache_dir:
        cfg.data.cache_dir = args.cache_dir
    train = data_lib.get_datasets(cfg).train
    n = len(train)
    print(
        f"grain {grain.__version__}, jax {jax.__version__}: {n} samples, batch "
        f"{train.batch_size}, {train.num_batches} batches, seed {train.seed}"
    )

    for epoch in (0, 1):
        ours = train.batch_indices(epoch).ravel()
        theirs = grain.MapDataset.range(n).shuffle(seed=train.seed).repeat(2)
        theirs = np.asarray([theirs[epoch * n + i] for i in range(len(ours))])
        diff = np.nonzero(theirs != ours)[0]
        print(
            f"order, epoch {epoch}: ours {ours[:3].tolist()}, grain {theirs[:3].tolist()}; "
            f"first difference at position {int(diff[0]) if len(diff) else None}, "
            f"{len(diff)} of {len(ours)} positions differ"
        )

    device = jax.devices()[0]

    def grain_batches(epoch: int, threads: int):
        plan = list(train.batch_indices(epoch))
        ds = grain.MapDataset.source(plan).map(train.read_batch)
        ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=train.prefetch)
        )
        ds = grain_exp.device_put(
            ds, device, cpu_buffer_size=train.prefetch, device_buffer_size=train.prefetch
        )
        return iter(ds)

    def rate(it) -> float:
        t0, k = time.perf_counter(), 0
        for batch in it:
            jax.block_until_ready(batch["x"])
            k += 1
        return k / (time.perf_counter() - t0)

    runs = {"plif_jax loader": [], "grain, 1 thread": [], "grain, 2 threads": []}
    for _ in range(3):
        runs["plif_jax loader"].append(rate(train.batches(0)))
        runs["grain, 1 thread"].append(rate(grain_batches(0, 1)))
        runs["grain, 2 threads"].append(rate(grain_batches(0, 2)))
    for name, r in runs.items():
        print(f"{name}: median {statistics.median(r):.0f} batches/s ({[round(x) for x in r]})")

    ahead = train.batches(0, start=100)
    ours = [np.asarray(next(ahead)["x"]) for _ in range(5)]
    it = grain_batches(0, 1)
    for _ in range(100):
        next(it)
    state = it.get_state()
    resumed = grain_batches(0, 1)
    resumed.set_state(state)
    got = [np.asarray(next(resumed)["x"]) for _ in range(5)]
    same = all(np.array_equal(a, b) for a, b in zip(ours, got, strict=True))
    print(
        f"grain state after 100 batches {state}; resumed batches equal "
        f"batches(0, start=100): {same}"
    )


if __name__ == "__main__":
    main()
