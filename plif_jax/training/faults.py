"""What a training run does about faults that are not bugs.

- :func:`reporting_disk_faults`: a full, read-only or failing disk while the run writes its
  checkpoints, metrics, summary or frames is one :class:`~plif_jax.errors.DiskError` naming the
  file, the free space, the last good checkpoint (kept: a failed save never replaces it) and how to
  resume (:mod:`plif_jax.runtime.disk`).
- :func:`finished_summary`: a rerun of a finished run changes nothing and returns its record.
- :class:`SilenceWatch`: warns once when a whole epoch passes without a spike in any layer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from plif_jax.errors import DiskError, UserError
from plif_jax.runtime import disk


def last_good_checkpoint(workdir: str) -> int | None:
    """The newest finished step in ``<workdir>/checkpoints/latest`` (or ``best``), or None."""
    steps = []
    for which in ("latest", "best"):
        directory = os.path.join(workdir, "checkpoints", which)
        try:
            steps += [int(n) for n in os.listdir(directory) if n.isdigit()]
        except OSError:
            continue
    return max(steps) if steps else None


def resume_hint(workdir: str) -> str:
    """What was kept and how to go on, for a run stopped by a disk fault."""
    step = last_good_checkpoint(workdir)
    fix = "once the disk has room and is writable (or with another --workdir), run the same command"
    if step is None:
        return f"No checkpoint was saved yet; {fix} again to start."
    return (
        f"The last good checkpoint (step {step}) in {os.path.join(workdir, 'checkpoints')} is "
        f"kept; {fix} again to resume from it."
    )


def reporting_disk_faults(train: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps ``train(config, workdir, ...)``: a disk fault becomes a :class:`DiskError`."""

    @functools.wraps(train)
    def wrapper(config: Any, workdir: str, *args: Any, **kwargs: Any) -> Any:
        disk.quiet_orbax_disk_faults()  # the one line below says it; no Orbax tracebacks
        try:
            return train(config, workdir, *args, **kwargs)
        except UserError:
            raise
        except Exception as e:
            path = os.path.abspath(workdir)
            message = disk.with_fix(e, resume_hint(path), default_path=path)
            if message is None:
                raise
            raise DiskError(message) from e

    return wrapper


def finished_summary(
    workdir: str, config: Any, latest_step: int | None, readable: Any = None
) -> dict | None:
    """The saved summary of a run that already finished ``config.num_epochs``, else None.

    Finished: ``summary.json`` says ``completed`` with at least ``config.num_epochs`` epochs, at
    the step of the newest checkpoint (a run continued since, or given more epochs, is not), and
    ``readable()`` (if given) says that checkpoint can be read: a finished run whose last
    checkpoint is damaged resumes from the newest readable one and redoes what it lost.
    """
    try:
        with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        done = (
            summary.get("status") == "completed"
            and int(summary.get("epochs_completed", -1)) >= int(config.num_epochs)
            and summary.get("global_step") == latest_step
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not done or (readable is not None and not readable()):
        return None
    logging.warning(
        "%s holds a finished run (%d epochs, step %d): nothing was changed. To train it longer, "
        "raise --config.num_epochs; to train again, use a new --workdir.",
        workdir,
        summary["epochs_completed"],
        latest_step,
    )
    return summary


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class SilenceWatch:
    """Warns once per run when no layer fired a single spike during a whole epoch."""

    def __init__(self) -> None:
        self.warned = False

    def check(
        self, rates: Mapping[str, float], epoch: int, lr: Any, member: int | None = None
    ) -> bool:
        """Logs the warning (once) when every rate in ``rates`` is 0; returns whether it did."""
        if self.warned or not rates or any(float(v) > 0 for v in rates.values()):
            return False
        self.warned = True
        first = min(rates, key=_natural)
        lrs = ", ".join(f"{float(v):g}" for v in np.ravel(lr))
        logging.warning(
            "The network stopped spiking%s: no layer fired during epoch %d, from the first "
            "spiking layer, %s, on (every firing rate 0), so the output is silent and nothing "
            "learns. A learning rate far too high does this (this epoch ran at %s): lower "
            "--config.optim.lr and train in a new --workdir.",
            "" if member is None else f" in member {member}",
            epoch,
            first,
            lrs,
        )
        return True


def newest_checkpoint_readable(store: Any) -> bool:
    """Whether the newest ``latest/`` checkpoint of a :class:`~plif_jax.training.checkpoint.
    CheckpointStore` reads back (its arrays as saved, and its meta)."""
    import orbax.checkpoint as ocp

    from plif_jax.training.checkpoint_files import quiet_abandoned_orbax_reads

    step = store.latest_step()
    if step is None:
        return False
    quiet_abandoned_orbax_reads()
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    try:
        store.latest.restore(step, args=args)
    except Exception:  # noqa: BLE001 - any failure to read means: not a finished, intact run
        return False
    return True
