"""A frame cache's settings and a frame producer whose frames are known, for the cache tests."""

from __future__ import annotations

import dataclasses

import numpy as np

BASE = dict(
    dataset="nmnist",
    split="train",
    T=10,
    split_by="number",
    normalization=None,
    drop_remainder=False,
)


@dataclasses.dataclass
class CountingProducer:
    """Frames whose value encodes (sample index, T); fails at sample ``fail_at`` if set."""

    num_samples: int
    T: int = 2
    chunk_size: int = 3
    fail_at: int | None = None

    def frames(self, indices):
        out = []
        for i in indices:
            if i == self.fail_at:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C here
            out.append(np.full((self.T, 2, 2, 2), float(i + 10 * self.T), np.float32))
        return out
