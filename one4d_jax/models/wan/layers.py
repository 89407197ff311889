"""What every Wan model (DiT, umT5, CLIP, VAE) shares: the float32 norms, the stack of identical blocks on a leading
`layers` axis, and one way to turn a model's boxed initialiser into its parameter functions.

A model writes `_init_boxed(cfg, rng)`, whose leaves are `nn.LogicallyPartitioned` (the array and its logical axis
names), and takes `init, abstract_params, logical_axes = layers.param_functions(_init_boxed)`: random parameters from
one compiled program, their shapes without memory or FLOPs, and their logical axes for sharding.
"""

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """LayerNorm without affine, statistics in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nn.Module):
  eps: float
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)), (d,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)), (d,))
    return layer_norm(x, self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class RMSNorm(nn.Module):
  """RMSNorm over the full width (all heads at once), float32."""

  eps: float
  axis_name: str = "heads"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                       (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return y * scale.astype(jnp.float32)


def stacked(init_one: Callable, rng: jax.Array, num_layers: int):
  """Boxed parameters of `num_layers` identical blocks (`init_one(key)` each, independent keys), stacked on a leading
  `layers` logical axis: the layout a scan over the blocks reads."""
  blocks = jax.vmap(init_one)(jax.random.split(rng, num_layers))
  return jax.tree.map(lambda b: b.replace(names=("layers", *b.names)), blocks,
                      is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))


class ParamFunctions(NamedTuple):
  init: Callable  # (cfg, rng) -> random parameters, compiled once per config
  abstract_params: Callable  # cfg -> ShapeDtypeStruct tree: no memory, no FLOPs
  logical_axes: Callable  # cfg -> tree of PartitionSpecs of logical axis names, one per parameter


def param_functions(init_boxed: Callable) -> ParamFunctions:
  """A model's parameter functions from its boxed initialiser `init_boxed(cfg, rng)` (cfg hashable)."""
  init = jax.jit(lambda cfg, rng: nn.unbox(init_boxed(cfg, rng)), static_argnums=0)  # one program, not one per op
  # the key is made inside eval_shape too: a concrete one would need a device, which an ahead-of-time compile for
  # devices this host does not have (launch.plan --topology) cannot give
  abstract_params = lambda cfg: jax.eval_shape(lambda: init(cfg, jax.random.key(0)))
  logical_axes = lambda cfg: nn.get_partition_spec(jax.eval_shape(lambda: init_boxed(cfg, jax.random.key(0))))
  return ParamFunctions(init, abstract_params, logical_axes)
