"""One-off preparation of the tfds image datasets (MNIST, Fashion-MNIST, CIFAR-10).

plif_jax reads the static datasets with ``tfds.data_source``, which needs them prepared in the
ArrayRecord format. Preparing needs TensorFlow and network, once::

    pip install -e '.[prepare]'
    python -m experiments.prepare_data --dataset mnist --data_dir ~/tensorflow_datasets
    python -m experiments.prepare_data --dataset all            # all three, tfds's default dir

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

The first training run converts them to frames (cached under ``config.data.cache_dir``).
"""

from __future__ import annotations

import os

from absl import app, flags

DATASETS = ("mnist", "fashion_mnist", "cifar10")

flags.DEFINE_enum("dataset", None, [*DATASETS, "all"], "tfds dataset to prepare, or all.")
flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds's own).")
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        import tensorflow  # noqa: F401  (tfds needs it to prepare, not to read)
    except ImportError as e:
        raise SystemExit(
            "Preparing tfds datasets needs TensorFlow: pip install -e '.[prepare]'"
        ) from e
    data_dir = os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else None
    names = DATASETS if FLAGS.dataset == "all" else (FLAGS.dataset,)
    for name in names:
        prepare(name, data_dir)


if __name__ == "__main__":
    app.run(main)
