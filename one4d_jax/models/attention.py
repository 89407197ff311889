"""Attention kernels behind one registry, so the model code never names a backend.

Every kernel takes q [N, Tq, heads, d], k and v [N, Tk, heads, d] and returns [N, Tq, heads, d] with the default
1/sqrt(d) scale and no mask. `xla` (`jax.nn.dot_product_attention`) is the reference every other kernel is tested
against.
"""

from typing import Callable

import jax

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_KERNELS: dict[str, AttentionFn] = {}


def register(name: str) -> Callable[[AttentionFn], AttentionFn]:
  def add(fn: AttentionFn) -> AttentionFn:
    _KERNELS[name] = fn
    return fn
  return add


def get(name: str) -> AttentionFn:
  if name not in _KERNELS:
    raise ValueError(f"unknown attention kernel {name!r}; registered: {sorted(_KERNELS)}")
  return _KERNELS[name]


@register("xla")
def xla_attention(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@register("cudnn")
def cudnn_attention(q, k, v):
  """cuDNN flash attention (GPU only, bf16/fp16)."""
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
