"""Event datasets in their real on-disk formats: the config that reads them, and AEDAT4 files."""

from __future__ import annotations

import dv_processing as dv

from configs import common


def event_config(tmp_path, dataset, *, batch_size=2, **data):
    """The shared run config (configs/common.py) for ``dataset``, with these data fields."""
    config = common.get_config()
    config.update(dict(dataset=dataset, seed=0, batch_size=batch_size, eval_batch_size=4))
    config.data.update(
        dict(
            root=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), num_workers=1, prefetch=0
        )
    )
    config.data.update(data)
    return config


def write_aedat4(path, x, y, t, p):
    store = dv.EventStore()
    for xi, yi, ti, pi in zip(x, y, t, p, strict=True):
        store.push_back(int(ti), int(xi), int(yi), bool(pi))
    writer = dv.io.MonoCameraWriter(
        str(path), dv.io.MonoCameraWriter.EventOnlyConfig("DVS128", (128, 128))
    )
    writer.writeEvents(store)
    del writer  # closes the file
