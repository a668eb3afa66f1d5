"""Constants and the ``nir`` import shared by the export, import and runner modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

Array = jax.Array

FORMAT = "plif_jax.nir/1"
METADATA_KEY = "plif_jax"
EULER = (
    "forward Euler, v <- v + dt/tau * (v_leak - v + r*I), hard reset to v_reset after a spike; "
    "dt is metadata['dt'] (LIF tau is the layer's tau in time steps times dt)"
)
SUPPORTED_NODES = (
    "Input", "Output", "Conv2d", "Linear", "Affine", "LIF", "IF", "Threshold", "SumPool2d",
    "AvgPool2d", "Flatten", "Scale",
)  # fmt: skip


def _nir():
    try:
        import nir
    except ModuleNotFoundError as err:  # pragma: no cover - nir is a test dependency
        raise ModuleNotFoundError(
            "plif_jax.nir_graph needs the NIR package: pip install 'nir>=1.0'"
        ) from err
    return nir


def _meta_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _meta_str(value.item())
    return str(value)


def graph_info(graph) -> dict[str, Any] | None:
    """The ``plif_jax`` entry of a graph's metadata (name, class, options), or None."""
    meta = getattr(graph, "metadata", None) or {}
    if METADATA_KEY not in meta:
        return None
    info = json.loads(_meta_str(meta[METADATA_KEY]))
    return info if info.get("format") == FORMAT else None


def plif_jax_options(graph) -> Mapping[str, Any] | None:
    """The network options a plif_jax graph was exported with (None for other graphs)."""
    info = graph_info(graph)
    return None if info is None else dict(info["options"])
