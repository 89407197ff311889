"""The Wan2.1 DiT (T2V, I2V, Fun-InP) as pure functions over an explicit parameter tree.

Spec: `shared/reference/wan_spec.md` sections 1.2-1.4. The tree has three parts,
`{"embed": ..., "blocks": ..., "head": ...}`; `blocks` holds every layer's weights stacked on a leading `[L]` axis and
is run by `lax.scan`, so the One4D model can run the same blocks in segments between its control links.

Every activation carries a leading branch axis K (1 for plain Wan, 2 for One4D's RGB/XYZ branches): latents are
`[K, B, C, F, H, W]`, tokens `[K, B, L, D]`. Timestep, text and CLIP context are shared by the branches.
"""

import dataclasses
import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from one4d_jax import sharding
from one4d_jax.models import attention, context_parallel
from one4d_jax.models.config import ConfigMixin
from one4d_jax.models.lora import LORA_MODES, Dense, stack_branches
from one4d_jax.models.wan import layers
from one4d_jax.models.wan.layers import AffineLayerNorm, RMSNorm, layer_norm

Params = dict[str, Any]

# Activations of a block that remat policies can name (checkpoint_name): the block's input (the residual stream, what
# a scan over remat'd blocks keeps per layer), q/k/v of self-attention after norm and RoPE, the self- and
# cross-attention outputs before their output projections, and the FFN's hidden layer.
REMAT_NAMES = ("block_input", "qkv", "self_attn", "cross_attn", "ffn_hidden")


def _save(*names):
  return jax.checkpoint_policies.save_only_these_names(*names)


def _offload(*names):
  return jax.checkpoint_policies.save_and_offload_only_these_names(
      names_which_can_be_saved=[], names_which_can_be_offloaded=list(names), offload_src="device",
      offload_dst="pinned_host")


REMAT_POLICIES = {
    "none": None,  # no jax.checkpoint: the backward keeps every intermediate of every block
    "full": jax.checkpoint_policies.nothing_saveable,  # keep the block inputs only, recompute the rest
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_attn": _save("qkv", "self_attn"),  # attention inputs and output kept
    "offload_block_input": _offload("block_input"),  # the residual stream in host memory (TPU / GPU)
}


def remat_policy(name: str):
  """A named policy of REMAT_POLICIES, or `save:NAME,...` (keep these REMAT_NAMES, recompute the rest) or
  `offload:NAME,...` (move these to host memory between the forward and backward passes)."""
  if name in REMAT_POLICIES:
    return REMAT_POLICIES[name]
  kind, _, names = name.partition(":")
  names = tuple(filter(None, names.split(",")))
  unknown = sorted(set(names) - set(REMAT_NAMES))
  if kind not in ("save", "offload") or not names or unknown:
    raise ValueError(f"unknown remat policy {name!r}: use one of {sorted(REMAT_POLICIES)}, or save:NAMES / "
                     f"offload:NAMES with names from {REMAT_NAMES}" + (f" (unknown: {unknown})" if unknown else ""))
  return (_save if kind == "save" else _offload)(*names)


# Logical names of the token stream [K branches, B, L, D] and of the shared context [K', B, n, D] (text, CLIP).
TOKENS = ("activation_branch", "activation_batch", "activation_length", "activation_embed")
CONTEXT = ("activation_branch", "activation_batch", "activation_context", "activation_embed")


@dataclasses.dataclass(frozen=True)
class Policy(ConfigMixin):
  """How to run a DiT, not what it computes: free to differ between the run that wrote a checkpoint and the one that
  reads it (config.model holds it). `dtype` is the matmul/attention dtype; norms, modulation, the residual stream,
  the time embedding, RoPE and the head always run in float32 (wan_spec 1.4)."""

  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"
  attention: str = "auto"
  remat: str = "none"  # a name of REMAT_POLICIES, or save:NAMES / offload:NAMES (see remat_policy)
  lora_scale: float = 1.0  # alpha / rank of the LoRA factors, when a LoRA tree is given
  lora_mode: str = "factored"  # "auto" for inference (one4d_jax.models.lora)
  sharding_rules: sharding.Rules = ()  # logical -> mesh axes for activations (config.sharding_rules); () = none
  context_parallel: str = "none"  # self-attention over a sequence split on the mesh: none | ulysses | ring

  def __post_init__(self):
    remat_policy(self.remat)
    attention.get(self.attention)
    if self.lora_mode not in LORA_MODES:
      raise ValueError(f"lora_mode must be one of {LORA_MODES}, got {self.lora_mode!r}")
    if self.context_parallel not in context_parallel.MODES:
      raise ValueError(f"context_parallel must be one of {context_parallel.MODES}, got {self.context_parallel!r}")
    object.__setattr__(self, "sharding_rules", sharding.as_rules(self.sharding_rules))


FLOAT32 = Policy(dtype="float32", param_dtype="float32")  # tests and parity checks


@dataclasses.dataclass(frozen=True)
class DiTConfig(ConfigMixin):
  """A Wan DiT: its architecture (every field but `policy`: what a checkpoint fixes) and `policy`, how this run
  executes it. `architecture()` is the part two runs of one checkpoint must agree on, compared as one object."""

  dim: int
  ffn_dim: int
  num_heads: int
  num_layers: int
  in_dim: int = 16
  out_dim: int = 16
  text_dim: int = 4096
  text_len: int = 512
  freq_dim: int = 256
  image_dim: int | None = None  # CLIP width for I2V / Fun-InP (1280); None for T2V
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  rope_theta: float = 10000.0
  policy: Policy = Policy()

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
    object.__setattr__(self, "patch_size", tuple(self.patch_size))

  @classmethod
  def from_dict(cls, d: dict) -> "DiTConfig":
    """A config as `to_json` writes it (the policy nested)."""
    d = dict(d)
    return super().from_dict({**d, "policy": Policy.from_dict(d.pop("policy", {}))})

  def architecture(self) -> "DiTConfig":
    """This config with the default policy: equal for equal architectures."""
    return self.replace(policy=Policy())

  def with_policy(self, **changes) -> "DiTConfig":
    """This architecture run another way (`changes`: fields of Policy)."""
    return self.replace(policy=self.policy.replace(**changes))

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def is_i2v(self) -> bool:
    return self.image_dim is not None


_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
_1_3B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
PRESETS: dict[str, DiTConfig] = {
    "t2v-1.3b": DiTConfig(**_1_3B),
    "t2v-14b": DiTConfig(**_14B),
    "i2v-14b": DiTConfig(**_14B, in_dim=36, image_dim=1280),
    "fun-inp-1.3b": DiTConfig(**_1_3B, in_dim=36, image_dim=1280),
    "fun-inp-14b": DiTConfig(**_14B, in_dim=36, image_dim=1280),
    # Test size: 2 heads of 16, so RoPE splits 8/4/4 like 44/42/42 does for 128.
    "tiny": DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=36, text_dim=24, text_len=32, freq_dim=16,
                      image_dim=20, policy=FLOAT32),
}


def preset(name: str, **overrides) -> DiTConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown DiT preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------------------- layers


def _dense(cfg: DiTConfig, features: int, axes, name: str, dtype=None) -> Dense:
  run = cfg.policy
  return Dense(features, axes, dtype=jnp.dtype(dtype or run.dtype), param_dtype=jnp.dtype(run.param_dtype),
               lora_scale=run.lora_scale, lora_mode=run.lora_mode, name=name)


# ------------------------------------------------------------------------------------------------ positional tables


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
  """[cos(t w), sin(t w)] with w_i = 10000^(-i/(dim/2)); frequencies from float64, cos first (wan_spec 1.2.3)."""
  half = dim // 2
  freqs = jnp.asarray(np.power(10000.0, -np.arange(half, dtype=np.float64) / half), jnp.float32)
  angle = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def rope_tables(cfg: DiTConfig, grid: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
  """cos, sin [F*H*W, head_dim/2] for the (f, h, w) token grid; channels split (t, h, w) = (d-4(d//6), 2(d//6), 2(d//6))
  and rotated in adjacent pairs (wan_spec 1.3). Static numpy in float64, cast to float32."""
  d = cfg.head_dim
  widths = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
  angles = []
  for n, width in zip(grid, widths):
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, width, 2, dtype=np.float64) / width)
    angles.append(np.outer(np.arange(n, dtype=np.float64), inv_freq))
  f, h, w = grid
  table = np.concatenate([
      np.broadcast_to(angles[0][:, None, None], (f, h, w, angles[0].shape[-1])),
      np.broadcast_to(angles[1][None, :, None], (f, h, w, angles[1].shape[-1])),
      np.broadcast_to(angles[2][None, None, :], (f, h, w, angles[2].shape[-1])),
  ], axis=-1).reshape(f * h * w, d // 2)
  return np.cos(table).astype(np.float32), np.sin(table).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [..., L, heads, d]; rotates adjacent channel pairs (2i, 2i+1) by the angle of pair i."""
  x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x1, x2 = x32[..., 0], x32[..., 1]
  cos, sin = cos[:, None, :], sin[:, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------- modules


def constrain(cfg: DiTConfig, x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Shard an activation by logical names with the config's rules (a no-op without a mesh; see one4d_jax.sharding)."""
  return sharding.constrain(x, names, cfg.policy.sharding_rules)


def _attend(cfg: DiTConfig, q, k, v, self_attention: bool = False):
  """q [K, B, Lq, D], k/v [K or 1, B, Lk, D] -> [K, B, Lq, D]; branches fold into the batch, so they never mix.

  The batch folds outside the branches, `(b k)`, so a batch split over devices stays a contiguous split. Under a
  mesh, self-attention over a sequence split on the `context` mesh axis runs `cfg.policy.context_parallel` (Ulysses or
  ring); a kernel GSPMD cannot partition (a Pallas call: `attention.runs_per_shard`) runs per shard; otherwise GSPMD
  gathers the keys and values it needs."""
  branches = q.shape[0]
  k, v = (jnp.broadcast_to(a, (branches, *a.shape[1:])) for a in (k, v))
  split = lambda x: einops.rearrange(x, "k b l (n d) -> (b k) l n d", n=cfg.num_heads)
  q, k, v = split(q), split(k), split(v)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = attention.get(cfg.policy.attention)(q, k, v)
  elif self_attention and cfg.policy.context_parallel != "none":
    out = _context_parallel(cfg, q, k, v)
  elif attention.runs_per_shard(cfg.policy.attention, q.dtype):
    out = _per_shard(cfg, q, k, v)
  else:
    out = attention.get(cfg.policy.attention)(q, k, v)
  return einops.rearrange(out, "(b k) l n d -> k b l (n d)", k=branches)


def _spec(cfg: DiTConfig, shape, *, length: bool):
  """The PartitionSpec of attention operands [(b k), L, n, d] on the ambient mesh by the config's rules (none: all
  replicated): (b k) over the batch then branch axes (the fold puts batch outer), L over `activation_length`'s axes if
  `length`, n over `activation_heads`'. shard_map needs even splits, so each dimension keeps the longest prefix of
  its axes that divides it (a guided sample of 1 keeps none)."""
  rules = cfg.policy.sharding_rules
  axes = lambda name: sharding.axes_tuple(sharding.mesh_axes(name, rules)) if rules else ()
  batch = axes("activation_batch") + axes("activation_branch")
  spec = jax.sharding.PartitionSpec(batch or None, (length and axes("activation_length")) or None,
                                    axes("activation_heads") or None)
  return sharding.fit_spec(spec, shape[:3], jax.sharding.get_abstract_mesh())


def _per_shard(cfg: DiTConfig, q, k, v):
  """The attention kernel inside shard_map: each device attends its examples' and heads' queries (its share of the
  sequence too, where `activation_length` is split) to all their keys and values. check_vma=False: a Pallas call
  does not say which mesh axes its outputs vary over."""
  q_spec, kv_spec = _spec(cfg, q.shape, length=True), _spec(cfg, k.shape, length=False)
  return jax.shard_map(attention.get(cfg.policy.attention), in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                       check_vma=False)(q, k, v)


def _context_parallel(cfg: DiTConfig, q, k, v):
  """Self-attention [(b k), L, n, d] with L split over the mesh axes of `activation_length`, by shard_map (see
  one4d_jax.models.context_parallel). `auto` runs a kernel that masks the padding of a ragged L inside: splash on TPU
  (Ulysses), else flash."""
  run = cfg.policy
  length = sharding.axes_tuple(sharding.mesh_axes("activation_length", run.sharding_rules))
  if len(length) != 1:
    raise ValueError(f"context_parallel={run.context_parallel!r} needs activation_length ruled onto one mesh axis, "
                     f"got {sharding.mesh_axes('activation_length', run.sharding_rules)!r}")
  spec = _spec(cfg, q.shape, length=False)
  kernel = run.attention
  if kernel == "auto":  # the masking kernel of the backend: splash on TPU under Ulysses; ring needs flash's lse
    ulysses_splash = run.context_parallel == "ulysses" and attention.auto_kernel(q.dtype) == "splash"
    kernel = "splash" if ulysses_splash else "flash"
  return context_parallel.attention(q, k, v, mode=run.context_parallel, kernel=kernel,
                                    batch_axes=spec[0], heads_axes=spec[2], axis=length[0])


class SelfAttention(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, cos, sin):
    cfg = self.cfg
    heads_axes = TOKENS[:3] + ("activation_heads",)
    q = RMSNorm(cfg.eps, name="norm_q")(_dense(cfg, cfg.dim, ("embed", "heads"), "q")(x)).astype(cfg.policy.dtype)
    k = RMSNorm(cfg.eps, name="norm_k")(_dense(cfg, cfg.dim, ("embed", "heads"), "k")(x)).astype(cfg.policy.dtype)
    v = _dense(cfg, cfg.dim, ("embed", "heads"), "v")(x)
    heads = lambda y: y.reshape(*y.shape[:-1], cfg.num_heads, cfg.head_dim)
    q = apply_rope(heads(q), cos, sin).reshape(q.shape)
    k = apply_rope(heads(k), cos, sin).reshape(k.shape)
    q, k, v = (checkpoint_name(constrain(cfg, a, heads_axes), "qkv") for a in (q, k, v))
    out = checkpoint_name(constrain(cfg, _attend(cfg, q, k, v, self_attention=True), heads_axes), "self_attn")
    return _dense(cfg, cfg.dim, ("heads", "embed"), "o")(out)


class CrossAttention(nn.Module):
  """Attention over the text tokens and, for I2V, a second softmax over the CLIP image tokens, summed."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, text, image):
    cfg = self.cfg
    proj = lambda name: _dense(cfg, cfg.dim, ("embed", "heads"), name)
    heads_axes, context_heads = TOKENS[:3] + ("activation_heads",), CONTEXT[:3] + ("activation_heads",)
    q = constrain(cfg, RMSNorm(cfg.eps, name="norm_q")(proj("q")(x)).astype(cfg.policy.dtype), heads_axes)
    k = RMSNorm(cfg.eps, name="norm_k")(proj("k")(text)).astype(cfg.policy.dtype)
    out = _attend(cfg, q, constrain(cfg, k, context_heads), constrain(cfg, proj("v")(text), context_heads))
    if cfg.is_i2v:
      k_img = RMSNorm(cfg.eps, name="norm_k_img")(proj("k_img")(image)).astype(cfg.policy.dtype)
      out = out + _attend(cfg, q, constrain(cfg, k_img, context_heads),
                          constrain(cfg, proj("v_img")(image), context_heads))
    out = checkpoint_name(constrain(cfg, out, heads_axes), "cross_attn")
    return _dense(cfg, cfg.dim, ("heads", "embed"), "o")(out)


class WanBlock(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, e0, text, image, cos, sin):
    """x [K, B, L, D] float32 residual stream; e0 [K, B, 6, D] float32."""
    cfg = self.cfg
    x = checkpoint_name(constrain(cfg, x, TOKENS), "block_input")
    modulation = self.param("modulation", nn.with_logical_partitioning(
        lambda key, shape: jax.random.normal(key, shape) / math.sqrt(cfg.dim), (None, "embed")), (6, cfg.dim))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.unstack(modulation.astype(jnp.float32) + e0, axis=-2)
    mod = lambda y, shift, scale: y * (1 + scale[..., None, :]) + shift[..., None, :]

    h = mod(layer_norm(x, cfg.eps), shift1, scale1)
    x = x + SelfAttention(cfg, name="self_attn")(h, cos, sin).astype(jnp.float32) * gate1[..., None, :]
    x = constrain(cfg, x, TOKENS)
    h = AffineLayerNorm(cfg.eps, name="norm3")(x)
    x = x + CrossAttention(cfg, name="cross_attn")(h, text, image).astype(jnp.float32)
    x = constrain(cfg, x, TOKENS)
    h = mod(layer_norm(x, cfg.eps), shift2, scale2)
    h = _dense(cfg, cfg.ffn_dim, ("embed", "mlp"), "ffn_1")(h)
    h = checkpoint_name(constrain(cfg, h, TOKENS[:3] + ("activation_mlp",)), "ffn_hidden")
    h = _dense(cfg, cfg.dim, ("mlp", "embed"), "ffn_2")(nn.gelu(h, approximate=True))
    return constrain(cfg, x + h.astype(jnp.float32) * gate2[..., None, :], TOKENS)


class Embed(nn.Module):
  """Patch, time, text and (I2V) CLIP-image embeddings."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, t, text, image):
    """x [K, B, C, F, H, W]; t [B]; text [B, n <= text_len, text_dim]; image [B, n_img, image_dim] or None.

    Returns tokens [K, B, L, D] f32, e [K', B, D] f32, e0 [K', B, 6, D] f32, text [K', B, text_len, D] and image
    tokens, where K' = 1 without LoRA: context shared by the branches is embedded once, and only a LoRA tree with K
    branches makes it branch-specific (each Dense broadcasts its input over the LoRA's branches).
    """
    cfg = self.cfg
    pt, ph, pw = cfg.patch_size
    patches = einops.rearrange(x, "k b c (f pt) (h ph) (w pw) -> k b (f h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)
    tokens = _dense(cfg, cfg.dim, ("patch", "embed"), "patch_embedding")(patches).astype(jnp.float32)

    f32 = jnp.float32
    s = sinusoidal_embedding(t, cfg.freq_dim)[None]
    e = _dense(cfg, cfg.dim, ("freq", "embed"), "time_embedding_1", f32)(s)
    e = _dense(cfg, cfg.dim, ("embed", "embed_out"), "time_embedding_2", f32)(nn.silu(e))
    e0 = _dense(cfg, 6 * cfg.dim, ("embed", "mlp"), "time_projection", f32)(nn.silu(e))
    e0 = e0.reshape(*e0.shape[:-1], 6, cfg.dim)

    text = text[None]
    text = _dense(cfg, cfg.dim, ("text", "embed"), "text_embedding_1")(text)
    text = _dense(cfg, cfg.dim, ("embed", "embed_out"), "text_embedding_2")(nn.gelu(text, approximate=True))

    if cfg.is_i2v:
      image = image[None]
      image = AffineLayerNorm(1e-5, "image", name="img_norm_1")(image)
      image = _dense(cfg, cfg.image_dim, ("image", "image_out"), "img_linear_1")(image)
      image = _dense(cfg, cfg.dim, ("image", "embed"), "img_linear_2")(nn.gelu(image, approximate=False))
      image = constrain(cfg, AffineLayerNorm(1e-5, name="img_norm_2")(image).astype(cfg.policy.dtype), CONTEXT)
    return constrain(cfg, tokens, TOKENS), e, e0, constrain(cfg, text.astype(cfg.policy.dtype), CONTEXT), image


class Head(nn.Module):
  """Output projection modulated by e (the time embedding before time_projection), float32."""

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, e):
    cfg = self.cfg
    modulation = self.param("modulation", nn.with_logical_partitioning(
        lambda key, shape: jax.random.normal(key, shape) / math.sqrt(cfg.dim), (None, "embed")), (2, cfg.dim))
    shift, scale = jnp.unstack(modulation.astype(jnp.float32)[None, None] + e[..., None, :], axis=-2)
    h = layer_norm(x, cfg.eps) * (1 + scale[..., None, :]) + shift[..., None, :]
    return _dense(cfg, cfg.out_dim * math.prod(cfg.patch_size), ("embed", "patch_out"), "linear", jnp.float32)(h)


# ------------------------------------------------------------------------------------------------- functional API


def _check_inputs(cfg: DiTConfig, x, t, text, image):
  problems = []
  if x.ndim != 6:
    problems.append(f"latents must be [K, B, C, F, H, W], got shape {x.shape}")
  else:
    _, b, c, *fhw = x.shape
    if c != cfg.in_dim:
      problems.append(f"latents have {c} channels, the model expects in_dim={cfg.in_dim}")
    if any(n % p for n, p in zip(fhw, cfg.patch_size)):
      problems.append(f"latent size F,H,W={tuple(fhw)} is not divisible by patch_size {cfg.patch_size}")
    if t.shape != (b,):
      problems.append(f"timestep must have shape (B,)=({b},), got {t.shape}")
    if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
      problems.append(f"text must be [B={b}, n, text_dim={cfg.text_dim}], got {text.shape}")
    elif text.shape[1] > cfg.text_len:
      problems.append(f"text has {text.shape[1]} tokens, more than text_len={cfg.text_len}")
    if cfg.is_i2v and (image is None or image.ndim != 3 or image.shape[0] != b or image.shape[2] != cfg.image_dim):
      problems.append(f"an I2V model needs CLIP tokens [B={b}, n, image_dim={cfg.image_dim}], got "
                      f"{None if image is None else image.shape}")
    if not cfg.is_i2v and image is not None:
      problems.append("a T2V model takes no CLIP image tokens (image_dim is None)")
  if problems:
    raise ValueError("bad DiT inputs:\n  " + "\n  ".join(problems))


def _variables(params: Params, lora: list[Params] | None) -> dict:
  """Flax variables: the frozen `params` and, given one LoRA tree per branch, their factors stacked on a branch axis
  (stacked where they are used, one layer at a time, so no copy of a whole LoRA tree is ever made)."""
  if not lora or any(tree is None for tree in lora):
    return {"params": params}
  return {"params": params, "lora": stack_branches(lora)}


def lora_part(lora: list[Params] | None, name: str) -> list[Params] | None:
  """The per-branch LoRA trees of one part of the model (`embed`, `blocks`, `head`), or None where it has none."""
  return None if not lora or any(name not in tree for tree in lora) else [tree[name] for tree in lora]


def embed(params: Params, cfg: DiTConfig, x, t, text, image=None, lora: list[Params] | None = None):
  """Tokens and conditioning for the blocks; see `Embed`. Text is zero-padded to text_len (attended, no mask)."""
  _check_inputs(cfg, x, t, text, image)
  text = jnp.pad(text, ((0, 0), (0, cfg.text_len - text.shape[1]), (0, 0)))
  return Embed(cfg).apply(_variables(params, lora), x, t, text, image)


def run_blocks(block_params: Params, cfg: DiTConfig, x, e0, text, image, grid: tuple[int, int, int],
               lora: list[Params] | None = None, after_block=None):
  """Scan the blocks whose weights are stacked in `block_params` ([L, ...] leaves; one LoRA tree per branch, leaves
  [L, ...]) over the tokens x [K, B, L, D]. `after_block(h, layer_index) -> h`, if given, runs after every block
  inside the scan (One4D's control links)."""
  cos, sin = (jnp.asarray(a) for a in rope_tables(cfg, grid))
  block = WanBlock(cfg)

  def body(h, layer):
    layer_params, layer_lora, index = layer
    h = block.apply(_variables(layer_params, layer_lora), h, e0, text, image, cos, sin)
    return constrain(cfg, h if after_block is None else after_block(h, index), TOKENS), None

  if cfg.policy.remat != "none":
    body = jax.checkpoint(body, policy=remat_policy(cfg.policy.remat), prevent_cse=False)
  layers = jax.tree.leaves(block_params)[0].shape[0]
  return jax.lax.scan(body, x, (block_params, lora, jnp.arange(layers)))[0]


def head(params: Params, cfg: DiTConfig, x, e, grid: tuple[int, int, int], lora: list[Params] | None = None):
  """Tokens [K, B, L, D] -> velocity [K, B, out_dim, F, H, W] float32 (unpatchify order (pt, ph, pw, c))."""
  out = Head(cfg).apply(_variables(params, lora), x, e)
  f, h, w = grid
  pt, ph, pw = cfg.patch_size
  return einops.rearrange(out, "k b (f h w) (pt ph pw c) -> k b c (f pt) (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph,
                          pw=pw)


def token_grid(cfg: DiTConfig, latent_shape) -> tuple[int, int, int]:
  return tuple(n // p for n, p in zip(latent_shape[-3:], cfg.patch_size))


def apply(params: Params, cfg: DiTConfig, x, t, text, image=None, lora: list[Params] | None = None):
  """Branch-axis forward: x [K, B, in_dim, F, H, W] -> [K, B, out_dim, F, H, W] (Wan's v = eps - x0).

  `lora`: optionally one tree of LoRA factors per branch, each mirroring `params` (see `one4d_jax.models.lora`)."""
  grid = token_grid(cfg, x.shape)
  tokens, e, e0, text, image = embed(params["embed"], cfg, x, t, text, image, lora_part(lora, "embed"))
  tokens = run_blocks(params["blocks"], cfg, tokens, e0, text, image, grid, lora_part(lora, "blocks"))
  return head(params["head"], cfg, tokens, e, grid, lora_part(lora, "head"))


def forward(params: Params, cfg: DiTConfig, x, t, text, image=None):
  """Plain Wan forward: x [B, in_dim, F, H, W], t [B] in [0, 1000], text [B, n<=512, text_dim],
  image [B, 257, image_dim] (I2V only) -> [B, out_dim, F, H, W] float32."""
  return apply(params, cfg, x[None], t, text, image)[0]


# ------------------------------------------------------------------------------------------- init and axis names


def _example_inputs(cfg: DiTConfig):
  pt, ph, pw = cfg.patch_size
  x = jnp.zeros((1, 1, cfg.in_dim, pt, ph, pw), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  text = jnp.zeros((1, cfg.text_len, cfg.text_dim), jnp.float32)
  image = jnp.zeros((1, 1, cfg.image_dim), jnp.float32) if cfg.is_i2v else None
  return x, t, text, image


def _init_boxed(cfg: DiTConfig, rng: jax.Array) -> Params:
  """Parameters wrapped in `nn.LogicallyPartitioned` boxes; block leaves stacked [L, ...] with axis name 'layers'.
  The example inputs are one token: activations go unsharded whatever mesh is set."""
  cfg = cfg.with_policy(sharding_rules=(), context_parallel="none")
  k_embed, k_blocks, k_head = jax.random.split(rng, 3)
  x, t, text, image = _example_inputs(cfg)
  embed_p = Embed(cfg).init(k_embed, x, t, text, image)["params"]
  tokens, e, e0, text_tok, image_tok = Embed(cfg).apply({"params": nn.unbox(embed_p)}, x, t, text, image)
  cos, sin = (jnp.asarray(a) for a in rope_tables(cfg, (1, 1, 1)))
  init_block = lambda key: WanBlock(cfg).init(key, tokens, e0, text_tok, image_tok, cos, sin)["params"]
  blocks = layers.stacked(init_block, k_blocks, cfg.num_layers)
  head_p = Head(cfg).init(k_head, tokens, e)["params"]
  return {"embed": embed_p, "blocks": blocks, "head": head_p}


# init(cfg, rng): random parameters (Xavier linears, zero biases) in cfg.policy.param_dtype; abstract_params;
# logical_axes
init, abstract_params, logical_axes = layers.param_functions(_init_boxed)
