"""Accuracy and confusion matrix of a model on a data split."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from plif_jax.runtime import parallel
from plif_jax.training import steps

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# Accuracy and confusion matrix


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 counts; row = true label, column = prediction.

    Samples whose ``mask`` is 0 (evaluation padding) are left out.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions differ in length: {labels.shape[0]} vs {predictions.shape[0]}"
        )
    keep = np.ones(labels.shape, bool) if mask is None else np.asarray(mask).reshape(-1) > 0
    for what, values in (("labels", labels), ("predictions", predictions)):
        bad = values[keep][(values[keep] < 0) | (values[keep] >= num_classes)]
        if bad.size:
            raise ValueError(f"{what} must lie in [0, {num_classes}), found {bad[0]}")
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels[keep], predictions[keep]), 1)
    return counts


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) and confusion matrix (rows: true, columns: predicted).

    ``num_silent``: samples whose output layer did not spike at all (all counts 0); the argmax
    assigns them class 0.
    """

    accuracy: float
    confusion: np.ndarray
    num_samples: int
    num_silent: int


def evaluate_split(
    model: nnx.Module,
    source: Any,
    preprocess: Callable[..., Array],
    *,
    num_classes: int | None = None,
) -> EvalResult:
    """Accuracy and confusion matrix of ``model`` on every sample of ``source``.

    The evaluation is the training loop's own (:func:`plif_jax.training.steps.eval_step` and
    :func:`plif_jax.training.steps.evaluate`, on one device).

    Args:
      model: a network; switched to eval mode (``model.eval()``) and left there.
      source: a ``plif_jax.data`` ``BatchSource`` (``source.batches()`` yields dicts with ``x``,
        ``y`` and ``mask``; padded samples have mask 0 and are not counted).
      preprocess: the data bundle's ``preprocess(x, *, train, rng)``, run with ``train=False``.
      num_classes: defaults to ``model.num_classes``.

    Returns:
      An :class:`EvalResult`. The prediction is the argmax of the spike counts; ties (e.g. no
      output spike at all) go to the lowest class index, as ``jnp.argmax`` breaks them.
    """
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError("model has no num_classes attribute; pass num_classes=...")
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    eval_fn = jax.jit(
        functools.partial(
            steps.eval_step,
            graphdef=graphdef,
            preprocess=preprocess,
            num_classes=num_classes,
            time_steps=getattr(model, "T", None) or 1,  # scales the loss only (unused here)
        )
    )
    state = steps.TrainState(params, rest, None)
    result = steps.evaluate(
        eval_fn, state, source.batches(), parallel.create_mesh(1), predictions=True
    )
    if result["count"] == 0:
        raise ValueError("the source yielded no (unmasked) sample; nothing to evaluate")
    counts = confusion_matrix(result["y"], result["pred"], num_classes)
    return EvalResult(
        accuracy=float(np.trace(counts)) / int(counts.sum()),
        confusion=counts,
        num_samples=int(counts.sum()),
        num_silent=int(np.sum(result["silent"])),
    )
