"""The paper's own training curves: read them, find the paper's run of a setting, compare a run.

The authors' per-epoch TensorBoard scalars of every logged run (the original repository
fangwei123456/Parametric-Leaky-Integrate-and-Fire-Spiking-Neuron, commit f644ff6, ``logs/``) ship
as CSV in ``plif_jax/analysis/paper_logs/`` (its README.md describes the files). This module

* lists and loads them (:func:`list_runs`, :func:`load`): per epoch the test accuracy, protocol B's
  validation accuracy, and ``w`` and ``tau = 1 + exp(-w)`` of every PLIF layer, named ``sn0``,
  ``sn1``, ... like plif_jax's spiking layers (the logs' ``w0..wN``: conv layers, then the FC
  layers, in depth order, which is the order of ``models.*.spiking_layers()``);
* parses run names into settings (:func:`parse_name`) and finds the paper's run of a plif_jax
  config's setting (:func:`settings_from_config`, :func:`match`, :func:`main_run`);
* holds the per-epoch :class:`Curves` that :mod:`plif_jax.analysis.paper_compare` puts beside a
run's.

``python -m experiments.compare --workdir runs/X`` and ``experiments/explore_tau.ipynb`` use it.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import io
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from plif_jax import errors
from plif_jax.data import registry

SOURCE = "fangwei123456/Parametric-Leaky-Integrate-and-Fire-Spiking-Neuron@f644ff6, logs/"
"""Where the shipped curves come from (the original repository's TensorBoard logs)."""

PAPER_DATASETS: dict[str, str] = {n: registry.get(n).paper_name for n in registry.PAPER}
"""plif_jax dataset name -> the dataset name in the paper's run names."""

EVENT_DATASETS = tuple(n for n in registry.PAPER if not registry.get(n).is_static)
# The offline datasets feed a paper network but were never trained on by the paper.
_OFFLINE_NETWORK = {
    n: row.network for n, row in registry.DATASETS.items() if n not in registry.PAPER
}

# The paper's main setting per dataset (PLIF, tau_0 2, max pooling, detached reset; event data:
# 128 channels, split_by number, no normalisation): T and the number of conv blocks. N-MNIST's
# protocol-B run used T = 20 (the original repository's README table).
_MAIN_T = {n: registry.get(n).default_T for n in registry.PAPER}
_MAIN_T_B = {"nmnist": 20}
_MAIN_N = {"nmnist": 2, "cifar10dvs": 4, "dvsgesture": 5}

_NAME = re.compile(
    r"^(?:val_(?P<val>[0-9.]+)_)?(?P<dataset>[A-Za-z0-9]+)_init_tau_(?P<tau>[0-9.]+)"
    r"_use_plif_(?P<plif>True|False)_use_max_pool_(?P<max>True|False)_T_(?P<T>\d+)"
    r"(?:_c_(?P<c>\d+)_n_(?P<n>\d+)_split_by_(?P<split>number|time)"
    r"_normalization_(?P<norm>[A-Za-z0-9]+))?_detach_reset_(?P<detach>True|False)$"
)
_SUFFIX = ".epochs.csv"


class NoPaperRunError(errors.UserError, LookupError):
    """The paper has no run of the asked setting (or no run of the given name)."""


_LIST_HINT = (
    "compare with another paper run by name with --paper_run NAME (python -m experiments.compare "
    "--list prints the names)"
)


# --------------------------------------------------------------------------------------------------
# Settings and run names


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The settings a paper run name encodes (and that :func:`match` compares).

    Attributes:
      dataset: plif_jax dataset name (``'fashion_mnist'``, ...).
      protocol: ``'A'`` or ``'B'``.
      neuron: ``'plif'`` or ``'lif'``.
      init_tau: PLIF's tau_0, LIF's fixed tau.
      pooling: ``'max'`` or ``'avg'``.
      T: time steps.
      detach_reset: whether the reset is detached from the graph.
      channels: conv channels (event datasets only; None for the static ones, whose names do not
        carry it).
      number_layer: conv blocks (event datasets only).
      split_by: event binning, ``'number'`` or ``'time'`` (event datasets only).
      normalization: frame normalisation as the run name spells it, ``'None'`` for raw counts
        (event datasets only).
      val_ratio: protocol B's held-out fraction per class (None under A).
    """

    dataset: str
    protocol: str
    neuron: str
    init_tau: float
    pooling: str
    T: int
    detach_reset: bool = True
    channels: int | None = None
    number_layer: int | None = None
    split_by: str | None = None
    normalization: str | None = None
    val_ratio: float | None = None

    def describe(self) -> str:
        """One line, e.g. ``fashion_mnist, protocol A, PLIF, tau_0 2, max pooling, T 8``."""
        parts = [
            self.dataset,
            f"protocol {self.protocol}",
            self.neuron.upper(),
            f"tau_0 {self.init_tau:g}",
            f"{self.pooling} pooling",
            f"T {self.T}",
        ]
        if self.channels is not None:
            parts.append(f"c {self.channels}, n {self.number_layer}")
        if self.split_by is not None:
            parts.append(f"split_by {self.split_by}, normalization {self.normalization}")
        if not self.detach_reset:
            parts.append("reset not detached")
        return ", ".join(parts)


def differences(ours: RunSettings, paper: RunSettings) -> list[str]:
    """``['T 4 (paper 8)', ...]``: the fields in which two settings differ."""
    out = []
    for field in dataclasses.fields(RunSettings):
        a, b = getattr(ours, field.name), getattr(paper, field.name)
        if a != b:
            out.append(f"{field.name} {a} (paper {b})")
    return out


def parse_name(name: str) -> RunSettings:
    """Settings of a paper run from its name (the original log directory name).

    Args:
      name: e.g.
        ``'FashionMNIST_init_tau_2.0_use_plif_True_use_max_pool_True_T_8_detach_reset_True'``,
        or protocol B's ``'val_0.15_...'``; an ``'A/'`` / ``'B/'`` prefix is allowed.

    Raises:
      ValueError: the name is not of that form or names another dataset.
    """
    base = name.split("/")[-1]
    m = _NAME.match(base)
    inverse = {v: k for k, v in PAPER_DATASETS.items()}
    if m is None or m["dataset"] not in inverse:
        raise ValueError(f"{name!r} is not a paper run name (e.g. {_example_name()!r})")
    events = m["c"] is not None
    return RunSettings(
        dataset=inverse[m["dataset"]],
        protocol="B" if m["val"] else "A",
        neuron="plif" if m["plif"] == "True" else "lif",
        init_tau=float(m["tau"]),
        pooling="max" if m["max"] == "True" else "avg",
        T=int(m["T"]),
        detach_reset=m["detach"] == "True",
        channels=int(m["c"]) if events else None,
        number_layer=int(m["n"]) if events else None,
        split_by=m["split"] if events else None,
        normalization=m["norm"] if events else None,
        val_ratio=float(m["val"]) if m["val"] else None,
    )


def _example_name() -> str:
    return "FashionMNIST_init_tau_2.0_use_plif_True_use_max_pool_True_T_8_detach_reset_True"


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = value[part]
    return value


def settings_from_config(config: Mapping[str, Any] | Any) -> RunSettings:
    """The :class:`RunSettings` of a plif_jax run config.

    Args:
      config: an ``ml_collections.ConfigDict`` or the nested dict of a workdir's ``config.json``.
        For the event networks (``nmnist``, ``cifar10dvs``, ``dvsgesture`` and ``digits_events``)
        channels, conv blocks, ``split_by`` and normalisation belong to the setting, as in the
        paper's run names; the static nets' names carry no channel count.
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    dataset = cfg["dataset"]
    network = _get(cfg, "model.name") or _OFFLINE_NETWORK.get(dataset, dataset)
    events = network in EVENT_DATASETS
    protocol = cfg["protocol"]
    normalization = _get(cfg, "data.normalization")
    return RunSettings(
        dataset=dataset,
        protocol=protocol,
        neuron=_get(cfg, "neuron.kind"),
        init_tau=float(_get(cfg, "neuron.init_tau")),
        pooling=_get(cfg, "model.pooling"),
        T=int(_get(cfg, "data.T")),
        detach_reset=bool(_get(cfg, "neuron.detach_reset")),
        channels=int(_get(cfg, "model.channels")) if events else None,
        number_layer=int(_get(cfg, "model.number_layer")) if events else None,
        split_by=_get(cfg, "data.split_by") if events else None,
        # The run names spell "no normalisation" as None; the config holds Python None.
        normalization=("None" if normalization is None else str(normalization)) if events else None,
        val_ratio=float(_get(cfg, "data.val_ratio")) if protocol == "B" else None,
    )


# --------------------------------------------------------------------------------------------------
# Reading the shipped logs


@dataclasses.dataclass(frozen=True)
class Curves:
    """Per-epoch curves of one run (the paper's or ours).

    Attributes:
      label: what to call the run in tables and legends.
      epochs: int array, ``0`` = after the first epoch, increasing.
      test_accuracy: float array aligned with ``epochs``.
      val_accuracy: protocol B's validation accuracy, aligned with ``epochs``; None under A.
      tau: ``{layer: taus}`` aligned with ``epochs``, layers ``sn0, sn1, ...`` in depth order;
        empty for LIF runs (no learned tau).
    """

    label: str
    epochs: np.ndarray
    test_accuracy: np.ndarray
    val_accuracy: np.ndarray | None
    tau: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PaperRun:
    """One logged run of the paper.

    Attributes:
      name: the run's name (original log directory name).
      settings: the settings its name encodes.
      curves: its per-epoch curves, labelled ``'paper'``.
      w: ``{layer: w}`` per epoch (``tau = 1 + exp(-w)``), as logged.
    """

    name: str
    settings: RunSettings
    curves: Curves
    w: dict[str, np.ndarray]

    @property
    def key(self) -> str:
        """``'A/<name>'`` or ``'B/<name>'``: the file's place in
        ``plif_jax/analysis/paper_logs``."""
        return f"{self.settings.protocol}/{self.name}"

    @property
    def num_epochs(self) -> int:
        return int(self.curves.epochs.size)


def _logs_dir():
    return importlib.resources.files("plif_jax.analysis") / "paper_logs"


def list_runs(protocol: str | None = None) -> list[str]:
    """Names of the shipped paper runs (protocol A, then B; each sorted), or of one protocol."""
    names = []
    for sub in ("A", "B"):
        if protocol not in (None, sub):
            continue
        folder = _logs_dir() / sub
        names += sorted(
            p.name[: -len(_SUFFIX)] for p in folder.iterdir() if p.name.endswith(_SUFFIX)
        )
    return names


def load(name: str) -> PaperRun:
    """Loads one paper run by name (an ``'A/'`` / ``'B/'`` prefix is allowed).

    Raises:
      NoPaperRunError: no run of that name ships (the message suggests the nearest names).
    """
    import difflib

    base = name.strip().split("/")[-1].removesuffix(_SUFFIX)
    runs = list_runs()
    if base not in runs:
        near = difflib.get_close_matches(base, runs, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise NoPaperRunError(f"no paper run named {name!r}: {hint}{_LIST_HINT}")
    settings = parse_name(base)
    text = (_logs_dir() / settings.protocol / f"{base}{_SUFFIX}").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    columns = rows[0].keys() if rows else ()

    def column(key: str) -> np.ndarray:
        return np.asarray([float(r[key]) for r in rows], np.float64)

    layers = sorted((k[1:] for k in columns if re.fullmatch(r"w\d+", k)), key=int)
    w = {f"sn{i}": column(f"w{i}") for i in layers}
    tau = {f"sn{i}": column(f"tau{i}") for i in layers}
    curves = Curves(
        label="paper",
        epochs=column("epoch").astype(np.int64),
        test_accuracy=column("test_accuracy"),
        val_accuracy=column("val_accuracy") if "val_accuracy" in columns else None,
        tau=tau,
    )
    return PaperRun(name=base, settings=settings, curves=curves, w=w)


def match(config_or_settings: Mapping[str, Any] | RunSettings | Any) -> PaperRun:
    """The paper's run of the same setting as a plif_jax config.

    Same dataset, protocol (and protocol B's split ratio), neuron, tau_0, pooling, T and reset;
    for the event datasets also channels, conv blocks, ``split_by`` and normalisation.

    Args:
      config_or_settings: a config (see :func:`settings_from_config`) or :class:`RunSettings`.

    Raises:
      NoPaperRunError: the dataset is not one of the paper's (``digits_events``,
        ``digits_static``), or the paper never ran that setting; the message names the nearest
        paper run and how it differs.
    """
    if isinstance(config_or_settings, RunSettings):
        settings = config_or_settings
    else:
        settings = settings_from_config(config_or_settings)
    if settings.dataset not in PAPER_DATASETS:
        network = _OFFLINE_NETWORK.get(settings.dataset)
        feeds = f" (it feeds the paper's {network} network)" if network else ""
        raise NoPaperRunError(
            f"the paper has no run on {settings.dataset}{feeds}, only on "
            f"{', '.join(PAPER_DATASETS)}: {_LIST_HINT}"
        )
    candidates = {name: parse_name(name) for name in list_runs(settings.protocol)}
    same = [name for name, s in candidates.items() if s == settings]
    if same:
        return load(same[0])
    nearest = min(
        (name for name, s in candidates.items() if s.dataset == settings.dataset),
        key=lambda name: len(differences(settings, candidates[name])),
    )
    raise NoPaperRunError(
        f"the paper has no run of this setting ({settings.describe()}); the nearest, {nearest}, "
        f"differs in {'; '.join(differences(settings, candidates[nearest]))}: {_LIST_HINT}"
    )


def main_run(dataset: str, protocol: str = "A") -> PaperRun:
    """The paper's main run of a dataset: PLIF, tau_0 2, max pooling, the paper's T (and depth).

    Args:
      dataset: plif_jax dataset name (one of :data:`PAPER_DATASETS`).
      protocol: ``'A'`` or ``'B'``.
    """
    if dataset not in PAPER_DATASETS:
        raise NoPaperRunError(f"the paper has no run on {dataset}: {_LIST_HINT}")
    events = dataset in EVENT_DATASETS
    T = _MAIN_T_B.get(dataset, _MAIN_T[dataset]) if protocol == "B" else _MAIN_T[dataset]
    return match(
        RunSettings(
            dataset=dataset,
            protocol=protocol,
            neuron="plif",
            init_tau=2.0,
            pooling="max",
            T=T,
            channels=128 if events else None,
            number_layer=_MAIN_N[dataset] if events else None,
            split_by="number" if events else None,
            normalization="None" if events else None,
            val_ratio=0.15 if protocol == "B" else None,
        )
    )
