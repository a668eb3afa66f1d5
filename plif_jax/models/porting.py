"""Load PyTorch weights of the paper architecture (``codes/models.py`` naming) into a network.

The original nets are ``nn.Sequential`` blocks in which every layer, parameter-free ones
included (PLIF, pooling, Flatten, Dropout), takes one index. :func:`torch_layer_names` is the
explicit table per network, plif_jax layer name -> torch module prefix:

* MNIST / Fashion-MNIST: ``static_conv.0/1`` = ``conv0``/``bn0`` (the encoder); ``conv.0`` =
  ``sn0``; ``conv.2/3/4`` = ``conv1``, ``bn1``, ``sn1``; ``fc.2/3`` = ``fc0``, ``sn2``;
  ``fc.5/6`` = ``fc1``, ``sn3``.
* CIFAR-10: ``static_conv.0/1`` = encoder; ``conv.0`` = ``sn0``; ``conv.1-3, 4-6`` (pool 7),
  ``conv.8-10, 11-13, 14-16`` (pool 17) = blocks 1..5; ``fc.2/3`` = ``fc0``, ``sn6``;
  ``fc.4/5`` = ``fc1``, ``sn7`` (no second dropout).
* N-MNIST / CIFAR10-DVS / DVS128 Gesture: ``conv.<4k>/<4k+1>/<4k+2>`` = ``conv<k>``,
  ``bn<k>``, ``sn<k>`` (``4k+3`` is the pool); ``fc.2/3`` and ``fc.5/6`` as MNIST.

Layer names are those of :meth:`plif_jax.models.SpikingNet.named_layers`.

Per kind: conv ``weight`` OIHW -> ``kernel`` HWIO; linear ``weight`` ``(out, in)`` -> ``kernel``
``(in, out)``, and the first linear layer's input rows are permuted from PyTorch's ``(C, H, W)``
flatten order to the NHWC ``(H, W, C)`` order; BatchNorm ``weight``/``bias``/``running_mean``/
``running_var`` -> ``scale``/``bias``/``mean``/``var`` (``num_batches_tracked`` is ignored:
momentum is fixed); PLIF ``w`` -> ``w``; a learnable surrogate alpha
``<prefix>.surrogate_function.alpha`` -> ``alpha``. LIF layers have no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from plif_jax import models

# (torch suffix, jax attribute) per layer kind.
_FIELDS = {
    "conv": (("weight", "kernel"),),
    "fc": (("weight", "kernel"),),
    "bn": (
        ("weight", "scale"),
        ("bias", "bias"),
        ("running_mean", "mean"),
        ("running_var", "var"),
    ),
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _conv_block(k: int, first: int) -> dict[str, str]:
    """A ``Conv BN SN`` block ``k`` at torch indices ``first``, ``first+1``, ``first+2``."""
    return {
        f"conv{k}": f"conv.{first}",
        f"bn{k}": f"conv.{first + 1}",
        f"sn{k}": f"conv.{first + 2}",
    }


def _classifier(sn: int, second_fc: int) -> dict[str, str]:
    """``Flatten DO FC SN [DO] FC SN``: the FCs at ``fc.2`` and ``fc.<second_fc>``."""
    return {"fc0": "fc.2", f"sn{sn}": "fc.3", "fc1": f"fc.{second_fc}",
            f"sn{sn + 1}": f"fc.{second_fc + 1}"}  # fmt: skip


def torch_layer_names(model: models.SpikingNet) -> dict[str, str]:
    """``{layer name: torch module prefix}`` for every conv, bn, neuron and fc of ``model``,
    the names of :meth:`plif_jax.models.SpikingNet.named_layers`."""
    encoder = {"conv0": "static_conv.0", "bn0": "static_conv.1", "sn0": "conv.0"}
    if isinstance(model, models.MNISTNet):
        return {**encoder, **_conv_block(1, 2), **_classifier(2, 5)}
    if isinstance(model, models.CIFAR10Net):
        names = dict(encoder)
        for k, first in zip(range(1, 6), (1, 4, 8, 11, 14), strict=True):
            names.update(_conv_block(k, first))
        return {**names, **_classifier(6, 4)}
    names = {}
    for k in range(len(model.features)):
        names.update(_conv_block(k, 4 * k))
    return {**names, **_classifier(len(model.features), 5)}


def _torch_to_jax_array(kind: str, path: str, array: np.ndarray, flatten_chw) -> np.ndarray:
    if kind == "conv":
        if array.ndim != 4:
            return array  # the shape check names the problem
        return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "fc":
        if array.ndim != 2:
            return array
        out = array.T  # (out, in) -> (in, out)
        if path == "fc0":
            c, h, w = flatten_chw
            if out.shape[0] == c * h * w:
                # torch row c*H*W + y*W + x -> our row (y*W + x)*C + c
                out = out.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
        return out
    return array


def _flatten_chw(model: models.SpikingNet) -> tuple[int, int, int]:
    cfg = model.config
    side = models.options.final_spatial_size(cfg.name, cfg.input_size, cfg.number_layer)
    return cfg.channels, side, side


def load_torch_state_dict(
    model: models.SpikingNet, state_dict: Mapping[str, Any], *, strict: bool = True
) -> models.SpikingNet:
    """Copies a torch ``state_dict`` of the paper architecture into ``model`` (in place).

    Args:
      model: a paper network (:class:`plif_jax.models.SpikingNet`) of the same size.
      state_dict: ``{torch key: array}`` (numpy arrays, or anything ``np.asarray`` accepts:
        call ``{k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}``).
      strict: also reject keys that map to nothing (except ``num_batches_tracked``).

    Returns:
      ``model``, with every parameter and BatchNorm statistic replaced; values are cast to the
      dtype each variable already has.

    Raises:
      KeyError: a key the model needs is missing (names the torch key and the attribute), or
        (``strict``) a key is unexpected.
      ValueError: a shape does not match (names both keys and both shapes).
    """
    flatten_chw = _flatten_chw(model)
    used: set[str] = set()
    layers = model.named_layers()
    for attr, prefix in torch_layer_names(model).items():
        module = layers[attr]
        kind = attr.rstrip("0123456789")
        if kind == "sn":
            fields = []
            if hasattr(module, "w"):
                fields.append(("w", "w"))
            if getattr(module, "alpha", None) is not None:
                fields.append(("surrogate_function.alpha", "alpha"))
        else:
            fields = list(_FIELDS[kind])
        for suffix, field in fields:
            key = f"{prefix}.{suffix}"
            if key not in state_dict:
                raise KeyError(
                    f"state_dict has no key {key!r}, needed for {attr}.{field} of the "
                    f"{model.name!r} model; is it a state_dict of the paper architecture "
                    f"(codes/models.py naming) with the same options (neuron, alpha_learnable)?"
                )
            used.add(key)
            array = np.asarray(state_dict[key])
            array = _torch_to_jax_array(kind, attr, array, flatten_chw)
            variable = getattr(module, field)
            target = variable[...]
            if tuple(array.shape) != tuple(target.shape):
                raise ValueError(
                    f"shape mismatch: torch {key!r} gives {tuple(array.shape)} after layout "
                    f"conversion (torch shape {tuple(np.shape(state_dict[key]))}), but "
                    f"{attr}.{field} has shape {tuple(target.shape)}; build the model with the "
                    f"same channels / hidden / input_size / num_classes"
                )
            # Copy: jnp.asarray may alias a numpy buffer on CPU, and a torch tensor's .numpy()
            # shares memory with the tensor, so later in-place torch updates (BatchNorm running
            # statistics) would silently change the JAX model.
            variable[...] = jnp.array(np.array(array, copy=True), dtype=target.dtype)
    if strict:
        unexpected = sorted(
            k for k in state_dict if k not in used and not k.endswith(_IGNORED_SUFFIXES)
        )
        if unexpected:
            raise KeyError(
                f"unexpected state_dict keys for the {model.name!r} model: {unexpected}; pass "
                f"strict=False to ignore them"
            )
    return model
