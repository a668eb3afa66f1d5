"""Where the train CLI's time goes: its own jitted step, bare and then with each part of the loop.

    python -m benchmarks.measure_loop --config configs/quickstart.py
    python -m benchmarks.measure_loop --config configs/fashion_mnist.py \
        --config.data.root=~/tensorflow_datasets --steps 100

Builds the run exactly as ``experiments.train`` does
(:func:`plif_jax.training.run.build_run`: the config's data, model, optimizer and compiled
steps; the CLI's default XLA flag), then times ``--steps`` training steps in each of
these settings, ``--repeats`` times each, interleaved, and prints the median samples/s:

* ``bare``: the step on one batch already on the device, dispatched back to back, one
  ``block_until_ready`` at the end (what ``benchmarks.cli`` times);
* ``+data``: each step's real batch from the loader (its prefetch thread reads and places them);
* ``+drain``: and each step's metrics read one step late (``progress.MetricsDrain``: the host
  sync that checks the loss is finite and feeds the accumulators);
* ``loop``: :meth:`plif_jax.training.epochs.Epochs.train` itself (the above, and the log windows'
  TensorBoard/``metrics.jsonl`` writes, the progress bar and the stop check) in a temporary
  workdir, as the config sets it up (``--config.steps_per_dispatch``, ``--config.data.on_device``);
* ``loop[K]`` / ``loop[Kd]`` (``--dispatch K,Kd,...``): the same loop with K steps per dispatch
  (:mod:`plif_jax.training.blocks`), ``d``: the training split on the device.

Each setting prints the median window's samples/s against bare's median, and its best window
against bare's best (load from other processes only ever slows a window down).

Every setting runs once untimed first (compiles its programs).

Also prints the process's page faults (minor, ``getrusage``) and system CPU seconds per step of
each setting: fresh large buffers from the system allocator cost page faults on every step.
``--noglibc_keep_freed`` (glibc's malloc defaults) or ``LD_PRELOAD`` set to tcmalloc show the
allocator's share (:mod:`plif_jax.runtime.allocator`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import tempfile
import time

from absl import flags
from ml_collections import config_flags

from plif_jax import cli
from plif_jax.errors import ConfigError
from plif_jax.runtime import xla_flags

config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=False)
flags.DEFINE_integer("steps", 100, "Training steps per timed window.")
flags.DEFINE_integer("repeats", 3, "Timed windows per setting (median).")
flags.DEFINE_string(
    "settings", "bare,+data,+drain,loop", "Comma list of settings (bare, +data, +drain, loop)."
)
flags.DEFINE_list(
    "dispatch",
    [],
    "Loop variants to time beside the settings: K (steps per dispatch) or Kd (and the training "
    "split on the device), e.g. 1d,4,4d.",
)
flags.DEFINE_bool(
    "glibc_keep_freed",
    True,
    "As the train CLI: glibc malloc keeps freed memory (plif_jax.runtime.allocator); "
    "--noglibc_keep_freed: glibc's defaults.",
)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

SETTINGS = ("bare", "+data", "+drain", "loop")


def _usage() -> tuple[float, int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt, r.ru_utime + r.ru_stime


def main(argv: list[str]) -> None:
    del argv
    from plif_jax.runtime import allocator

    xla_flags.set_cpu_flags(True)  # the CLI's default
    malloc = allocator.keep_freed_memory() if FLAGS.glibc_keep_freed else allocator.in_effect()
    import jax
    import numpy as np

    from plif_jax.training import run as run_lib
    from plif_jax.training import spec as spec_lib
    from plif_jax.training.progress import MetricsDrain, Progress

    settings = [s for s in FLAGS.settings.split(",") if s]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}.")
    n = int(FLAGS.steps)
    config = FLAGS.config
    config.steps_per_epoch = n  # the loop setting's epoch: n steps
    config.progress_bar = False
    spec = spec_lib.resolve(config, num_devices=int(config.num_devices) or jax.device_count())
    if spec.k != 1:
        raise ConfigError("--config.num_seeds: this measures the one-member loop; use 1.")
    tmp = tempfile.mkdtemp(prefix="measure_loop_")
    with contextlib.ExitStack() as stack:
        # The run as train_and_evaluate builds it (data, model, optimizer, compiled steps).
        run_dir = run_lib.open_workdir(spec, tmp, stack, config=config)
        run = run_lib.build_run(spec, run_dir, stack, config=config)
        loop, steps, state = run.epochs, run.steps, run.state
        if loop.steps_per_epoch < n:
            raise ConfigError(
                f"--steps {n} is more than the {loop.steps_per_epoch} batches of an epoch."
            )
        lrs = [m.lr for m in spec.members]
        lr_in, epoch_in, b = steps.lr_input(lrs), np.int32(0), spec.batch_size
        first = loop.batches(epoch=0)
        fixed = next(first)
        first.close()

        variants = _variants(loop, spec, steps)
        settings += list(variants)

        def run_setting(setting: str, epoch: int):
            nonlocal state
            progress = Progress(epoch=epoch)
            if setting == "loop" or setting in variants:  # Epochs.train itself
                state = variants.get(setting, loop).train(state, progress, lrs)
                return
            drain = MetricsDrain(
                progress, split=steps.member_metrics, epoch=epoch, batch_size=b, checkpoint_dir=tmp
            )
            batches = loop.batches(epoch) if setting != "bare" else None
            m = None
            with allocator.reusing_freed_memory():  # as Epochs.train does
                for i in range(n):
                    batch = fixed if batches is None else next(batches)
                    state, m = steps.train(state, batch, lr_in, epoch_in, np.int32(i))
                    if setting == "+drain":
                        drain.push(i, i, m)
                drain.flush()
                jax.block_until_ready((state, m))
            if batches is not None:
                batches.close()

        times, sys_s, faults, cpu = _measure(run_setting, settings, loop.stop)
    _report(spec, n, malloc, settings, times, sys_s, faults, cpu)


def _variants(loop, spec, steps) -> dict:
    """``--dispatch``'s loops: the run's :class:`~plif_jax.training.epochs.Epochs` with another
    number of steps per dispatch and/or the training split on the device."""
    import dataclasses

    from plif_jax.training import blocks as blocks_lib

    out, resident = {}, None
    for v in FLAGS.dispatch:
        k, on_device = int(v.rstrip("d")), v.endswith("d")
        if on_device and resident is None:
            resident = blocks_lib.resident_split(loop.data.train, loop.mesh)
        blocks = None
        if on_device or k > 1:
            blocks = blocks_lib.Blocks(steps, loop.mesh, resident if on_device else None)
        out[f"loop[{v}]"] = dataclasses.replace(
            loop, spec=dataclasses.replace(spec, steps_per_dispatch=k), blocks=blocks
        )
    return out


def _measure(run_setting, settings: list[str], stop) -> tuple[dict, dict, dict, dict]:
    """Each setting's ``--repeats`` windows, interleaved: seconds, system seconds, faults and
    the process's CPU seconds (user + system: hardly changed by other processes' load)."""
    print(f"load before: {os.getloadavg()}", flush=True)
    for s in settings:
        run_setting(s, 0)  # compile and warm up
    times: dict[str, list[float]] = {s: [] for s in settings}
    sys_s: dict[str, list[float]] = {s: [] for s in settings}
    faults: dict[str, list[int]] = {s: [] for s in settings}
    cpu: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(int(FLAGS.repeats)):
        for s in settings:
            s0, f0, c0 = _usage()
            t0 = time.perf_counter()
            run_setting(s, epoch=1 + r)
            times[s].append(time.perf_counter() - t0)
            s1, f1, c1 = _usage()
            sys_s[s].append(s1 - s0)
            faults[s].append(f1 - f0)
            cpu[s].append(c1 - c0)
            if stop.requested:  # Ctrl-C / SIGTERM (the run's handlers are installed)
                raise KeyboardInterrupt
    return times, sys_s, faults, cpu


def _report(spec, n: int, malloc: str, settings, times, sys_s, faults, cpu) -> None:
    b = spec.batch_size
    print(f"{spec.dataset}: {n} steps of batch {b} x {FLAGS.repeats}, {malloc}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()}")
    with_bare = settings[0] == "bare"
    bare = statistics.median(times["bare"]) if with_bare else None
    fastest_bare = min(times["bare"]) if with_bare else None
    for s in settings:
        t = statistics.median(times[s])
        # Best window against bare's best: other load on the machine only ever slows a window.
        rel = f"{bare / t:6.1%} of bare (best {fastest_bare / min(times[s]):6.1%})" if bare else ""
        print(
            f"  {s:9s} {n * b / t:8.1f} samples/s  {1e3 * t / n:7.1f} ms/step  {rel}  "
            f"sys {1e3 * statistics.median(sys_s[s]) / n:5.1f} ms/step  "
            f"CPU {1e3 * statistics.median(cpu[s]) / n:6.1f} ms/step  "
            f"minor faults {statistics.median(faults[s]) / n:8.0f}/step  "
            f"(windows: {', '.join(f'{n * b / x:.1f}' for x in times[s])})"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    cli.run(main)
