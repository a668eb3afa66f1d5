"""integrate_events: hand-computed frames for both split modes and every normalisation."""

import numpy as np
import pytest
import tonic

from plif_jax.data import integrate_events

DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
SENSOR = (3, 2, 2)  # W=3, H=2


def make_events(rows):
    ev = np.zeros(len(rows), dtype=DTYPE)
    for i, (x, y, t, p) in enumerate(rows):
        ev[i] = (x, y, t, p)
    return ev


# 7 events, T=3: d = 2, frames [0,2) [2,4) [4,7) -> the last frame absorbs the remainder.
SEVEN = make_events(
    [
        (0, 0, 0, 1),
        (0, 0, 10, 1),
        (2, 1, 20, 0),
        (1, 0, 30, 1),
        (1, 1, 40, 0),
        (1, 1, 50, 0),
        (2, 0, 100, 1),
    ]
)


def expected_number_frames(drop_remainder=False):
    f = np.zeros((3, 2, 2, 3), np.float32)  # [t, p, y, x]
    f[0, 1, 0, 0] = 2
    f[1, 0, 1, 2] = 1
    f[1, 1, 0, 1] = 1
    f[2, 0, 1, 1] = 2
    if not drop_remainder:
        f[2, 1, 0, 2] = 1
    return f


def test_number_split_last_frame_absorbs_remainder():
    frames = integrate_events(SEVEN, SENSOR, 3)
    assert frames.shape == (3, 2, 2, 3) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, expected_number_frames())
    assert frames.sum() == 7


def test_number_split_drop_remainder_drops_the_last_events():
    frames = integrate_events(SEVEN, SENSOR, 3, drop_remainder=True)
    np.testing.assert_array_equal(frames, expected_number_frames(drop_remainder=True))
    assert frames.sum() == 6


def test_drop_remainder_equals_tonic_to_frame():
    rng = np.random.default_rng(0)
    n = 1003
    ev = np.zeros(n, dtype=tonic.datasets.NMNIST.dtype)
    ev["x"] = rng.integers(0, 34, n)
    ev["y"] = rng.integers(0, 34, n)
    ev["t"] = np.sort(rng.integers(0, 300_000, n))
    ev["p"] = rng.integers(0, 2, n)
    for T in (1, 7, 10):
        ours = integrate_events(ev, (34, 34, 2), T, drop_remainder=True)
        theirs = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_event_bins=T)(ev.copy())
        np.testing.assert_array_equal(ours, theirs.astype(np.float32))
        # Without drop_remainder only the last frame differs, by the n mod T remainder.
        paper = integrate_events(ev, (34, 34, 2), T)
        np.testing.assert_array_equal(paper[:-1], ours[:-1])
        assert paper[-1].sum() - ours[-1].sum() == n % T


def test_time_split_windows_and_last_window_to_the_end():
    # t0 = 0, t_last = 100, T = 3 -> dt = 33: [0,33) [33,66) [66, end]
    frames = integrate_events(SEVEN, SENSOR, 3, split_by="time")
    f = np.zeros((3, 2, 2, 3), np.float32)
    f[0, 1, 0, 0] = 2  # t=0, 10
    f[0, 0, 1, 2] = 1  # t=20
    f[0, 1, 0, 1] = 1  # t=30
    f[1, 0, 1, 1] = 2  # t=40, 50
    f[2, 1, 0, 2] = 1  # t=100
    np.testing.assert_array_equal(frames, f)


def test_time_split_is_relative_to_first_timestamp_and_allows_empty_windows():
    ev = SEVEN.copy()
    ev["t"] += 1_000_000
    ev["t"][-1] = 1_000_000 + 1000  # a long gap: middle windows are empty
    frames = integrate_events(ev, SENSOR, 4, split_by="time")  # dt = 250
    assert frames[0].sum() == 6
    assert frames[1].sum() == 0 and frames[2].sum() == 0
    assert frames[3].sum() == 1


def test_frequency_normalisation_divides_by_frame_duration():
    # number split: durations t[j_r] - t[j_l] = 20 - 0, 40 - 20, and last t[N-1] - t[4] = 100 - 40
    frames = integrate_events(SEVEN, SENSOR, 3, normalization="frequency")
    raw = expected_number_frames()
    np.testing.assert_allclose(frames[0], raw[0] / 20)
    np.testing.assert_allclose(frames[1], raw[1] / 20)
    np.testing.assert_allclose(frames[2], raw[2] / 60)
    # time split: dt = 33, last frame dt + 100 mod 3 = 34
    frames = integrate_events(SEVEN, SENSOR, 3, split_by="time", normalization="frequency")
    raw_t = integrate_events(SEVEN, SENSOR, 3, split_by="time")
    np.testing.assert_allclose(frames[:2], raw_t[:2] / 33)
    np.testing.assert_allclose(frames[2], raw_t[2] / 34)


def test_max_sum_norm_are_per_frame_and_polarity():
    raw = expected_number_frames().astype(np.float64)
    got_max = integrate_events(SEVEN, SENSOR, 3, normalization="max")
    got_sum = integrate_events(SEVEN, SENSOR, 3, normalization="sum")
    got_norm = integrate_events(SEVEN, SENSOR, 3, normalization="norm")
    for j in range(3):
        for p in range(2):
            plane = raw[j, p]
            np.testing.assert_allclose(got_max[j, p], plane / max(plane.max(), 1e-5), rtol=1e-6)
            np.testing.assert_allclose(got_sum[j, p], plane / max(plane.sum(), 1e-5), rtol=1e-6)
            want = (plane - plane.mean()) / np.sqrt(max(plane.var(), 1e-5))
            np.testing.assert_allclose(got_norm[j, p], want, rtol=1e-5, atol=1e-6)
    # Frame 0, channel 1 holds a single pixel with 2 events.
    assert got_max[0, 1, 0, 0] == 1.0 and got_sum[0, 1, 0, 0] == 1.0
    assert got_sum[2, 0, 1, 1] == 1.0


def test_fewer_events_than_frames_go_to_the_last_frame():
    ev = SEVEN[:2]
    frames = integrate_events(ev, SENSOR, 5)
    assert frames[:4].sum() == 0
    assert frames[4, 1, 0, 0] == 2


@pytest.mark.parametrize("normalization", [None, "frequency", "max", "norm", "sum"])
@pytest.mark.parametrize("split_by", ["number", "time"])
def test_empty_stream_gives_zero_frames(split_by, normalization):
    frames = integrate_events(SEVEN[:0], SENSOR, 4, split_by=split_by, normalization=normalization)
    assert frames.shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(frames, 0.0)


def test_nonzero_polarity_goes_to_channel_one():
    ev = make_events([(0, 0, 0, -1), (1, 0, 1, 0), (2, 1, 2, 5)])
    frames = integrate_events(ev, SENSOR, 1)
    assert frames[0, 1, 0, 0] == 1 and frames[0, 0, 0, 1] == 1 and frames[0, 1, 1, 2] == 1


def test_bad_settings_list_valid_values():
    with pytest.raises(ValueError, match=r"valid values: \['number', 'time'\]"):
        integrate_events(SEVEN, SENSOR, 3, split_by="count")
    with pytest.raises(ValueError, match="valid values: .*'frequency', 'max', 'norm', 'sum'"):
        integrate_events(SEVEN, SENSOR, 3, normalization="l2")
    with pytest.raises(ValueError, match="positive integer"):
        integrate_events(SEVEN, SENSOR, 0)
    with pytest.raises(ValueError, match="outside the sensor"):
        integrate_events(SEVEN, (2, 2, 2), 3)
    with pytest.raises(ValueError, match="fields x, y, t, p"):
        integrate_events(np.zeros(3, dtype=[("x", int), ("t", int)]), SENSOR, 1)


def test_time_split_shorter_than_T_ticks_puts_all_events_in_the_last_frame():
    ev = make_events([(0, 0, 5, 1), (1, 1, 6, 0), (2, 0, 7, 1)])  # span 2 < T = 4 -> dt = 0
    frames = integrate_events(ev, SENSOR, 4, split_by="time")
    assert frames[:3].sum() == 0 and frames[3].sum() == 3
