"""The learned time constants: the paper's final taus and a run's tau per epoch."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping

import numpy as np

from plif_jax.analysis import paper_runs
from plif_jax.training import metrics


def paper_taus(dataset: str, protocol: str = "A") -> tuple[float, ...]:
    """Final learned tau per PLIF layer (depth order) of the paper's main run on ``dataset``.

    Read from the original repository's logs shipped in ``plif_jax/analysis/paper_logs``
    (:func:`plif_jax.analysis.paper_runs.main_run`: PLIF, tau_0 2, max pooling, the paper's T), the
    value
    after the last logged epoch.

    Raises:
      plif_jax.analysis.paper_runs.NoPaperRunError: the paper has no run on ``dataset``.
    """
    run = paper_runs.main_run(dataset, protocol)
    return tuple(float(taus[-1]) for taus in run.curves.tau.values())


# --------------------------------------------------------------------------------------------------
# Trajectories from metrics.jsonl


@dataclasses.dataclass(frozen=True)
class TauTrajectories:
    """Per-epoch tau of every layer and the learning rate, from ``metrics.jsonl``.

    Attributes:
      taus: ``{layer: (epochs, taus)}``, two float arrays of equal length, layers in the order in
        which they first appear in the file (the trainer writes them in depth order).
      lr: ``(epochs, lrs)``, the learning rate each epoch trained with (empty if never logged).
      members: a several-seed run's (``config.num_seeds``) per-member taus, ``{'m0': {layer:
        (epochs, taus)}, ...}``; then ``taus`` holds the members' mean. Empty for one seed.
    """

    taus: dict[str, tuple[np.ndarray, np.ndarray]]
    lr: tuple[np.ndarray, np.ndarray]
    members: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = dataclasses.field(
        default_factory=dict
    )

    def __getitem__(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        return self.taus[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.taus)


def tau_trajectories(workdir: str | os.PathLike) -> TauTrajectories:
    """Tau of every layer and the learning rate per epoch, read from ``<workdir>/metrics.jsonl``.

    Every record holding an ``epoch`` and keys ``tau/<layer>`` contributes one point per layer
    (``tau/<layer>/m<i>``: member ``i`` of a several-seed run; ``.../std`` is skipped); a
    record with ``lr`` gives that epoch's learning rate. When an epoch appears more than once (a
    resumed run re-logs it) the last record wins.

    Args:
      workdir: a training workdir (or the path of a ``metrics.jsonl`` file).

    Returns:
      A :class:`TauTrajectories`: ``result.taus[layer] == (epochs, taus)`` and ``result.lr``.
    """
    path = os.fspath(workdir)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: tau_trajectories reads the metrics.jsonl that "
            "plif_jax.training.run.train_and_evaluate writes into its workdir; pass that workdir."
        )
    taus: dict[str, dict[int, float]] = {}
    members: dict[str, dict[str, dict[int, float]]] = {}
    lrs: dict[int, float] = {}
    for rec in metrics.read_metrics(path):
        if "epoch" not in rec:
            continue
        epoch = int(rec["epoch"])
        for key, value in rec.items():
            if not key.startswith("tau/") or value is None:
                continue
            layer, _, member = key[len("tau/") :].partition("/")
            if not member:
                taus.setdefault(layer, {})[epoch] = float(value)
            elif member != "std":
                members.setdefault(member, {}).setdefault(layer, {})[epoch] = float(value)
        if rec.get("lr") is not None:
            lrs[epoch] = float(rec["lr"])
    if not taus:
        raise ValueError(
            f"{path} holds no 'tau/<layer>' values: was the run trained with neuron kind 'plif' "
            "(LIF layers have no learned tau)?"
        )

    def arrays(points: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        epochs = sorted(points)
        return np.asarray(epochs, np.int64), np.asarray([points[e] for e in epochs], np.float64)

    return TauTrajectories(
        taus={layer: arrays(points) for layer, points in taus.items()},
        lr=arrays(lrs),
        members={
            m: {layer: arrays(points) for layer, points in layers.items()}
            for m, layers in members.items()
        },
    )
