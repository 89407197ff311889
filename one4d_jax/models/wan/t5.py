"""The umT5-XXL text encoder that Wan2.1 conditions on, as pure functions over an explicit parameter tree.

Spec: `shared/reference/wan_spec.md` section 4.1 (Wan2.1:wan/modules/t5.py). Pre-norm T5 blocks with RMSNorm, a relative
position bias table per layer (umT5; T5 shares one), attention without the 1/sqrt(d) scale, padded keys masked, a gated
GELU-tanh FFN. `encode` returns what Wan feeds the DiT: the final normalised hidden states, zero past each prompt's
length.

Tree: `{"token_embedding": {"embedding"}, "blocks": ..., "norm": {"scale"}}`; `blocks` leaves are stacked `[L, ...]` and
run by `lax.scan`. Norm scales and the bias tables stay float32; the residual stream is float32 (Wan keeps it in bf16).
"""

import dataclasses
import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from one4d_jax.models.config import ConfigMixin
from one4d_jax.models.lora import Dense
from one4d_jax.models.wan import layers
from one4d_jax.models.wan.layers import RMSNorm

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigMixin):
  """Encoder architecture plus execution policy; `dtype` is the matmul dtype (softmax and norms run in float32)."""

  vocab_size: int
  dim: int
  ffn_dim: int
  num_heads: int
  num_layers: int
  head_dim: int = 64
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim


PRESETS: dict[str, T5Config] = {
    # Wan2.1:wan/modules/t5.py:L456-469 (5.68 B parameters in the encoder).
    "umt5-xxl": T5Config(vocab_size=256384, dim=4096, ffn_dim=10240, num_heads=64, num_layers=24),
    # Test size: max_distance 20 so that sequences of a few dozen tokens reach the log-spaced and the clipped buckets.
    "tiny": T5Config(vocab_size=320, dim=32, ffn_dim=64, num_heads=4, num_layers=2, head_dim=8, max_distance=20,
                     dtype="float32", param_dtype="float32"),
}


def preset(name: str, **overrides) -> T5Config:
  if name not in PRESETS:
    raise ValueError(f"unknown T5 preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets [length (query), length (key)] of key - query: half the buckets per direction, exact below
  a quarter of num_buckets, log-spaced up to max_distance, clipped beyond. Static numpy in float32 like the
  references, so the bucket edges (exact powers of two) round the same way."""
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  n = num_buckets // 2
  max_exact = n // 2
  buckets = (rel > 0).astype(np.int64) * n
  dist = np.abs(rel)
  scaled = np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
      math.log(max_distance / max_exact)) * np.float32(n - max_exact)
  large = np.minimum(max_exact + scaled.astype(np.int64), n - 1)
  return (buckets + np.where(dist < max_exact, dist, large)).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------- modules


def _dense(cfg: T5Config, features: int, axes, name: str) -> Dense:
  return Dense(features, axes, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), use_bias=False,
               name=name)


class Attention(nn.Module):
  """Self-attention with this layer's relative position bias, no 1/sqrt(d) scale, padded keys masked."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x, buckets, mask):
    """x [B, L, D]; buckets [L, L] int; mask [B, L] bool (True = real token)."""
    cfg = self.cfg
    table = self.param("rel_bias", nn.with_logical_partitioning(nn.initializers.normal(0.1), (None, None)),
                       (cfg.num_buckets, cfg.num_heads))
    bias = einops.rearrange(table[buckets], "q k n -> n q k").astype(jnp.float32)
    heads = lambda y: einops.rearrange(y, "b l (n d) -> b l n d", n=cfg.num_heads)
    q, k, v = (heads(_dense(cfg, cfg.inner_dim, ("embed", "heads"), name)(x)) for name in ("q", "k", "v"))
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) + bias
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    out = einops.rearrange(jnp.einsum("bnqk,bknd->bqnd", weights, v), "b l n d -> b l (n d)")
    return _dense(cfg, cfg.dim, ("heads", "embed"), "o")(out)


class Block(nn.Module):
  cfg: T5Config

  @nn.compact
  def __call__(self, x, buckets, mask):
    """x [B, L, D] float32 residual stream."""
    cfg = self.cfg
    x = x + Attention(cfg, name="attn")(RMSNorm(cfg.eps, "embed", name="norm1")(x), buckets, mask).astype(jnp.float32)
    h = RMSNorm(cfg.eps, "embed", name="norm2")(x)
    gate = nn.gelu(_dense(cfg, cfg.ffn_dim, ("embed", "mlp"), "gate")(h), approximate=True)
    h = _dense(cfg, cfg.ffn_dim, ("embed", "mlp"), "fc1")(h) * gate
    return x + _dense(cfg, cfg.dim, ("mlp", "embed"), "fc2")(h).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------- functional API


def _check_inputs(ids, mask):
  problems = []
  if ids.ndim != 2:
    problems.append(f"token ids must be [B, L], got shape {ids.shape}")
  if mask.shape != ids.shape:
    problems.append(f"the attention mask must have the shape of the ids {ids.shape}, got {mask.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    problems.append(f"token ids must be integers, got {ids.dtype}")
  if problems:
    raise ValueError("bad umT5 inputs:\n  " + "\n  ".join(problems))


def encode(params: Params, cfg: T5Config, ids, mask):
  """ids, mask [B, L] (mask 1 for real tokens, right-padded, as the tokenizer returns them) -> [B, L, dim] float32: the
  final normalised hidden states, zero at positions >= mask.sum(-1) (Wan's truncate-then-zero-pad, wan_spec 4.1)."""
  _check_inputs(ids, mask)
  mask = jnp.asarray(mask) > 0
  length = ids.shape[1]
  x = jnp.take(params["token_embedding"]["embedding"], ids, axis=0).astype(jnp.float32)
  buckets = jnp.asarray(relative_position_buckets(length, cfg.num_buckets, cfg.max_distance))
  block = Block(cfg)

  def body(h, layer_params):
    return block.apply({"params": layer_params}, h, buckets, mask), None

  x = jax.lax.scan(body, x, params["blocks"])[0]
  x = RMSNorm(cfg.eps, "embed").apply({"params": params["norm"]}, x)
  real = jnp.arange(length)[None, :] < mask.sum(-1)[:, None]
  return jnp.where(real[..., None], x, 0.0)


# ------------------------------------------------------------------------------------------- init and axis names


def _init_boxed(cfg: T5Config, rng: jax.Array) -> Params:
  """Parameters wrapped in `nn.LogicallyPartitioned` boxes; block leaves stacked [L, ...] with axis name 'layers'."""
  k_embed, k_blocks, k_norm = jax.random.split(rng, 3)
  embedding = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))(
      k_embed, (cfg.vocab_size, cfg.dim), jnp.dtype(cfg.param_dtype))
  x = jnp.zeros((1, 1, cfg.dim), jnp.float32)
  buckets, mask = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)
  blocks = layers.stacked(lambda key: Block(cfg).init(key, x, buckets, mask)["params"], k_blocks, cfg.num_layers)
  norm = RMSNorm(cfg.eps, "embed").init(k_norm, x)["params"]
  return {"token_embedding": {"embedding": embedding}, "blocks": blocks, "norm": norm}


# init(cfg, rng): random parameters in cfg.param_dtype (norm scales and bias tables float32); abstract_params;
# logical_axes
init, abstract_params, logical_axes = layers.param_functions(_init_boxed)
