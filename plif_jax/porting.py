"""Load PyTorch weights of the paper architecture (``codes/models.py`` naming) into a SpikingNet.

Name mapping (torch ``state_dict`` key -> plif_jax attribute). The original nets are three
``nn.Sequential`` blocks; every layer, parameter-free ones included (PLIF, pooling, Flatten,
Dropout), takes one index, so the indices follow :func:`plif_jax.models.build_plan`:

* static nets: ``static_conv.0`` = ``conv0`` (encoder conv), ``static_conv.1`` = ``bn0``; then
  ``conv.<i>`` for the layers up to the flatten and ``fc.<i>`` after it (``fc.0`` is Flatten).
  MNIST: ``conv.0.w`` = ``sn0.w``, ``conv.2.weight`` = ``conv1``, ``conv.3.*`` = ``bn1``,
  ``conv.4.w`` = ``sn1.w``, ``fc.2.weight`` = ``fc0``, ``fc.3.w`` = ``sn2.w``,
  ``fc.5.weight`` = ``fc1``, ``fc.6.w`` = ``sn3.w``.
* neuromorphic nets: ``conv.<4k>`` = ``conv<k>``, ``conv.<4k+1>`` = ``bn<k>``,
  ``conv.<4k+2>.w`` = ``sn<k>.w``; ``fc.2.weight`` = ``fc0``, ``fc.3.w``, ``fc.5.weight`` =
  ``fc1``, ``fc.6.w``.

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


def torch_layer_names(model: models.SpikingNet) -> dict[str, str]:
    """``{jax attribute: torch module prefix}`` for every layer with a name (conv, bn, sn, fc)."""
    names: dict[str, str] = {}
    block = "static_conv" if model.is_static else "conv"
    index = 0
    for op in model.plan:
        kind = op[0]
        if kind == "repeat":  # the static encoder ends here; the per-step layers start
            block, index = "conv", 0
            continue
        if kind == "flatten":
            block, index = "fc", 0
        if len(op) > 1 and kind != "dropout":
            names[op[1]] = f"{block}.{index}"
        index += 1
    return names


def _torch_to_jax_array(kind: str, attr: str, array: np.ndarray, model, flatten_chw) -> np.ndarray:
    if kind == "conv":
        if array.ndim != 4:
            return array  # the shape check names the problem
        return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "fc":
        if array.ndim != 2:
            return array
        out = array.T  # (out, in) -> (in, out)
        if attr == "fc0":
            c, h, w = flatten_chw
            if out.shape[0] == c * h * w:
                # torch row c*H*W + y*W + x -> our row (y*W + x)*C + c
                out = out.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
        return out
    return array


def _flatten_chw(model: models.SpikingNet) -> tuple[int, int, int]:
    cfg = model.config
    size = cfg.input_size
    for op in model.plan:
        if op[0] == "pool":
            size //= 2
    return cfg.channels, size, size


def load_torch_state_dict(
    model: models.SpikingNet, state_dict: Mapping[str, Any], *, strict: bool = True
) -> models.SpikingNet:
    """Copies a torch ``state_dict`` of the paper architecture into ``model`` (in place).

    Args:
      model: a :class:`plif_jax.models.SpikingNet` of the same architecture and size.
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
    for attr, prefix in torch_layer_names(model).items():
        module = getattr(model, attr)
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
            array = _torch_to_jax_array(kind, attr, array, model, flatten_chw)
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
