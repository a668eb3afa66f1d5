"""Looking inside a trained PLIF network: time constants, membrane traces, firing, accuracy.

Everything the ``experiments/explore_tau.ipynb`` notebook shows comes from this package, so that
any script
can compute the same numbers:

* tau of every layer of a model: :func:`plif_jax.models.layer_taus` (restore a workdir's model with
  :func:`plif_jax.training.checkpoint.restore`).
* :func:`tau_trajectories`: tau of every layer and the learning rate per epoch, from the workdir's
  ``metrics.jsonl``.
* :func:`record_forward`: one forward pass that keeps each spiking layer's input current, membrane
  potential (``h`` before firing, ``v`` after the reset), spikes, firing rate per time step and the
  number of synaptic operations its spikes cause downstream.
* :func:`evaluate_split`: accuracy and confusion matrix of a model on a ``BatchSource``.
* :func:`paper_taus`: the learned tau per layer of the paper's main runs, for comparison.
"""

from plif_jax.analysis.evaluation import EvalResult, confusion_matrix, evaluate_split
from plif_jax.analysis.forward import (
    ForwardRecord,
    LayerRecord,
    conv_fan_out_map,
    record_forward,
    synaptic_ops,
)
from plif_jax.analysis.taus import TauTrajectories, paper_taus, tau_trajectories

__all__ = [
    "EvalResult",
    "ForwardRecord",
    "LayerRecord",
    "TauTrajectories",
    "confusion_matrix",
    "conv_fan_out_map",
    "evaluate_split",
    "paper_taus",
    "record_forward",
    "synaptic_ops",
    "tau_trajectories",
]
