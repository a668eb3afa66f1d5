"""Trains one of the paper's networks: ``python -m experiments.train --config configs/<name>.py``.

Flags: ``--config`` (a file in ``configs/``; override any field with ``--config.a.b=value``) and
``--workdir`` (default ``runs/<config file stem>``). Running the same command again on a workdir
that holds a checkpoint resumes from it. SIGTERM / Ctrl-C checkpoint at the next step and exit.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

from plif_jax import cli
from plif_jax.runtime import allocator
from plif_jax.runtime.xla_flags import YNN_FLAG as _YNN_FLAG
from plif_jax.runtime.xla_flags import cpu_only_process, set_cpu_flags
from plif_jax.training import config as config_lib

config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file stem>).")
flags.DEFINE_bool(
    "xla_cpu_ynn",
    True,
    "On CPU (a process with no accelerator backend: JAX_PLATFORMS=cpu, or none installed), let "
    "XLA run dots, convolutions and reductions through its YNNPACK fusions "
    f"({_YNN_FLAG}): conv weight gradients 2-3.5x faster on x86 (BENCHMARKS.md). Results "
    "differ from XLA's default kernels by float rounding only. Ignored when XLA_FLAGS already sets "
    "it; --noxla_cpu_ynn keeps XLA's default kernels.",
)
flags.DEFINE_bool(
    "glibc_keep_freed",
    True,
    "With glibc's malloc, the training steps reuse their freed buffers instead of mapping them "
    "afresh each step (one arena; no mmap and no trimming while steps run; "
    "plif_jax.runtime.allocator): "
    "the quick start's step 1.45x faster on 2 cores (BENCHMARKS.md). --noglibc_keep_freed keeps "
    "glibc's defaults. Ignored for a preloaded malloc and in a process that may use an "
    "accelerator.",
)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


class _QuietLibraries(std_logging.Filter):
    """Keeps Orbax's per-save INFO chatter out of the run log (warnings still pass)."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_logger().addFilter(_QuietLibraries())
    # Both are XLA:CPU settings: a process that may run on an accelerator gets neither.
    ynn = set_cpu_flags(FLAGS.xla_cpu_ynn)
    if FLAGS.glibc_keep_freed and cpu_only_process():
        allocator.keep_freed_memory()  # before JAX makes its threads (plif_jax.runtime.allocator)
    # A config mistake is reported before JAX loads (pure Python: an unknown dataset exits in
    # 0.35 s instead of 4.4 s, `time python -m experiments.train ...`, 2026-12-03).
    # train_and_evaluate checks again, with the device count, for callers of the library.
    config_lib.validate(FLAGS.config)
    from plif_jax.training import run as train

    config_file = config_flags.get_config_filename(FLAGS["config"])
    stem = os.path.splitext(os.path.basename(config_file.split(":")[0]))[0]
    workdir = FLAGS.workdir or os.path.join("runs", stem)
    logging.info("XLA_FLAGS=%r (%s)", os.environ.get("XLA_FLAGS", ""), ynn)
    logging.info("Config %s, workdir %s", config_file, workdir)
    # Checks the config, joins a multi-host cluster (config.distributed), then trains; the
    # run's JAX version, devices, XLA_FLAGS and malloc are logged (and saved) as its run info.
    summary = train.train_and_evaluate(FLAGS.config, workdir)
    print(train.format_summary(summary))


if __name__ == "__main__":
    cli.run(main)  # a user's mistake: one "error: ..." line, exit status 2 (plif_jax/cli.py)
