"""Custom-VJP fast paths: the same values as the plain JAX formulation, faster on XLA:CPU.

:mod:`plif_jax.ops.lif_loop` is the neuron's time loop with its hand-written backward;
:mod:`plif_jax.ops.xla_cpu` holds the XLA:CPU convolution workarounds. Neither is public API: use
:mod:`plif_jax.neurons` and :mod:`plif_jax.layers`.
"""
