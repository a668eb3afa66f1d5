"""Integration of event streams into frames, as the paper's 2020 SpikingJelly code did.

Reference: ``spikingjelly/datasets/utils.py`` (``integrate_events_to_frames`` and
``normalize_frame``) at ``fangwei123456/spikingjelly@73f94ab`` (2020-09-30). Events are a
tonic structured array with fields ``x``, ``y``, ``t``, ``p``; frames are ``[T, 2, H, W]``
float32 indexed ``[t, p, y, x]`` with ``p == 0`` in channel 0 and every other polarity in
channel 1.
"""

from __future__ import annotations

import numpy as np

from plif_jax.errors import ConfigError

# Event-to-frame choices (``config.data.split_by`` / ``config.data.normalization``).
SPLIT_BY = ("number", "time")
NORMALIZATIONS = (None, "frequency", "max", "norm", "sum")

# SpikingJelly 2020 guards every division by this epsilon.
_EPS = 1e-5


def check_frame_settings(T: int, split_by: str, normalization: str | None) -> None:
    """Raises ``ConfigError`` (a ``ValueError``) naming the valid values for a bad setting."""
    if isinstance(T, bool) or not isinstance(T, int | np.integer) or T <= 0:
        raise ConfigError(f"T (number of frames) must be a positive integer, got {T!r}.")
    if split_by not in SPLIT_BY:
        raise ConfigError(f"Unknown split_by {split_by!r}; valid values: {list(SPLIT_BY)}.")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"Unknown normalization {normalization!r}; valid values: {list(NORMALIZATIONS)}."
        )


def frame_boundaries(
    t: np.ndarray, T: int, split_by: str, drop_remainder: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(j_l, j_r)``: frame ``j`` holds events ``j_l[j] <= i < j_r[j]`` (event order)."""
    n = int(t.shape[0])
    if split_by == "number":
        d = n // T
        j_l = np.arange(T, dtype=np.int64) * d
        j_r = j_l + d
        if not drop_remainder:
            j_r[-1] = n  # the paper's last frame absorbs the N mod T remainder
        return j_l, j_r
    if n == 0:
        zeros = np.zeros(T, dtype=np.int64)
        return zeros, zeros.copy()
    rel = t.astype(np.int64) - np.int64(t[0])
    dt = int(rel[-1]) // T
    edges = np.searchsorted(rel, np.arange(T + 1, dtype=np.int64) * dt, side="left")
    j_l, j_r = edges[:-1].astype(np.int64), edges[1:].astype(np.int64)
    if not drop_remainder:
        j_r[-1] = n  # the last window extends to the last event
    return j_l, j_r


def integrate_events(
    events: np.ndarray,
    sensor_size: tuple[int, int, int],
    T: int,
    *,
    split_by: str = "number",
    normalization: str | None = None,
    drop_remainder: bool = False,
) -> np.ndarray:
    """Integrates an event stream into ``T`` frames of per-pixel event counts.

    ``split_by='number'`` (the paper): with ``N`` events and ``d = N // T``, frame ``j < T-1``
    sums events ``[j*d, (j+1)*d)`` in event order, and the LAST frame sums ``[(T-1)*d, N)``, so it
    absorbs the ``N mod T`` remainder. ``drop_remainder=True`` instead ends the last frame at
    ``T*d`` and drops the remainder, which is exactly ``tonic.transforms.ToFrame(sensor_size,
    n_event_bins=T)`` (as float32 instead of int16).

    ``split_by='time'``: with ``t0`` the first timestamp and ``dt = (t_last - t0) // T`` (integer
    division), frame ``j`` sums the events with ``j*dt <= t - t0 < (j+1)*dt`` and the last frame
    runs to the last event (with ``drop_remainder=True`` it stops at ``T*dt``). Timestamps must be
    non-decreasing, as in every event file.

    Normalisation, per frame ``j`` and, except ``'frequency'``, per polarity channel ``p``
    (SpikingJelly 2020 ``integrate_events_to_frames`` + ``normalize_frame``):

    - ``None`` (the paper): raw event counts.
    - ``'frequency'``: counts divided by the frame's duration in timestamp units (µs). For
      ``'time'`` the duration is ``dt``, and ``dt + (t_last - t0) mod T`` for the last frame. For
      ``'number'`` it is ``t[j_r] - t[j_l]`` (the first timestamp of the next frame minus the
      first of this one); SpikingJelly indexed past the end for the last frame, here the last
      frame uses ``t[N-1] - t[j_l]``. A duration below 1 is replaced by 1 (one µs tick).
    - ``'max'``: ``F / max(max(F[j, p]), 1e-5)``.
    - ``'norm'``: ``(F - mean(F[j, p])) / sqrt(max(var(F[j, p]), 1e-5))`` (population variance).
    - ``'sum'``: ``F / max(sum(F[j, p]), 1e-5)``.

    Empty input or fewer events than ``T``: ``'number'`` gives ``d = 0``, so every frame but the
    last is empty and the last holds all events; an empty stream gives all-zero frames (then
    normalised as above: zeros stay zeros). For ``'time'``, an empty window is an all-zero frame,
    and a stream shorter than ``T`` timestamp units (``dt = 0``; SpikingJelly asserted against
    it) puts every event in the last frame.

    Args:
      events: tonic structured array with fields ``x``, ``y``, ``t``, ``p``, in event order.
      sensor_size: tonic's ``(W, H, P)``; only ``W`` and ``H`` are used (two channels always).
      T: number of frames.
      split_by: ``'number'`` or ``'time'``.
      normalization: ``None``, ``'frequency'``, ``'max'``, ``'norm'`` or ``'sum'``.
      drop_remainder: drop the events after ``T`` equal slices (tonic ``ToFrame``).

    Returns:
      ``[T, 2, H, W]`` float32 frames.

    Raises:
      ValueError: unknown setting, missing fields, or an event outside the sensor.
    """
    check_frame_settings(T, split_by, normalization)
    names = events.dtype.names or ()
    missing = [f for f in ("x", "y", "t", "p") if f not in names]
    if missing:
        raise ValueError(
            f"events must be a structured array with fields x, y, t, p (tonic's format); "
            f"missing {missing}, got fields {list(names)}."
        )
    width, height = int(sensor_size[0]), int(sensor_size[1])
    x = np.asarray(events["x"], dtype=np.int64)
    y = np.asarray(events["y"], dtype=np.int64)
    p = (np.asarray(events["p"]) != 0).astype(np.int64)
    t = np.asarray(events["t"])
    if x.size and (x.min() < 0 or x.max() >= width or y.min() < 0 or y.max() >= height):
        raise ValueError(
            f"event coordinates outside the sensor {width}x{height}: x in "
            f"[{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}]; check sensor_size (W, H, P)."
        )

    j_l, j_r = frame_boundaries(t, T, split_by, drop_remainder)
    # Frame index per event in one pass: events outside every [j_l, j_r) get index T (dropped).
    frame_of = np.full(x.shape[0], T, dtype=np.int64)
    for j in range(T):
        frame_of[j_l[j] : j_r[j]] = j
    keep = frame_of < T
    plane = height * width
    flat = ((frame_of[keep] * 2 + p[keep]) * plane) + y[keep] * width + x[keep]
    counts = np.bincount(flat, minlength=T * 2 * plane).astype(np.float64)
    frames = counts.reshape(T, 2, height, width)

    if normalization == "frequency":
        durations = _frame_durations(t, j_l, j_r, T, split_by, drop_remainder)
        frames /= durations[:, None, None, None]
    elif normalization == "max":
        frames /= np.maximum(frames.max(axis=(2, 3), keepdims=True), _EPS)
    elif normalization == "norm":
        mean = frames.mean(axis=(2, 3), keepdims=True)
        var = frames.var(axis=(2, 3), keepdims=True)
        frames = (frames - mean) / np.sqrt(np.maximum(var, _EPS))
    elif normalization == "sum":
        frames /= np.maximum(frames.sum(axis=(2, 3), keepdims=True), _EPS)
    return frames.astype(np.float32)


def _frame_durations(
    t: np.ndarray,
    j_l: np.ndarray,
    j_r: np.ndarray,
    T: int,
    split_by: str,
    drop_remainder: bool,
) -> np.ndarray:
    """Per-frame duration in timestamp units for ``normalization='frequency'``."""
    n = int(t.shape[0])
    if n == 0:
        return np.ones(T, dtype=np.float64)
    t = t.astype(np.int64)
    if split_by == "time":
        span = int(t[-1] - t[0])
        dur = np.full(T, span // T, dtype=np.float64)
        if not drop_remainder:
            dur[-1] += span % T
    else:
        first = t[np.minimum(j_l, n - 1)]
        nxt = t[np.minimum(j_r, n - 1)]
        dur = (nxt - first).astype(np.float64)
    return np.maximum(dur, 1.0)
