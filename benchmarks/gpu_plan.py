r"""The GPU / TPU plan: every paper net's compiled steps for accelerators this machine lacks.

Compiles the train and eval steps (:mod:`plif_jax.training.steps`, the program a run
executes) of the paper's nets at their config's T and batch for compile-only devices
(:mod:`benchmarks.gpu_targets`), and records per entry: compile success, XLA's memory plan
(temporaries, arguments, outputs), kernel launches, bytes and FLOPs per step
(:mod:`benchmarks.hlo_census`), XLA warnings (e.g. involuntary rematerialisation on several
devices), and the bound those give on step time and on the paper's 1024-epoch run. Nothing
runs on an accelerator: every time is a PROJECTION (a lower bound under stated peak rates).

Needs the CUDA plugin (and libtpu for TPU targets), which are not part of the project's
install; the separate venv recipe is in BENCHMARKS.md ("GPU and TPU plan")::

    JAX_PLATFORMS=cpu nice -n 5 /work/venv-gpu/bin/python -m benchmarks.gpu_plan \
        --targets h200,a100-80gb,rtx4090-24gb --out benchmarks/results/gpu_plan.json

Results are cached in ``--out`` (keyed by entry and by a fingerprint of the source tree):
a rerun compiles only what is missing. ``--markdown`` writes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import pathlib
import re
import sys
import tempfile
import time
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax: the CUDA plugin must not start

from benchmarks import gpu_plan_report as report  # noqa: E402
from benchmarks import gpu_targets, hlo_census  # noqa: E402

NETS = ("mnist", "fashion_mnist", "cifar10", "nmnist", "cifar10dvs", "dvsgesture")
STATIC = ("mnist", "fashion_mnist", "cifar10")
# (train samples, test samples): the splits the projected 1024-epoch run iterates over.
DATASET_SIZES = {
    "mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000),
    "nmnist": (60000, 10000), "cifar10dvs": (9000, 1000), "dvsgesture": (1176, 288),
}  # fmt: skip
ROOT = pathlib.Path(__file__).resolve().parent.parent
WARNING_PATTERNS = ("rematerializ", "all-gather", "Involuntary")


def remat_chunk(T: int) -> int:
    """The remat entries' ``model.remat_chunk``: the largest divisor of T that is <= T/4."""
    return max(d for d in range(1, T // 4 + 1) if T % d == 0)


def load_config(net: str, dtype: str, remat: bool, batch: int | None, precision: str | None):
    """The run config of ``configs/<net>.py`` with the entry's settings."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    config = importlib.import_module(f"configs.{net}").get_config()
    config.dtype = dtype
    if remat:
        config.model.remat_chunk = remat_chunk(int(config.data.T))
    if batch:
        config.batch_size = batch
    if precision is not None and "precision" in config:
        config.precision = precision
    return config


def _input(net: str, T: int, batch: int, tiny: bool):
    """``(info, preprocess, x shape, x dtype)`` of a net's batches as the data delivers them."""
    import numpy as np

    from plif_jax import data as data_lib

    if net in STATIC:
        from plif_jax.data import static as static_lib

        size, ch = (32, 3) if net == "cifar10" else (28, 1)
        info = types.SimpleNamespace(
            model_name=net, sample_shape=(size, size, ch), input_layout="NHWC", num_classes=10
        )
        return info, static_lib.make_preprocess(net), (batch, size, size, ch), np.uint8
    size = 34 if net == "nmnist" else 128
    if tiny:  # the smallest input the net's pooling stack keeps >= 1 pixel wide
        size = 16 if net == "nmnist" else 32
    classes = 11 if net == "dvsgesture" else 10
    info = types.SimpleNamespace(
        model_name=net, sample_shape=(T, 2, size, size), input_layout="TBCHW", num_classes=classes
    )
    preprocess = getattr(data_lib, "events_preprocess", None)
    if preprocess is None:
        preprocess = importlib.import_module("plif_jax.data.datasets").events_preprocess
    return info, preprocess, (batch, T, 2, size, size), np.float32


def build(entry: dict, mesh):
    """``(jitted step, argument specs)`` of one entry on ``mesh`` (compile-only devices)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from plif_jax import models
    from plif_jax.training import member_steps, steps

    config = load_config(
        entry["net"], entry["dtype"], entry["remat"], entry["batch"], entry.get("precision")
    )
    T = int(config.data.T)
    batch = int(config.batch_size if entry["kind"] == "train" else config.eval_batch_size)
    entry["batch"] = batch
    info, preprocess, x_shape, x_dtype = _input(entry["net"], T, batch, entry.get("tiny", False))
    name, options = models.spec_from_config(config, info)
    if entry.get("tiny"):
        options.update(channels=4, hidden=16 if name in STATIC else None)
    model = models.build_model(name, options, seed=0)
    tx = steps.make_optimizer(config)
    k = int(entry["k"])
    common = dict(tx=tx, preprocess=preprocess, num_classes=info.num_classes, time_steps=T)
    state = steps.init_train_state(model, config)
    if k == 1:
        jitted = steps.jit_steps(model, seed=0, mesh=mesh, **common)
    else:
        jitted = member_steps.jit_member_steps(
            model, k=k, data_seeds=list(range(k)), per_member_data=False, mesh=mesh,
            layout=entry["layout"], **common,
        )  # fmt: skip
        state = member_steps.stack([state] * k)
    rep = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec("data"))
    spec = lambda a, s=rep: jax.ShapeDtypeStruct(jnp.shape(a), a.dtype, sharding=s)
    state = jax.tree.map(spec, state)
    batch_spec = {
        "x": jax.ShapeDtypeStruct(x_shape, x_dtype, sharding=rows),
        "y": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=rows),
    }
    if entry["kind"] == "eval":
        return jitted.eval, (state.params, state.rest, batch_spec)
    lr = jax.ShapeDtypeStruct((k,) if k > 1 else (), jnp.float32, sharding=rep)
    i32 = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    return jitted.train, (state, batch_spec, lr, i32, i32)


@contextlib.contextmanager
def _captured_stderr():
    """Collects what C++ (XLA) writes on file descriptor 2 while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        lines: list[str] = []
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def compile_entry(entry: dict, target: gpu_targets.Target | None, hlo_dir: str | None) -> dict:
    """Compiles one entry; returns its record (``ok`` False with the error on failure)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    n = int(entry["devices"])
    devs = gpu_targets.devices(target, n) if target is not None else jax.devices()[:n]
    mesh = Mesh(np.asarray(devs), ("data",))
    record = dict(entry)
    t0 = time.time()
    try:
        fn, args = build(record, mesh)
        with _captured_stderr() as warnings:
            compiled = fn.trace(*args).lower().compile()
    except Exception as e:  # a failed compile is a result of the plan (recorded, not raised)
        msg = " ".join(str(e).split())
        record.update(ok=False, error=f"{type(e).__name__}: {msg[:400]}")
        return record
    text = compiled.as_text()
    if hlo_dir:
        pathlib.Path(hlo_dir).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(hlo_dir) / f"{entry_key(entry).replace('|', '_')}.hlo").write_text(text)
    mem = compiled.memory_analysis()
    memory = {
        "temp": int(mem.temp_size_in_bytes),
        "argument": int(mem.argument_size_in_bytes),
        "output": int(mem.output_size_in_bytes),
        "alias": int(mem.alias_size_in_bytes),
        "code": int(getattr(mem, "generated_code_size_in_bytes", 0)),
    }
    memory["peak"] = memory["temp"] + memory["argument"] + memory["output"] - memory["alias"]
    kept = [w.strip()[:300] for w in warnings if any(p in w for p in WARNING_PATTERNS)]
    record.update(
        ok=True, compile_s=round(time.time() - t0, 1), memory=memory,
        census=hlo_census.census(text).as_dict(), warnings=kept[:5], warning_count=len(kept),
    )  # fmt: skip
    if re.search(r"involuntary full rematerialization", " ".join(warnings), re.I):
        record["involuntary_remat"] = True
    return record


def entry_key(e: dict) -> str:
    remat = "remat" if e["remat"] else "plain"
    prec = f"|{e['precision']}" if e.get("precision") else ""
    tiny = "|tiny" if e.get("tiny") else ""
    return (
        f"{e['target']}|{e['net']}|{e['kind']}|{e['dtype']}|{remat}|k{e['k']}|{e['layout']}"
        f"|dev{e['devices']}{prec}{tiny}"
    )


def fingerprint() -> str:
    """A hash of the program's sources (plif_jax, configs) and of jax's version."""
    import jax

    h = hashlib.sha1(jax.__version__.encode())
    for path in sorted([*ROOT.glob("plif_jax/**/*.py"), *ROOT.glob("configs/*.py")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def plan_entries(args: argparse.Namespace) -> list[dict]:
    out = []
    for target in args.targets:
        for net in args.nets:
            for kind in args.kinds:
                for dtype in args.dtypes:
                    for remat in args.remat:
                        for k, layout in args.members:
                            if k > 1 and (kind != "train" or remat == "on"):
                                continue  # members: train steps without remat only
                            out.append(dict(
                                target=target, net=net, kind=kind, dtype=dtype,
                                remat=remat == "on", k=k, layout=layout,
                                devices=args.devices, batch=args.batch,
                                precision=args.precision, tiny=args.tiny,
                            ))  # fmt: skip
    return out


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--targets", default="h200", help=f"{list(gpu_targets.TARGETS)} or cpu")
    p.add_argument("--nets", default=",".join(NETS), help="comma list of the paper nets")
    p.add_argument("--kinds", default="train,eval", help="train and/or eval")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--remat", default="off,on", help="off and/or on")
    p.add_argument("--members", default="1,2:loop,2:vmap", help="k[:layout] list")
    p.add_argument("--devices", type=int, default=1, help="compile-only devices (batch sharded)")
    p.add_argument("--batch", type=int, default=None, help="train batch (default: the config's)")
    p.add_argument("--precision", default=None, help="config.precision")
    p.add_argument("--tiny", action="store_true", help="4-channel nets: a smoke run, not figures")
    p.add_argument("--out", default="benchmarks/results/gpu_plan.json", help="JSON cache")
    p.add_argument("--markdown", default=None, help="also write the table here")
    p.add_argument("--hlo-dir", default=None, help="keep each compiled program's HLO text here")
    p.add_argument("--redo", action="store_true", help="recompile entries already in --out")
    p.add_argument("--limit", type=int, default=0, help="compile at most this many entries")
    args = p.parse_args(argv)
    args.targets, args.nets = _csv(args.targets), _csv(args.nets)
    args.kinds, args.dtypes, args.remat = _csv(args.kinds), _csv(args.dtypes), _csv(args.remat)
    for name, got, allowed in (
        ("--targets", args.targets, (*gpu_targets.TARGETS, "cpu")), ("--nets", args.nets, NETS),
        ("--kinds", args.kinds, ("train", "eval")), ("--remat", args.remat, ("off", "on")),
        ("--dtypes", args.dtypes, ("float32", "bfloat16")),
    ):  # fmt: skip
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            p.error(f"{name}: {','.join(bad) or 'empty'} not among {', '.join(allowed)}")
    members = []
    for item in _csv(args.members):
        k, _, layout = item.partition(":")
        if not k.isdigit() or int(k) < 1 or layout not in ("", "loop", "vmap"):
            p.error(f"--members: {item!r} is not k or k:loop / k:vmap")
        members.append((int(k), layout or "loop"))
    args.members = members
    if args.devices < 1:
        p.error("--devices must be >= 1")
    return args


def load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"entries": {}}


def save(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    results = load(args.out)
    fp = fingerprint()
    results["meta"] = report.run_meta(jax.__version__, fp, " ".join(sys.argv))
    done = 0
    for entry in plan_entries(args):
        key = entry_key(entry)
        old = results["entries"].get(key)
        if old is not None and old.get("fingerprint") == fp and not args.redo:
            continue
        if args.limit and done >= args.limit:
            break
        target = None if entry["target"] == "cpu" else gpu_targets.TARGETS[entry["target"]]
        record = compile_entry(entry, target, args.hlo_dir)
        record.update(fingerprint=fp, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if record["ok"]:
            record["bound"] = report.bound(record, target)
        results["entries"][key] = record
        save(args.out, results)  # after every compile: an interrupted run keeps its work
        done += 1
        print(report.one_line(key, record), flush=True)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(report.markdown(results, gpu_targets.TARGETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
