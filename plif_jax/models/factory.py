"""Building a network from a run's config, and reading what a network holds (tau, alpha).

:func:`from_config` is the one place where a config becomes a model: :func:`spec_from_config`
maps ``config.model`` / ``config.neuron`` (one to one, ``options.CONFIG_FIELDS``) and the
dataset's shape to :func:`create_model`'s options, which a checkpoint stores (``model.json``)
so that :func:`plif_jax.training.checkpoint.restore` rebuilds the same network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from plif_jax import neurons
from plif_jax.models import nets
from plif_jax.models import options as options_lib


def spec_from_config(config: Any, info: Any) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` for :func:`create_model` from a run config and the dataset's info.

    ``info`` (a :class:`plif_jax.data.DatasetInfo`) gives the input: ``model_name`` (the network
    the dataset feeds), ``sample_shape``, ``input_layout`` and ``num_classes``. The time steps are
    ``config.data.T`` (its only owner).
    """
    name = config.model.name or info.model_name
    # The data delivers static images NHWC and event frames time-major 'TBCHW' (channels before
    # the spatial axes, i.e. the models' 'NCHW').
    layout = "NHWC" if info.input_layout == "NHWC" else "NCHW"
    shape = tuple(info.sample_shape)
    size, channels = (shape[-3], shape[-1]) if layout == "NHWC" else (shape[-1], shape[-3])
    opts = options_lib.options_from_config(config)
    if name in options_lib.STATIC_NETS:
        opts.pop("number_layer")
    opts.update(
        T=int(config.data.T),
        input_layout=layout,
        num_classes=int(info.num_classes),
        input_size=int(size),
        in_channels=int(channels),
        dtype=config.dtype,
    )
    return name, opts


def create_model(name: str, *, rngs: nnx.Rngs, **options: Any) -> nets.SpikingNet:
    """One of the paper's six networks; see :func:`plif_jax.models.options.resolve`."""
    return nets.build(options_lib.resolve(name, **options), rngs=rngs)


def build_model(name: str, options: Mapping[str, Any], *, seed: int) -> nets.SpikingNet:
    """:func:`create_model` with a run's seed (``params`` stream ``seed``, ``dropout`` +1)."""
    return create_model(name, rngs=nnx.Rngs(params=seed, dropout=seed + 1), **options)


def from_config(config: Any, info: Any, *, seed: int | None = None) -> nets.SpikingNet:
    """The network of a run: :func:`spec_from_config` then :func:`build_model` (``config.seed``)."""
    name, opts = spec_from_config(config, info)
    return build_model(name, opts, seed=int(config.seed if seed is None else seed))


def count_params(model: nnx.Module) -> int:
    """Number of scalars in every ``nnx.Param`` (weights, BN affine, PLIF ``w``)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def spiking_layers(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """``[(name, neuron), ...]`` of every LIF/PLIF layer in depth order.

    The paper networks name them ``sn0``, ``sn1``, ... (their ``spiking_layers()``); any other
    model's neurons are named by their path in the module graph.
    """
    own = getattr(model, "spiking_layers", None)
    if callable(own):
        return [(str(n), m) for n, m in own()]
    return [
        ("/".join(str(p) for p in path), module)
        for path, module in nnx.iter_modules(model)
        if isinstance(module, neurons.LIF | neurons.PLIF)
    ]


def layer_taus(model: nnx.Module, *, learnable_only: bool = False) -> dict[str, float]:
    """``{layer: tau}`` of every spiking layer in depth order.

    Each layer's :meth:`~plif_jax.neurons.PLIF.time_constant`: PLIF ``tau = 1 + exp(-w)`` in
    float64 from the stored ``w``; LIF its fixed tau (left out with ``learnable_only``).
    """
    return {
        name: layer.time_constant()
        for name, layer in spiking_layers(model)
        if not learnable_only or isinstance(layer, neurons.PLIF)
    }


def layer_alphas(model: nnx.Module) -> dict[str, float]:
    """``{layer: alpha}`` of every learnable surrogate alpha, in depth order."""
    return {
        name: float(np.asarray(layer.alpha[...]))
        for name, layer in spiking_layers(model)
        if layer.alpha is not None
    }
