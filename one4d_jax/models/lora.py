"""The one linear layer of every model: a dense whose frozen kernel is shared by all branches, plus an optional
branch-indexed low-rank update.

Activations carry a leading branch axis K (1 for plain Wan, 2 for One4D's RGB/XYZ). The base GEMM runs once over all
branches (one GEMM with K times the rows); branch k adds `scale * (x_k @ A_k) @ B_k`. An input shared by the branches
(branch axis of size 1, e.g. the text context) runs the base GEMM once and broadcasts. The low-rank factors live in a
separate variable collection, `lora`, mirroring the `params` tree, so the frozen and trainable trees stay apart: a
Dense whose `lora` entry exists is adapted, any other is plain. Which layers get one is decided when the LoRA tree is
built (`init_lora`), by regexes over parameter paths.

A branch may also carry its own full-rank projection of its leading `n` inputs, `delta_kernel` [n, out] and
`delta_bias` [out] in the same collection, added to the shared kernel's output (One4D's XYZ patch embedding and head,
`one4d_jax.models.one4d`); a branch without one gets zeros.

Two ways to run the update, same numbers (`lora_mode`): `factored` adds `(x_k @ A_k) @ B_k` (training: the frozen
kernel needs no weight-gradient GEMM and the factors' gradients are cheap); `merged` forms each branch's kernel
`W + scale * A_k @ B_k` and runs one batched GEMM (no extra passes over the activations, so a long-sequence two-branch
forward runs at the plain forward's GEMM efficiency, benchmarks/dlc_forward.py; in training it would add a full
weight-gradient GEMM per layer). `auto` (for inference) merges a layer when that takes fewer FLOPs, i.e. when its
rows per branch exceed in * out / (in + out). Inputs shared by the branches always run factored.
"""

import math
import re
from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp


LORA_MODES = ("factored", "merged", "auto")


class Dense(nn.Module):
  """y = x @ kernel + bias (+ branch-indexed LoRA), computed in `dtype`; kernel stored [in, out]."""

  features: int
  axes: tuple[str | None, str | None]  # logical names of (in, out)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  lora_scale: float = 1.0  # alpha / rank
  lora_mode: str = "factored"  # "merged" or "auto" (see the module docstring)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.xavier_uniform(), self.axes),
        (x.shape[-1], self.features), self.param_dtype).astype(self.dtype)
    x = x.astype(self.dtype)
    lora = None
    if self.has_variable("lora", "a"):
      lora = self.get_variable("lora", "a").astype(self.dtype), self.get_variable("lora", "b").astype(self.dtype)
      if x.shape[0] not in (1, lora[0].shape[0]):
        raise ValueError(f"LoRA tree has {lora[0].shape[0]} branches, activations have {x.shape[0]} (axis 0)")
    if lora is not None and x.shape[0] == lora[0].shape[0] and self._merge(math.prod(x.shape[1:-1]), *kernel.shape):
      merged = kernel + self.lora_scale * jnp.einsum("kir,kro->kio", *lora)
      y = jnp.einsum("k...i,kio->k...o", x, merged)
    else:
      y = jnp.einsum("...i,io->...o", x, kernel)
      if lora is not None:  # an input shared by all branches (axis 0 of size 1): base GEMM once, update per branch
        a, b = lora
        low = jnp.einsum("kti,kir->ktr", _rows(x, a.shape[0]), a)
        y = y + self.lora_scale * jnp.einsum("ktr,kro->kto", low, b).reshape(len(a), *y.shape[1:])
    if self.has_variable("lora", "delta_kernel"):  # each branch's own full-rank projection of its leading inputs
      kernel_k = self.get_variable("lora", "delta_kernel").astype(self.dtype)  # [K, n, out]
      bias_k = self.get_variable("lora", "delta_bias").astype(self.dtype)  # [K, out]
      x_k = _rows(x[..., :kernel_k.shape[1]], kernel_k.shape[0])
      y = y + jnp.einsum("kti,kio->kto", x_k, kernel_k).reshape(len(kernel_k), *y.shape[1:]) + bias_k.reshape(
          len(bias_k), *(1,) * (y.ndim - 2), -1)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[1:]),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

  def _merge(self, rows: int, fan_in: int, fan_out: int) -> bool:
    return self.lora_mode == "merged" or (self.lora_mode == "auto" and rows * (fan_in + fan_out) > fan_in * fan_out)


def _rows(x: jax.Array, branches: int) -> jax.Array:
  """x [K or 1, ..., in] -> [branches, rows, in]: the trained factors' weight gradients then contract one row axis.
  Contracting (batch, tokens) as two axes made XLA:CPU write the [rows, out] gradient transposed before the GEMM
  (about 10% of a training step, benchmarks/train_step.py)."""
  return jnp.broadcast_to(x, (branches, *x.shape[1:])).reshape(branches, -1, x.shape[-1])


def _path(keys) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in keys)


def init_lora(rng: jax.Array, params, targets: Iterable[str], rank: int, dtype=jnp.float32) -> dict:
  """LoRA factors of one branch for every Dense kernel whose module path ('blocks/self_attn/q') fully matches one of
  `targets`, mirroring the params tree: `{..., 'q': {'a': [in, r], 'b': [r, out]}}`; layer-stacked kernels
  `[L, in, out]` get stacked factors `[L, in, r]`.

  A is uniform(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B is zero, so the adapted model equals
  the base model at init. `params` may be abstract (ShapeDtypeStructs).
  """
  patterns = [re.compile(t) for t in targets]
  chosen = [(path[:-1], leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if getattr(path[-1], "key", None) == "kernel" and any(p.fullmatch(_path(path[:-1])) for p in patterns)]
  if not chosen:
    raise ValueError(f"LoRA targets {list(targets)} match no Dense kernel")
  out: dict = {}
  for (module_path, leaf), key in zip(chosen, jax.random.split(rng, len(chosen))):
    *lead, fan_in, fan_out = leaf.shape
    bound = 1.0 / math.sqrt(fan_in)
    node = out
    for k in module_path:
      node = node.setdefault(getattr(k, "key", k), {})
    node["a"] = jax.random.uniform(key, (*lead, fan_in, rank), dtype, -bound, bound)
    node["b"] = jnp.zeros((*lead, rank, fan_out), dtype)
  return out


def stack_branches(trees: list[dict]) -> dict:
  """Per-branch LoRA trees -> one tree with the branch axis K just before (in, r) / (r, out) / (n, out) of a matrix,
  or just before (out,) of a `delta_bias`."""
  def stack(path, *xs):
    return jnp.stack(xs, axis=-2 if getattr(path[-1], "key", None) == "delta_bias" else -3)
  return jax.tree_util.tree_map_with_path(stack, *trees)


def logical_axes(param_axes: dict, lora: dict) -> dict:
  """Logical names of LoRA factors, from their kernel's: a [.., in, r] -> (.., in, lora_rank), b [.., r, out] ->
  (.., lora_rank, out). The rank axis has its own rule, so a factor whose kernel axis maps to a mesh axis of size 1
  (`heads` without tensor parallelism) can still be stored split over the FSDP axes."""
  def axes(path, leaf):
    node = param_axes
    for k in path[:-1]:
      node = node[getattr(k, "key", k)]
    *lead, name_in, name_out = node["kernel"]
    rank_axes = (name_in, "lora_rank") if getattr(path[-1], "key", None) == "a" else ("lora_rank", name_out)
    return jax.sharding.PartitionSpec(*lead, *rank_axes)
  return jax.tree_util.tree_map_with_path(axes, lora)


def merge(params, lora: dict, scale: float):
  """Fold one branch's LoRA tree into the kernels: a plain model computing that branch (`W + scale * A @ B`)."""
  def fold(path, leaf):
    node = lora
    for k in path[:-1]:
      node = node.get(getattr(k, "key", k), {})
    if getattr(path[-1], "key", None) != "kernel" or "a" not in node:
      return leaf
    return (leaf + scale * jnp.einsum("...ir,...ro->...io", node["a"], node["b"])).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fold, params)
