"""plif_jax: PLIF spiking neural networks in JAX / Flax NNX (Fang et al., ICCV 2021)."""

__version__ = "0.1.0"
