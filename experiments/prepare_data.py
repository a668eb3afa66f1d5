"""Preparation of the tfds image datasets (MNIST, Fashion-MNIST, CIFAR-10), once.

plif_jax reads the static datasets with ``tfds.data_source``, which needs them prepared in the
ArrayRecord format. Two ways, both writing the same tfds dataset (name, version, features, splits):

From files you already have (no network, no TensorFlow; layouts in
:mod:`plif_jax.data.local_static`: the original IDX files gzipped or not, torchvision's
``MNIST/raw`` / ``FashionMNIST/raw``, ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``, the
original repository's dataset root)::

    python -m experiments.prepare_data --dataset fashion_mnist \
        --from_dir /usr/share/datasets/fashion-mnist --data_dir ~/tensorflow_datasets
    python -m experiments.prepare_data --dataset all --from_dir ROOT   # every one found in ROOT

By download (needs TensorFlow and network)::

    pip install -e '.[prepare]'
    python -m experiments.prepare_data --dataset mnist --data_dir ~/tensorflow_datasets

Then train with ``--config.data.root=<data_dir>`` (or leave it unset for tfds's default,
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Training itself needs no TensorFlow.

The event datasets are not prepared here. Put them under one root (``config.data.root``, default
``~/event_data``) where tonic expects them; on a machine with network tonic fetches them itself,
e.g. ``python -c "import tonic; tonic.datasets.NMNIST(save_to='ROOT', train=True)"``:

- N-MNIST: ``ROOT/NMNIST/{train,test}.zip`` + extracted ``Train/<digit>/*.bin`` and
  ``Test/<digit>/*.bin``.
- CIFAR10-DVS: ``ROOT/CIFAR10DVS/CIFAR10DVS.zip`` + extracted ``<class>/*.aedat4``.
- DVS128 Gesture (tonic's pre-cut copy, 1,077 / 264 samples): ``ROOT/DVSGesture/
  ibmGesture{Train,Test}.tar.gz`` + extracted ``ibmGesture{Train,Test}/user<NN>_<light>/*.npy``.

Or, as the original repository's README lays out its dataset root (``config.data.source``:
``auto`` prefers these, ``original`` requires them; extracted once, next to the archives):

- N-MNIST: ``ROOT/NMNIST/Train.zip`` and ``Test.zip``.
- CIFAR10-DVS: ``ROOT/CIFAR10DVS/{airplane,automobile,...,truck}.zip`` (AEDAT 2.0 recordings).
- DVS128 Gesture (IBM's original archive, cut by its label files: 1,176 / 288 samples, or the
  paper run's 936 with ``--config.data.dvsgesture_train=first_78_trials``):
  ``ROOT/DVS128Gesture/DvsGesture.tar.gz``.

The first training run converts them to frames (cached under ``config.data.cache_dir``).
"""

from __future__ import annotations

import os

from absl import app, flags

from plif_jax import cli
from plif_jax.data import registry
from plif_jax.errors import MissingDataError, UserError

DATASETS = registry.TFDS

flags.DEFINE_enum("dataset", None, [*DATASETS, "all"], "tfds dataset to prepare, or all.")
flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds's own).")
flags.DEFINE_string(
    "from_dir",
    None,
    "Read the dataset from local files in this folder (IDX files, torchvision's raw folders, "
    "the CIFAR-10 python tarball or folder) instead of downloading; needs no TensorFlow.",
)
flags.mark_flags_as_required(["dataset"])
FLAGS = flags.FLAGS


def prepare(name: str, data_dir: str | None) -> int:
    """Downloads and writes ``name`` as ArrayRecord; returns the number of training examples."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    train = tfds.data_source(name, split="train", data_dir=data_dir, download=False)
    test = tfds.data_source(name, split="test", data_dir=data_dir, download=False)
    print(f"{name}: {len(train)} train / {len(test)} test examples in {builder.data_dir}")
    return len(train)


def prepare_local(names: tuple[str, ...], from_dir: str, data_dir: str | None) -> dict[str, dict]:
    """Writes each of ``names`` found under ``from_dir``; returns ``{name: {split: count}}``.

    With several names (``--dataset all``) the ones not found are listed and skipped; none found,
    or a single named one not found, is a :class:`~plif_jax.errors.MissingDataError`.
    """
    from plif_jax.data import local_static
    from plif_jax.data.static import default_tfds_dir

    data_dir = data_dir or default_tfds_dir()
    written, absent = {}, {}
    for name in names:
        try:
            local_static.find_source(name, from_dir)
        except MissingDataError as e:
            if len(names) == 1:
                raise
            absent[name] = str(e)
            continue
        counts = local_static.prepare_from_dir(name, from_dir, data_dir)
        written[name] = counts
        print(
            f"{name}: {counts['train']} train / {counts['test']} test examples from {from_dir} "
            f"in {os.path.join(data_dir, name)}"
        )
    for name, why in absent.items():
        print(f"{name}: skipped ({why})")
    if not written:
        raise MissingDataError(
            f"--from_dir {from_dir} holds none of {list(names)}: " + " | ".join(absent.values())
        )
    return written


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    data_dir = os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else None
    names = DATASETS if FLAGS.dataset == "all" else (FLAGS.dataset,)
    if FLAGS.from_dir:
        prepare_local(names, os.path.expanduser(FLAGS.from_dir), data_dir)
        return
    try:
        import tensorflow  # noqa: F401  (tfds needs it to download and prepare, not to read)
    except ImportError as e:
        raise UserError(
            "Downloading tfds datasets needs TensorFlow: pip install -e '.[prepare]', or prepare "
            "from files you have with --from_dir DIR (no TensorFlow needed)."
        ) from e
    for name in names:
        prepare(name, data_dir)


if __name__ == "__main__":
    cli.run(main)  # a user's mistake: one "error: ..." line, exit status 2 (plif_jax/cli.py)
