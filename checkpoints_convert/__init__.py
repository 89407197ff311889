"""PyTorch / safetensors checkpoints -> orbax checkpoints of one4d_jax models (torch only where a file needs it)."""
