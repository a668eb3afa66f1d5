"""A training run beside the paper's run of the same setting, epoch by epoch.

::

    python -m experiments.compare --workdir runs/fashion_mnist
    python -m experiments.compare --workdir runs/quickstart --paper_run NAME   # choose the run
    python -m experiments.compare --list                                      # the paper's runs

Reads ``<workdir>/config.json`` and ``metrics.jsonl``, finds the paper's logged run of the same
setting (dataset, protocol, neuron, tau_0, pooling, T, reset; event data also channels, conv blocks,
split_by, normalisation: ``plif_jax.analysis.paper_runs.match``), prints test accuracy (and
protocol B's
validation accuracy) and tau per PLIF layer after each of the run's epochs beside the paper's,
and writes the table to ``<workdir>/compare_paper.csv`` and the overlay (accuracy and tau per layer
against epoch) to ``<workdir>/compare_paper.png``.
The paper's curves are the original repository's logs (fangwei123456/Parametric-Leaky-Integrate-
and-Fire-Spiking-Neuron, commit f644ff6, ``logs/``), shipped in ``plif_jax/analysis/paper_logs``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from absl import app, flags

from plif_jax import cli, errors
from plif_jax.analysis import paper_compare, paper_runs
from plif_jax.runtime import disk

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the CLI's flags, at run time only (experiments.train defines --workdir too)."""
    flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and metrics.jsonl).")
    flags.DEFINE_string(
        "paper_run", None, "Compare with this paper run (a name from --list) instead of the match."
    )
    flags.DEFINE_bool("list", False, "Print the names of the paper's runs and exit.")


TABLE_NAME = "compare_paper.csv"
FIGURE_NAME = "compare_paper.png"

# Config fields that change what a run learns, compared with the paper's config of the dataset
# (configs/<dataset>.py): these, and every model.*, neuron.* and optim.* field but model.name and
# model.remat_chunk (exact). Left out: run length (num_epochs: the table shows the epochs run),
# where data lives and how it is read, logging, checkpoints, devices.
_COMPARED = {
    "seed",
    "batch_size",
    "steps_per_epoch",
    "dtype",
    "data.T",
    "data.split_by",
    "data.normalization",
    "data.drop_remainder",
    "data.val_ratio",
    "data.affine_interpolation",
}
_COMPARED_PREFIXES = ("model.", "neuron.", "optim.")
_NOT_COMPARED = {"model.name", "model.remat_chunk"}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_config(workdir: str) -> dict[str, Any]:
    """The run's ``config.json`` as a nested dict (a missing or damaged file is a UserError)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise errors.MissingDataError(
            f"{path} does not exist: --workdir must be a training workdir (python -m "
            "experiments.train --config ... --workdir DIR writes config.json when it starts)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise errors.DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from e
    if not isinstance(config, dict) or "dataset" not in config:
        raise errors.DataError(
            f"{path} is not a plif_jax run's config (no 'dataset' field): --workdir must be a "
            "training workdir (python -m experiments.train --config ... --workdir DIR)"
        )
    return config


def config_differences(config: Mapping[str, Any]) -> list[str]:
    """``['model.channels 16 (paper 128)', ...]``: where a run's config leaves the paper's.

    The paper's settings are ``configs/<dataset>.py`` (this repository's paper configs; an empty
    list where there is none, e.g. outside a checkout).
    """
    try:
        module = importlib.import_module(f"configs.{config['dataset']}")
    except ImportError:
        return []
    paper = _flatten(module.get_config().to_dict())
    ours = _flatten(config)
    out = []
    for key in sorted(paper):
        compared = key in _COMPARED or key.startswith(_COMPARED_PREFIXES)
        # A field the run's config lacks was added after the run: its value then is unknown.
        if not compared or key in _NOT_COMPARED or key not in ours:
            continue
        a, b = ours[key], paper[key]
        same = (
            math.isclose(a, b)
            if isinstance(a, float | int) and isinstance(b, float | int)
            else a == b
        )
        if not same:
            out.append(f"{key} {a} (paper {b})")
    return out


def compare_workdir(
    workdir: str, paper_run: str | None = None, *, unwritten: dict[str, str] | None = None
) -> tuple[paper_compare.Comparison, paper_runs.PaperRun]:
    """Matches (or loads ``paper_run``), compares, writes the CSV and PNG into ``workdir``.

    ``unwritten``: where given, a file that a disk fault (a read-only or full disk) keeps from
    being written is recorded there (``{path: why}``) instead of raised.
    """
    config = read_config(workdir)
    ours_settings = paper_runs.settings_from_config(config)
    if paper_run:
        paper = paper_runs.load(paper_run)
    else:
        paper = paper_runs.match(ours_settings)
    ours = paper_compare.curves_from_workdir(workdir, label="ours")
    notes = []
    setting_diffs = paper_runs.differences(ours_settings, paper.settings)
    if setting_diffs:
        notes.append("not the paper run's setting: " + "; ".join(setting_diffs))
    if ours_settings.dataset == paper.settings.dataset:
        config_diffs = config_differences(config)
        if config_diffs:
            notes.append(
                f"not the paper's settings (configs/{config['dataset']}.py): "
                + "; ".join(config_diffs)
            )
    comparison = paper_compare.compare(ours, paper, notes=tuple(notes))
    title = f"{os.path.normpath(workdir)} vs paper {paper.key}"
    for name, write in (
        (TABLE_NAME, comparison.write_csv),
        (FIGURE_NAME, lambda path: paper_compare.plot_comparison(comparison, path, title=title)),
    ):
        path = os.path.join(workdir, name)
        try:
            write(path)
        except OSError as e:  # a read-only or full disk: the comparison itself still stands
            problem = disk.describe(e, path)
            if unwritten is None or problem is None:
                raise
            unwritten[path] = problem
    return comparison, paper


def _summary_lines(
    workdir: str,
    comparison: paper_compare.Comparison,
    paper: paper_runs.PaperRun,
    unwritten: dict[str, str] | None = None,
) -> list[str]:
    epochs = comparison.epochs
    cols = comparison.columns()
    span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
    best_ours = max(cols["test_accuracy_ours"])
    paper_here = [v for v in cols["test_accuracy_paper"] if not math.isnan(v)]
    lines = [
        f"ours:  {workdir} ({paper_runs.settings_from_config(read_config(workdir)).describe()}; "
        f"{len(epochs)} epoch{'' if len(epochs) == 1 else 's'} logged)",
        f"paper: {paper.key} ({paper.num_epochs} epochs logged; {paper_runs.SOURCE})",
    ]
    lines += [f"note: {n}" for n in comparison.notes]
    lines.append("")
    lines.append(comparison.format_table())
    lines.append("")
    best = f"best test accuracy over {span}: ours {100 * best_ours:.2f}%"
    if paper_here:
        best += f", paper {100 * max(paper_here):.2f}%"
    lines.append(
        f"{best} (the paper's best over all {paper.num_epochs} epochs: "
        f"{100 * paper.curves.test_accuracy.max():.2f}%)"
    )
    for label, name in (("table", TABLE_NAME), ("figure", FIGURE_NAME)):
        path = os.path.join(workdir, name)
        problem = (unwritten or {}).get(path)
        lines.append(f"{label}: {path}" if problem is None else f"{label}: not written, {problem}")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.list:
        for protocol in ("A", "B"):
            for name in paper_runs.list_runs(protocol):
                print(f"{protocol}/{name}")
        return
    if not FLAGS.workdir:
        raise errors.ConfigError(
            "--workdir is required: the training workdir to compare (or --list)"
        )
    workdir = os.path.expanduser(FLAGS.workdir)
    unwritten: dict[str, str] = {}
    comparison, paper = compare_workdir(workdir, FLAGS.paper_run, unwritten=unwritten)
    print("\n".join(_summary_lines(workdir, comparison, paper, unwritten)))
    if unwritten:  # the comparison is printed above; its files are optional
        print(
            f"warning: {len(unwritten)} file(s) not written to {workdir} (see above); copy the "
            "workdir to a writable place to keep them.",
            file=sys.stderr,
        )


if __name__ == "__main__":
    define_flags()
    cli.run(main)  # a UserError (bad workdir, no paper run...): one "error: ..." line, exit 2
