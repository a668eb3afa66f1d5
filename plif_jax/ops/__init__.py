"""Custom-VJP fast paths: the same values as the plain JAX formulation, faster per backend.

:mod:`plif_jax.ops.lif_loop` is the neuron's time loop with its hand-written backward (its GPU/TPU
recurrences in :mod:`plif_jax.ops.lif_scan`); :mod:`plif_jax.ops.batch_norm` is BatchNorm's
training normalisation, with a hand-written backward on GPU/TPU; :mod:`plif_jax.ops.xla_cpu` holds
the XLA:CPU convolution workarounds; :mod:`plif_jax.ops.platform` picks the CPU or accelerator
formulation of the first two when a step is lowered. None is public API: use
:mod:`plif_jax.neurons` and :mod:`plif_jax.layers`.
"""
