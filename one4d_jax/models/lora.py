"""The one linear layer of every model: a dense whose frozen kernel is shared by all branches.

Activations carry a leading branch axis (1 for plain Wan, 2 for One4D's RGB/XYZ); the base GEMM runs once over all
branches. With no LoRA tree this is a plain dense layer.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Dense(nn.Module):
  """y = x @ kernel + bias, computed in `dtype` (inputs and kernel cast), kernel stored [in, out]."""

  features: int
  axes: tuple[str | None, str | None]  # logical names of (in, out)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.xavier_uniform(), self.axes),
        (x.shape[-1], self.features), self.param_dtype)
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[1:]),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

