"""Static datasets: the tfds read path (mock and a real tiny ArrayRecord dataset), augmentation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from plif_jax.data import get_datasets
from plif_jax.data import static as static_lib


def config(dataset, tmp_path, protocol="A"):
    """The shared run config (configs/common.py) for ``dataset``, read from tfds's dir here."""
    cfg = common.get_config()
    cfg.update(dict(dataset=dataset, seed=0, protocol=protocol, batch_size=4, eval_batch_size=8))
    cfg.data.update(
        dict(root=str(tmp_path / "tfds"), cache_dir=str(tmp_path / "cache"), prefetch=0)
    )
    return cfg


@pytest.mark.parametrize(
    "name,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_tfds_read_path_under_mock_data(name, shape, tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        bundle = get_datasets(config(name, tmp_path))
    info = bundle.info
    assert (info.kind, info.model_name, info.sample_shape) == ("static", name, shape)
    assert (info.num_train, info.num_test, info.num_val) == (12, 12, 0)
    batch = next(bundle.train.batches(0))
    assert batch["x"].shape == (4, *shape) and batch["x"].dtype == np.uint8
    assert batch["y"].dtype == np.int32 and np.all((batch["y"] >= 0) & (batch["y"] < 10))
    pre = jax.jit(bundle.preprocess, static_argnames="train")
    out = pre(jnp.asarray(batch["x"]), train=True, rng=jax.random.key(0))
    assert out.shape == (4, *shape) and out.dtype == jnp.float32


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """A 2-split ArrayRecord dataset written by the test itself (no TensorFlow, no mock)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(7, 0), "test": self._generate_examples(3, 100)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            img = np.full((28, 28, 1), (offset + i) % 256, np.uint8)
            img[i, :, 0] = 255
            yield i, {"image": img, "label": (offset + i) % 10}


def test_tiny_array_record_dataset_read_back_exactly(tmp_path):
    builder = TinyDigits(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    images, labels = static_lib.load_tfds_split("tiny_digits:1.0.0", "train", str(tmp_path))
    assert images.shape == (7, 28, 28, 1) and images.dtype == np.uint8
    # tfds stores examples in hashed-key order; the loader keeps that index order exactly.
    direct = tfds.data_source("tiny_digits:1.0.0", split="train", data_dir=str(tmp_path))
    for j in range(7):
        np.testing.assert_array_equal(images[j], direct[j]["image"])
        i = int(images[j, 27, 27, 0])  # the example's generator index
        want = np.full((28, 28, 1), i, np.uint8)
        want[i, :, 0] = 255
        np.testing.assert_array_equal(images[j], want)
        assert labels[j] == i % 10
    assert sorted(int(v) for v in images[:, 27, 27, 0]) == list(range(7))
    test_images, test_labels = static_lib.load_tfds_split("tiny_digits", "test", str(tmp_path))
    assert sorted(test_labels.tolist()) == [0, 1, 2]
    assert sorted(int(v) for v in test_images[:, 27, 27, 0]) == [100, 101, 102]


def test_missing_data_names_the_directory_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_datasets(config("mnist", tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "tfds" / "mnist") in msg
    assert (
        f"pip install -e '.[prepare]' && python -m experiments.prepare_data --dataset mnist "
        f"--data_dir {tmp_path / 'tfds'}" in msg
    )


def test_normalisation_constants_of_the_paper():
    x = jnp.full((2, 4, 4, 3), 255, jnp.uint8)
    out = static_lib.make_preprocess("cifar10")(x, train=False)
    want = (1.0 - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2023, 0.1994, 0.2010])
    np.testing.assert_allclose(np.asarray(out[0, 0, 0]), want, rtol=1e-6)
    zeros = jnp.zeros((1, 2, 2, 1), jnp.uint8)
    mnist = static_lib.make_preprocess("mnist")(zeros, train=False)
    fmnist = static_lib.make_preprocess("fashion_mnist")(zeros, train=False)
    np.testing.assert_allclose(np.asarray(mnist), -0.1307 / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fmnist), -0.2860 / 0.3530, rtol=1e-6)


def digits_batch(b=6, size=28, channels=1):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(0, 256, (b, size, size, channels)), jnp.uint8)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_augmentation_keeps_shape_dtype_and_is_reproducible_from_its_seed(name):
    x = digits_batch(size=28 if name == "mnist" else 32, channels=1 if name == "mnist" else 3)
    pre = jax.jit(static_lib.make_preprocess(name), static_argnames="train")
    a = pre(x, train=True, rng=jax.random.key(1))
    b = pre(x, train=True, rng=jax.random.key(1))
    c = pre(x, train=True, rng=jax.random.key(2))
    plain = pre(x, train=False, rng=jax.random.key(1))
    assert a.shape == x.shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(plain))


def test_fashion_mnist_has_no_augmentation():
    x = digits_batch()
    pre = static_lib.make_preprocess("fashion_mnist")
    np.testing.assert_array_equal(
        np.asarray(pre(x, train=True, rng=jax.random.key(3))), np.asarray(pre(x, train=False))
    )


def test_affine_with_empty_ranges_is_identity():
    x = digits_batch().astype(jnp.float32)
    out = static_lib.random_affine(
        x, jax.random.key(0), degrees=0.0, translate=0.0, scale=(1.0, 1.0)
    )
    np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-4)


def test_affine_translation_is_a_whole_pixel_shift_within_15_percent():
    x = np.zeros((8, 28, 28, 1), np.float32)
    x[:, 10:18, 12:16] = 1.0
    out = np.asarray(
        static_lib.random_affine(
            jnp.asarray(x),
            jax.random.key(5),
            degrees=0.0,
            scale=(1.0, 1.0),
            interpolation="nearest",
        )
    )
    shifts = set()
    for img in out:
        ys, xs = np.nonzero(img[..., 0])
        dy, dx = ys.min() - 10, xs.min() - 12
        assert abs(dy) <= 4 and abs(dx) <= 4  # round(0.15 * 28) = 4
        np.testing.assert_array_equal(img, np.roll(x[0], (dy, dx), axis=(0, 1)))
        shifts.add((dy, dx))
    assert len(shifts) > 1


def test_affine_rotation_and_scale_stay_in_the_paper_ranges():
    # A centred bar; its second moments give angle and scale of each augmented copy.
    x = np.zeros((32, 28, 28, 1), np.float32)
    x[:, 13:15, 6:22] = 1.0
    out = np.asarray(static_lib.random_affine(jnp.asarray(x), jax.random.key(7), translate=0.0))
    yy, xx = np.mgrid[:28, :28]
    angles, masses = [], []
    for img in out[..., 0]:
        m = img.sum()
        cy, cx = (img * yy).sum() / m, (img * xx).sum() / m
        cov = np.cov(np.stack([xx.ravel() - cx, yy.ravel() - cy]), aweights=img.ravel())
        angles.append(np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])))
        masses.append(m / x[0].sum())
    angles, masses = np.abs(angles), np.array(masses)
    assert angles.max() <= 31 and angles.max() > 10
    # area scales with s^2, s in [0.85, 1.11] (bilinear resampling blurs a little)
    assert masses.min() > 0.85**2 * 0.9 and masses.max() < 1.11**2 * 1.1


def test_crop_flip_is_a_padded_crop_possibly_mirrored():
    x = np.asarray(digits_batch(b=8, size=32, channels=3))
    out = np.asarray(static_lib.random_crop_flip(jnp.asarray(x), jax.random.key(0)))
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = []
    for i in range(8):
        found = [
            (oy, ox, f)
            for oy, ox, f in itertools.product(range(9), range(9), (False, True))
            if np.array_equal(
                out[i],
                padded[i, oy : oy + 32, ox : ox + 32][:, ::-1]
                if f
                else padded[i, oy : oy + 32, ox : ox + 32],
            )
        ]
        assert found, f"image {i} is not a crop of its padded input"
        flips.append(found[0][2])
    assert any(flips) and not all(flips)


def test_bad_interpolation_lists_valid_values():
    with pytest.raises(ValueError, match=r"valid values: \['bilinear', 'nearest'\]"):
        static_lib.make_preprocess("mnist", interpolation="bicubic")


def test_prepare_data_writes_an_array_record_dataset_the_loader_reads(tmp_path):
    from experiments import prepare_data

    # TinyDigits (defined above) is registered with tfds under the name "tiny_digits".
    assert prepare_data.prepare("tiny_digits", str(tmp_path)) == 7
    images, labels = static_lib.load_tfds_split("tiny_digits", "train", str(tmp_path))
    assert images.shape == (7, 28, 28, 1) and sorted(labels.tolist()) == list(range(7))
