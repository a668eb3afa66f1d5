"""A plif_jax run beside the paper's: its curves, an epoch-by-epoch comparison and the plot.

:func:`curves_from_workdir` reads a workdir's ``metrics.jsonl`` into the same
:class:`plif_jax.analysis.paper_runs.Curves` as the paper's logs; :func:`compare` puts the two side
by side
(:class:`Comparison`) and :func:`plot_comparison` draws them. ``python -m experiments.compare
--workdir runs/X`` and ``experiments/explore_tau.ipynb`` use it.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any

import numpy as np

from plif_jax import errors
from plif_jax.analysis.paper_runs import Curves, PaperRun
from plif_jax.training import metrics


def curves_from_workdir(workdir: str | os.PathLike, label: str | None = None) -> Curves:
    """Per-epoch curves of a plif_jax run from ``<workdir>/metrics.jsonl``.

    Reads the per-epoch records the trainer writes (``test/accuracy``, ``val/accuracy``,
    ``tau/<layer>``) with :func:`plif_jax.training.metrics.read_metrics`. An epoch logged twice (a
    resumed run) keeps its last record.

    Raises:
      errors.MissingDataError: no ``metrics.jsonl`` in ``workdir``.
      errors.DataError: the file is damaged or holds no finished epoch yet.
    """
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        raise errors.MissingDataError(
            f"{path} does not exist: point --workdir at a training workdir "
            "(python -m experiments.train ... --workdir DIR writes it)"
        )
    records = metrics.read_metrics(path)  # a damaged line is a DataError naming it
    per_epoch = {int(r["epoch"]): r for r in records if "test/accuracy" in r and "epoch" in r}
    if not per_epoch:
        raise errors.DataError(
            f"{path} holds no finished epoch yet (no 'test/accuracy' record): wait for the "
            "first epoch's evaluation and retry"
        )
    epochs = sorted(per_epoch)
    rows = [per_epoch[e] for e in epochs]
    layers = [k[len("tau/") :] for k in rows[-1] if k.startswith("tau/")]

    def column(key: str) -> np.ndarray:
        return np.asarray([r.get(key, math.nan) for r in rows], np.float64)

    has_val = any("val/accuracy" in r for r in rows)
    return Curves(
        label=label or os.path.basename(os.path.normpath(os.fspath(workdir))),
        epochs=np.asarray(epochs, np.int64),
        test_accuracy=column("test/accuracy"),
        val_accuracy=column("val/accuracy") if has_val else None,
        tau={layer: column(f"tau/{layer}") for layer in layers},
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Our run and the paper's, epoch by epoch over our epochs.

    Attributes:
      ours, paper: the two runs' curves.
      epochs: our epochs (paper values are NaN past the paper's last epoch).
      layers: the layers whose tau is compared (empty when the two runs do not have the same
        number of PLIF layers, e.g. a LIF run).
      notes: what the reader must know (why tau is not compared, settings that differ).
    """

    ours: Curves
    paper: Curves
    epochs: np.ndarray
    layers: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def _paper_at(self, values: np.ndarray | None) -> np.ndarray:
        index = {int(e): i for i, e in enumerate(self.paper.epochs)}
        if values is None:
            return np.full(self.epochs.shape, math.nan)
        return np.asarray([values[index[e]] if e in index else math.nan for e in self.epochs])

    def columns(self) -> dict[str, np.ndarray]:
        """The table as ``{column: values}`` (one value per epoch; NaN where not logged)."""
        ours_test = self.ours.test_accuracy
        paper_test = self._paper_at(self.paper.test_accuracy)
        out = {
            "epoch": self.epochs,
            "test_accuracy_ours": ours_test,
            "test_accuracy_paper": paper_test,
            "test_accuracy_diff": ours_test - paper_test,
        }
        if self.ours.val_accuracy is not None or self.paper.val_accuracy is not None:
            out["val_accuracy_ours"] = (
                self.ours.val_accuracy
                if self.ours.val_accuracy is not None
                else np.full(self.epochs.shape, math.nan)
            )
            out["val_accuracy_paper"] = self._paper_at(self.paper.val_accuracy)
        for layer in self.layers:
            out[f"tau_{layer}_ours"] = self.ours.tau[layer]
            out[f"tau_{layer}_paper"] = self._paper_at(self.paper.tau[layer])
        return out

    def format_table(self) -> str:
        """A fixed-width text table: accuracies in %, differences in points, tau ours / paper."""
        cols = self.columns()
        head = ["epoch", "test ours", "paper", "diff (pt)"]
        if "val_accuracy_ours" in cols:
            head += ["val ours", "paper"]
        head += [f"tau {layer} ours / paper" for layer in self.layers]

        def pct(x: float) -> str:
            return "-" if math.isnan(x) else f"{100 * x:.2f}"

        def tau(x: float) -> str:
            return "-" if math.isnan(x) else f"{x:.3f}"

        lines = []
        for i, epoch in enumerate(cols["epoch"]):
            row = [
                str(int(epoch)),
                pct(cols["test_accuracy_ours"][i]),
                pct(cols["test_accuracy_paper"][i]),
                "-" if math.isnan(d := cols["test_accuracy_diff"][i]) else f"{100 * d:+.2f}",
            ]
            if "val_accuracy_ours" in cols:
                row += [pct(cols["val_accuracy_ours"][i]), pct(cols["val_accuracy_paper"][i])]
            row += [
                f"{tau(cols[f'tau_{layer}_ours'][i])} / {tau(cols[f'tau_{layer}_paper'][i])}"
                for layer in self.layers
            ]
            lines.append(row)
        widths = [max(len(r[j]) for r in [head, *lines]) for j in range(len(head))]
        return "\n".join(
            "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True))
            for r in [head, *lines]
        )

    def write_csv(self, path: str | os.PathLike) -> None:
        """Writes :meth:`columns` as CSV (empty cell where not logged)."""
        cols = self.columns()
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(cols)
            for i in range(len(self.epochs)):
                writer.writerow(
                    [
                        int(v[i])
                        if key == "epoch"
                        else ("" if math.isnan(v[i]) else repr(float(v[i])))
                        for key, v in cols.items()
                    ]
                )


def compare(ours: Curves, paper: Curves | PaperRun, notes: tuple[str, ...] = ()) -> Comparison:
    """Our curves beside the paper's, over our epochs.

    Tau is compared layer by layer (``sn0`` with the paper's ``w0``...) when both runs have the
    same number of PLIF layers; otherwise a note says why not.
    """
    paper_curves = paper.curves if isinstance(paper, PaperRun) else paper
    notes = tuple(notes)
    if (
        ours.tau
        and len(ours.tau) == len(paper_curves.tau)
        and set(ours.tau) == set(paper_curves.tau)
    ):
        layers = tuple(ours.tau)
    else:
        layers = ()
        if not ours.tau and not paper_curves.tau:
            notes += ("tau not compared: neither run learned tau (LIF)",)
        elif not ours.tau or not paper_curves.tau:
            lif = "ours" if not ours.tau else "the paper's"
            notes += (f"tau not compared: {lif} run has no learned tau (LIF)",)
        else:
            notes += (
                f"tau not compared: ours has {len(ours.tau)} PLIF layers, the paper's run "
                f"{len(paper_curves.tau)} (another network depth)",
            )
    return Comparison(ours=ours, paper=paper_curves, epochs=ours.epochs, layers=layers, notes=notes)


_TAU_TICKS = (1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 7, 10, 15, 20, 30, 50, 100)


def plot_comparison(
    comparison: Comparison,
    path: str | os.PathLike | None = None,
    *,
    figure: Any = None,
    title: str | None = None,
):
    """Draws test (and val) accuracy and tau per layer against epoch, ours beside the paper's.

    Ours: solid lines with markers; the paper's: dashed, over the same epochs. Tau is on a log
    axis (the paper's hidden FC layer grows to 10-55 while the conv layers stay near 1.5-2).

    Args:
      comparison: from :func:`compare`.
      path: where to save the figure as PNG (None: do not save).
      figure: a ``matplotlib.figure.Figure`` to draw into (None: a new one, no pyplot state).
      title: the figure's title.

    Returns:
      The figure.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, NullFormatter

    fig = figure if figure is not None else Figure(figsize=(11, 4.2))
    ax_acc, ax_tau = fig.subplots(1, 2)
    cols = comparison.columns()
    x = comparison.epochs
    marker = dict(marker="o", ms=4)
    ax_acc.plot(x, 100 * cols["test_accuracy_ours"], c="C0", label="test, ours", **marker)
    ax_acc.plot(
        x, 100 * cols["test_accuracy_paper"], c="C0", ls="--", label="test, paper", **marker
    )
    if "val_accuracy_ours" in cols:
        ax_acc.plot(x, 100 * cols["val_accuracy_ours"], c="C1", label="val, ours", **marker)
        ax_acc.plot(
            x, 100 * cols["val_accuracy_paper"], c="C1", ls="--", label="val, paper", **marker
        )
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy after each epoch")
    ax_acc.legend(fontsize=8)
    for ax in (ax_acc, ax_tau):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if comparison.layers:
        for j, layer in enumerate(comparison.layers):
            c = f"C{j % 10}"
            ax_tau.plot(x, cols[f"tau_{layer}_ours"], c=c, label=f"{layer} ours", **marker)
            ax_tau.plot(
                x, cols[f"tau_{layer}_paper"], c=c, ls="--", label=f"{layer} paper", **marker
            )
        ax_tau.set_yscale("log")
        # Plain tick labels at round values (matplotlib's log axis would write 2x10^0).
        taus = np.concatenate(
            [cols[f"tau_{layer}_{who}"] for layer in comparison.layers for who in ("ours", "paper")]
        )
        low, top = np.nanmin(taus), np.nanmax(taus)
        ticks = [t for t in _TAU_TICKS if low / 1.3 <= t <= top * 1.3] or [low, top]
        ax_tau.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax_tau.yaxis.set_minor_formatter(NullFormatter())
        ax_tau.set_ylabel("tau (time steps)")
        ax_tau.legend(fontsize=7, ncol=2)
    else:
        ax_tau.text(
            0.5,
            0.5,
            "\n".join(comparison.notes) or "no tau",
            ha="center",
            va="center",
            transform=ax_tau.transAxes,
            fontsize=8,
            wrap=True,
        )
    ax_tau.set_xlabel("epoch")
    ax_tau.set_title("tau per PLIF layer (solid: ours, dashed: paper)")
    fig.suptitle(title or f"{comparison.ours.label} vs {comparison.paper.label}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
