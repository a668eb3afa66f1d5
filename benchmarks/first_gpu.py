r"""The first run on a real GPU: what the plan projected, measured.

One command on a machine with a GPU (and jax[cuda12] installed)::

    python -m benchmarks.first_gpu --out first_gpu.json

1. Every paper net's train step (:mod:`plif_jax.training.steps`, the program a run executes) in
   float32 and bfloat16 at the paper's T and batch, on SYNTHETIC inputs (random images, Poisson
   event frames): compile time, median step time over ``--repeats`` steps (warm-up excluded,
   ``block_until_ready``), samples/s and the device's peak memory. Each (net, dtype) runs in its
   own process, so that peaks do not accumulate and an out-of-memory is one failed row.
2. ``--cli-steps`` (default 300) real training steps of DVS128 Gesture through
   ``plif_jax.training.run.train_and_evaluate`` (the train CLI's loop: loader, prefetch,
   checkpoints, evaluation) on a SYNTHETIC event dataset in tonic's layout (random events; real
   recordings cannot be downloaded here), and the 1024-epoch time this step rate projects.
3. Beside each: the plan's projection for ``--plan-target`` from ``--plan`` (the JSON of
   :mod:`benchmarks.gpu_plan`), when it has the entry.

Nothing here has run on a GPU yet (none was lent to the project). On CPU, ``--platform cpu
--tiny`` runs every part at toy size (tests/repo/test_first_gpu.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import gpu_plan

DVS_TRAIN, DVS_TEST = gpu_plan.DATASET_SIZES["dvsgesture"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--platform", default="cuda", choices=("cuda", "rocm", "tpu", "cpu"))
    p.add_argument("--nets", default=",".join(gpu_plan.NETS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per net (median)")
    p.add_argument("--cli-steps", type=int, default=300, help="DVS128 Gesture CLI steps (0: skip)")
    p.add_argument("--plan", default="benchmarks/results/gpu_plan.json")
    p.add_argument("--plan-target", default="h200", help="the plan's target to compare with")
    p.add_argument("--tiny", action="store_true", help="toy sizes (a smoke run, not figures)")
    p.add_argument("--out", default="first_gpu.json")
    p.add_argument("--one", nargs=2, metavar=("NET", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.nets, args.dtypes = gpu_plan._csv(args.nets), gpu_plan._csv(args.dtypes)
    bad = [n for n in args.nets if n not in gpu_plan.NETS]
    bad += [d for d in args.dtypes if d not in ("float32", "bfloat16")]
    if bad or args.repeats < 1 or args.cli_steps < 0:
        p.error(f"unknown nets/dtypes {bad} or a negative count")
    return args


def _synthetic_batch(shape, dtype, batch: int, rng):
    import numpy as np

    if dtype == np.uint8:  # static images
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:  # event frames: sparse counts
        x = rng.poisson(0.05, shape).astype(np.float32)
    return {
        "x": x,
        "y": rng.integers(0, 10, (batch,)).astype(np.int32),
        "mask": np.ones((batch,), np.float32),
    }


def time_one(net: str, dtype: str, repeats: int, tiny: bool) -> dict:
    """One net's train step on the default device: compile, median step, peak memory."""
    import jax
    import numpy as np

    from plif_jax import models
    from plif_jax.runtime import parallel
    from plif_jax.training import steps

    config = gpu_plan.load_config(net, dtype, False, None, None)
    T, batch = int(config.data.T), int(config.batch_size)
    info, preprocess, shape, x_dtype = gpu_plan._input(net, T, batch, tiny)
    name, options = models.spec_from_config(config, info)
    if tiny:
        options.update(channels=4, hidden=16 if name in gpu_plan.STATIC else None)
    model = models.build_model(name, options, seed=0)
    mesh = parallel.create_mesh(1)
    jitted = steps.jit_steps(
        model, tx=steps.make_optimizer(config), preprocess=preprocess, seed=0,
        num_classes=info.num_classes, time_steps=T, mesh=mesh,
    )  # fmt: skip
    state = parallel.put_replicated(steps.init_train_state(model, config), mesh)
    data = steps.to_device(_synthetic_batch(shape, x_dtype, batch, np.random.default_rng(0)), mesh)
    lr, i32 = np.float32(1e-3), np.int32(0)
    t0 = time.perf_counter()
    compiled = jitted.train.lower(state, data, lr, i32, i32).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, data, lr, i32, i32)  # warm-up
    jax.block_until_ready((state, m))
    times = []
    for step in range(repeats):
        t0 = time.perf_counter()
        state, m = compiled(state, data, lr, i32, np.int32(step + 1))
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    step_s = float(np.median(times))
    return {
        "net": net, "dtype": dtype, "batch": batch, "T": T, "compile_s": compile_s,
        "step_s": step_s, "samples_per_s": batch / step_s,
        "peak_bytes": stats.get("peak_bytes_in_use"), "device": str(jax.devices()[0]),
        "finite": bool(m["finite"]),
    }  # fmt: skip


def _run_isolated(args, net: str, dtype: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.first_gpu", "--one", net, dtype,
           "--repeats", str(args.repeats), "--platform", args.platform]  # fmt: skip
    cmd += ["--tiny"] if args.tiny else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(args))
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-2:])[:300]
        return {"net": net, "dtype": dtype, "ok": False, "error": tail}
    return {"ok": True, **json.loads(done.stdout.strip().splitlines()[-1])}


def _env(args) -> dict:
    return dict(os.environ, JAX_PLATFORMS=args.platform)


def write_synthetic_dvsgesture(root: str, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random events in tonic's DVS128 Gesture layout (``user<NN>_<lighting>/<label>.npy``,
    x, y, p, t in ms), at least 100 files per split (tonic's completeness check)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = os.path.join(root, "DVSGesture")
    for folder, n in (("ibmGestureTrain", n_train), ("ibmGestureTest", n_test)):
        os.makedirs(os.path.join(base, folder), exist_ok=True)
        with open(os.path.join(base, f"{folder}.tar.gz"), "wb") as f:
            f.write(b"synthetic")  # tonic checks that the archive exists, not its content
        for i in range(max(n, 100)):
            user, label = divmod(i, 11)
            d = os.path.join(base, folder, f"user{user + 1:02d}_synthetic")
            os.makedirs(d, exist_ok=True)
            count = int(rng.integers(4000, 6000))
            t = np.sort(rng.uniform(0, 6000, count))
            xy = rng.integers(0, 128, (count, 2))
            events = np.column_stack([xy, rng.integers(0, 2, count), t]).astype(np.float64)
            np.save(os.path.join(d, f"{label}.npy"), events)


def cli_run(args, workdir: str) -> dict:
    """``--cli-steps`` steps of DVS128 Gesture through train_and_evaluate (synthetic events)."""
    import math

    from plif_jax.training import run

    root = os.path.join(workdir, "raw")
    n_train = 110 if args.tiny else 800
    write_synthetic_dvsgesture(root, n_train, 110)
    config = gpu_plan.load_config("dvsgesture", "float32", False, None, None)
    per_epoch = max(n_train, 100) // int(config.batch_size)
    config.data.root, config.data.source = root, "tonic"
    config.data.cache_dir = os.path.join(workdir, "cache")
    config.num_epochs = math.ceil(args.cli_steps / per_epoch)
    config.steps_per_epoch = min(per_epoch, args.cli_steps)
    config.progress_bar = False
    if args.tiny:
        config.model.channels = 4
    t0 = time.time()
    summary = run.train_and_evaluate(config, os.path.join(workdir, "run"))
    step_s = int(config.batch_size) / summary["train_samples_per_sec"]
    steps_1024 = 1024 * (DVS_TRAIN // int(config.batch_size))
    return {
        "steps": config.num_epochs * config.steps_per_epoch, "wall_s": time.time() - t0,
        "train_samples_per_s": summary["train_samples_per_sec"], "step_s": step_s,
        "projected_1024_epochs_train_s": steps_1024 * step_s,
        "data": "SYNTHETIC random events in tonic's layout", "status": summary.get("status"),
    }  # fmt: skip


def plan_row(path: str, target: str, net: str, dtype: str) -> dict | None:
    """The plan's projection for a train step (None when the plan lacks it)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        entries = json.load(f).get("entries", {})
    r = entries.get(f"{target}|{net}|train|{dtype}|plain|k1|loop|dev1")
    if not r or not r.get("ok") or not r.get("bound"):
        return None
    steps_1024 = 1024 * (gpu_plan.DATASET_SIZES[net][0] // int(r["batch"]))
    return {"step_bound_s": r["bound"]["step_s"], "peak_bytes": r["memory"]["peak"],
            "projected_1024_epochs_train_s": steps_1024 * r["bound"]["step_s"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["JAX_PLATFORMS"] = args.platform
    if args.one:
        print(json.dumps(time_one(args.one[0], args.one[1], args.repeats, args.tiny)))
        return 0
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "platform": args.platform,
           "command": " ".join(sys.argv), "tiny": args.tiny, "steps": []}  # fmt: skip
    for net in args.nets:
        for dtype in args.dtypes:
            row = _run_isolated(args, net, dtype)
            row["plan"] = plan_row(args.plan, args.plan_target, net, dtype)
            out["steps"].append(row)
            print(json.dumps(row), flush=True)
    if args.cli_steps:
        with tempfile.TemporaryDirectory() as workdir:
            out["cli"] = cli_run(args, workdir)
        out["cli"]["plan"] = plan_row(args.plan, args.plan_target, "dvsgesture", "float32")
        print(json.dumps(out["cli"]), flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
