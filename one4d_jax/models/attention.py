"""Attention kernels behind one registry, so the model code never names a backend.

Every kernel takes q [N, Tq, heads, d], k and v [N, Tk, heads, d] and returns [N, Tq, heads, d] with the default
1/sqrt(d) scale and no mask. `xla` (`jax.nn.dot_product_attention`) is the reference every other kernel is tested
against; `auto` (the default of DiTConfig) picks the fastest measured kernel for the backend at trace time.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

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


@register("per_head")
def per_head_attention(q, k, v):
  """The same maths one (batch, head) pair at a time under `lax.map`, normalising after the PV product: a head's
  [Lq, Lk] scores stay in cache instead of writing, transposing and re-reading all heads' probabilities. About 2x
  faster than `xla` for the attention kernel on CPU (benchmarks/dit_forward.py --attention per_head). The map runs
  the pairs sequentially, so keep `xla` where batch or heads are sharded across devices."""
  n, lq, heads, d = q.shape
  by_head = lambda x: x.transpose(0, 2, 1, 3).reshape(n * heads, x.shape[1], d)

  def one(qkv):
    qh, kh, vh = qkv
    s = jnp.einsum("qd,kd->qk", qh, kh, preferred_element_type=jnp.float32) / math.sqrt(d)
    p = jnp.exp(s - s.max(-1, keepdims=True))
    o = jnp.einsum("qk,kd->qd", p.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
    return (o / p.sum(-1, keepdims=True)).astype(q.dtype)

  out = jax.lax.map(one, (by_head(q), by_head(k), by_head(v)))
  return out.reshape(n, heads, lq, d).transpose(0, 2, 1, 3)


@register("auto")
def auto_attention(q, k, v):
  """per_head on CPU (benchmarks/dit_forward.py, dlc_forward.py), cuDNN flash attention on GPU in bf16/fp16, xla
  elsewhere (TPU; GPU float32)."""
  backend = jax.default_backend()
  if backend == "cpu":
    return per_head_attention(q, k, v)
  if backend in ("gpu", "cuda", "rocm") and q.dtype in (jnp.bfloat16, jnp.float16):
    return cudnn_attention(q, k, v)
  return xla_attention(q, k, v)
