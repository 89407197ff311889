"""one4d_jax: One4D (unified 4D generation and reconstruction via Decoupled LoRA Control) in JAX/Flax."""

__version__ = "0.1.0"
