"""Static image datasets (MNIST, Fashion-MNIST, CIFAR-10) and their on-device preprocessing.

Images are read from tensorflow-datasets' ArrayRecord files with ``tfds.data_source`` (no
TensorFlow at read time; pillow decodes) and delivered as raw uint8 NHWC. Augmentation and
normalisation run on the device inside the jitted step (:func:`make_preprocess`), as the paper's
torchvision transforms did on the host (``get_transforms`` in the original repository's
``codes/models.py``):

- MNIST (and ``digits_static``): ``RandomAffine(degrees=30, translate=(0.15, 0.15),
  scale=(0.85, 1.11))`` with zero fill, then ``Normalize(0.1307, 0.3081)``. The parameters are
  drawn as torchvision draws them (angle and scale uniform, translation a uniform draw in
  ``±0.15 * size`` rounded to whole pixels). torchvision's default interpolation is NEAREST; here
  the default is BILINEAR (``config.data.affine_interpolation='bilinear'``), which resamples
  smoothly instead of copying the nearest pixel, so edges are softer and intensities in between
  appear. Set ``'nearest'`` to follow torchvision's interpolation (the sampling grid then matches
  torchvision's up to rounding at exact pixel midpoints).
- CIFAR-10: ``RandomCrop(32, padding=4)`` (zero padding) and ``RandomHorizontalFlip()``, then
  ``Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))``.
- Fashion-MNIST: no augmentation, ``Normalize(0.2860, 0.3530)``.

Test images are only normalised.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from plif_jax.errors import ConfigError, MissingDataError

# (mean, std) per channel, after scaling to [0, 1] (the original repository's codes/models.py).
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
AUGMENTATION = {"mnist": "affine", "fashion_mnist": None, "cifar10": "crop_flip"}
IMAGE_SHAPE = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
INTERPOLATIONS = ("bilinear", "nearest")

PREPARE_COMMAND = (
    "python -m experiments.prepare_data --dataset {name} --from_dir DIR --data_dir {data_dir} "
    "(from files you have, e.g. the IDX files or the CIFAR-10 python tarball; no network), or "
    "pip install -e '.[prepare]' && python -m experiments.prepare_data --dataset {name} "
    "--data_dir {data_dir} (download; needs TensorFlow and network)"
)


def default_tfds_dir() -> str:
    """tfds's own default data directory (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    from tensorflow_datasets.core import constants

    return os.environ.get("TFDS_DATA_DIR") or os.fspath(constants.DATA_DIR)


def load_tfds_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole tfds split into memory through ``tfds.data_source`` (no TensorFlow).

    Args:
      name: tfds dataset name (optionally ``name:version``).
      split: tfds split, e.g. ``'train'``.
      data_dir: tfds data directory; None uses tfds's default.

    Returns:
      ``(images [N, H, W, C] uint8, labels [N] int32)`` in the split's index order.

    Raises:
      MissingDataError: the ArrayRecord copy is missing; the message names the directory and
        the preparation command.
    """
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(data_dir) if data_dir else default_tfds_dir()
    try:
        src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises assorted errors for missing / TFRecord-only data
        base = name.split(":")[0]
        raise MissingDataError(
            f"No ArrayRecord copy of tfds dataset {name!r} (split {split!r}) under "
            f"{os.path.join(data_dir, base)} (missing, or prepared in the TFRecord format). "
            f"Prepare it once: {PREPARE_COMMAND.format(name=base, data_dir=data_dir)}"
        ) from e
    n = len(src)
    if n == 0:
        raise MissingDataError(f"tfds dataset {name!r} split {split!r} in {data_dir} is empty.")
    first = src[0]
    images = np.empty((n, *np.shape(first["image"])), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int32)
    for start, examples in _read_chunks(src, n):
        for j, ex in enumerate(examples):
            images[start + j] = ex["image"]
            labels[start + j] = ex["label"]
    return images, labels


def _read_chunks(src, n: int, chunk: int = 1024):
    """Yields ``(start, examples)``; read in batches (faster than one example at a time)."""
    batched = True
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        if batched:
            try:
                yield start, src.__getitems__(keys)
                continue
            except TypeError:
                # tfds.testing.mock_data's source cannot read batches (its _getitems signature
                # differs); read one example at a time there.
                batched = False
        yield start, [src[k] for k in keys]


def normalize(x: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """uint8 (or [0, 255] float) NHWC -> ``(x / 255 - mean) / std`` float32."""
    x = x.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.partial(jax.jit, static_argnames=("degrees", "translate", "scale", "interpolation"))
def random_affine(
    x_BHWC: jax.Array,
    rng: jax.Array,
    *,
    degrees: float = 30.0,
    translate: float = 0.15,
    scale: tuple[float, float] = (0.85, 1.11),
    interpolation: str = "bilinear",
) -> jax.Array:
    """torchvision-style ``RandomAffine`` per image, zero fill; float32 in, float32 out."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Unknown affine interpolation {interpolation!r}; valid values: {list(INTERPOLATIONS)}."
        )
    order = 1 if interpolation == "bilinear" else 0
    _, h, w, c = x_BHWC.shape

    def one(img_HWC: jax.Array, key: jax.Array) -> jax.Array:
        k_angle, k_tx, k_ty, k_scale = jax.random.split(key, 4)
        angle = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-degrees, maxval=degrees))
        tx = jnp.round(jax.random.uniform(k_tx, (), minval=-translate * w, maxval=translate * w))
        ty = jnp.round(jax.random.uniform(k_ty, (), minval=-translate * h, maxval=translate * h))
        s = jax.random.uniform(k_scale, (), minval=scale[0], maxval=scale[1])
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        yy, xx = jnp.meshgrid(
            jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
        )
        # Inverse map: output pixel -> source pixel (undo translation, rotation, scale).
        u, v = xx - cx - tx, yy - cy - ty
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        src_x = (cos * u + sin * v) / s + cx
        src_y = (-sin * u + cos * v) / s + cy
        chans = [
            jax.scipy.ndimage.map_coordinates(
                img_HWC[..., ch], [src_y, src_x], order=order, mode="constant", cval=0.0
            )
            for ch in range(c)
        ]
        return jnp.stack(chans, axis=-1)

    keys = jax.random.split(rng, x_BHWC.shape[0])
    return jax.vmap(one)(x_BHWC, keys)


@functools.partial(jax.jit, static_argnames=("padding",))
def random_crop_flip(x_BHWC: jax.Array, rng: jax.Array, padding: int = 4) -> jax.Array:
    """``RandomCrop(size, padding)`` with zero padding, then ``RandomHorizontalFlip(0.5)``."""
    b, h, w, c = x_BHWC.shape
    padded = jnp.pad(x_BHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k_y, k_x, k_flip = jax.random.split(rng, 3)
    oy = jax.random.randint(k_y, (b,), 0, 2 * padding + 1)
    ox = jax.random.randint(k_x, (b,), 0, 2 * padding + 1)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))

    def one(img, y0, x0, f):
        crop = jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, c))
        return jnp.where(f, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, oy, ox, flip)


def make_preprocess(name: str, *, interpolation: str = "bilinear") -> Callable[..., jax.Array]:
    """The jittable ``preprocess(x, *, train, rng)`` of a static dataset's network.

    Args:
      name: ``'mnist'``, ``'fashion_mnist'`` or ``'cifar10'`` (the normalisation and augmentation
        to use; ``digits_static`` uses ``'mnist'``).
      interpolation: MNIST affine resampling, ``'bilinear'`` or ``'nearest'``.

    Returns:
      ``preprocess(x [B, H, W, C] uint8, *, train: bool, rng: jax.Array | None) -> [B, H, W, C]
      float32``: augments (train only, from ``rng``) and normalises.
    """
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"Unknown affine interpolation {interpolation!r}; valid values: {list(INTERPOLATIONS)}."
        )
    mean, std = NORMALIZATION[name]
    aug = AUGMENTATION[name]

    def preprocess(x: jax.Array, *, train: bool, rng: jax.Array | None = None) -> jax.Array:
        if train and aug is not None:
            if rng is None:
                raise ValueError("preprocess(train=True) augments and needs a jax rng key.")
            xf = x.astype(jnp.float32)
            if aug == "affine":
                xf = random_affine(xf, rng, interpolation=interpolation)
            else:
                xf = random_crop_flip(xf, rng)
            return normalize(xf, mean, std)
        return normalize(x, mean, std)

    return preprocess
