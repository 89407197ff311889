"""The CLIP ViT-H/14 vision tower whose penultimate tokens Wan2.1 I2V / Fun-InP attend to, plus its preprocessing.

Spec: `shared/reference/wan_spec.md` section 4.2 (Wan2.1:wan/modules/clip.py). Wan reads the hidden states after block
31 of 32, all 257 tokens, with no post-LN and no projection, so the tree holds only the `num_layers - 1` blocks that run
(the converter skips the last block, the post-LN and the head). Pre-LN after the position embeddings, exact GELU,
LayerNorm eps 1e-5, patch convolution without bias.

Tree: `{"embed": {patch_embedding, cls_embedding, pos_embedding, pre_norm}, "blocks": ...}`; `blocks` leaves are stacked
`[num_layers - 1, ...]` and run by `lax.scan`. Norms, the class and position embeddings and the residual stream are
float32.
"""

import dataclasses
import functools
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from one4d_jax.models import attention
from one4d_jax.models.config import ConfigMixin
from one4d_jax.models.lora import Dense
from one4d_jax.models.wan import layers
from one4d_jax.models.wan.layers import AffineLayerNorm

Params = dict[str, Any]

# open-clip / OpenAI CLIP normalisation (Wan2.1:wan/modules/clip.py:L457-466)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPConfig(ConfigMixin):
  """Vision tower architecture plus execution policy. `num_layers` is the published depth; the last block is not part
  of the parameters because its output is never read."""

  image_size: int = 224
  patch_size: int = 14
  dim: int = 1280
  mlp_dim: int = 5120
  num_heads: int = 16
  num_layers: int = 32
  eps: float = 1e-5
  dtype: str = "bfloat16"
  param_dtype: str = "bfloat16"
  attention: str = "xla"

  def __post_init__(self):
    problems = []
    if self.dim % self.num_heads:
      problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.image_size % self.patch_size:
      problems.append(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
    if self.num_layers < 2:
      problems.append(f"num_layers={self.num_layers}: the penultimate output needs at least 2 layers")
    if problems:
      raise ValueError("bad CLIPConfig: " + "; ".join(problems))
    attention.get(self.attention)

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def num_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1

  @property
  def used_layers(self) -> int:
    return self.num_layers - 1


PRESETS: dict[str, CLIPConfig] = {
    "vit-h-14": CLIPConfig(),  # open-clip xlm-roberta-large ViT-H/14 (Wan2.1:wan/modules/clip.py:L471-498)
    # Test size: 16 patches + class token, three layers so that two blocks are scanned.
    "tiny": CLIPConfig(image_size=32, patch_size=8, dim=32, mlp_dim=64, num_heads=4, num_layers=3, dtype="float32",
                       param_dtype="float32"),
}


def preset(name: str, **overrides) -> CLIPConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown CLIP preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------------- preprocessing


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
  """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fractions t (PyTorch's a = -0.75)."""
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  one = np.float32(1)
  return [far(t + one), near(t), near(one - t), far((one - t) + one)]


@functools.lru_cache(maxsize=16)
def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] matrix of `F.interpolate(mode="bicubic", align_corners=False)` along one axis: source
  coordinate (i + 0.5) * in/out - 0.5, taps clamped to the border, no antialias. float32 arithmetic like PyTorch's CPU
  kernel, whose source coordinate is one fused multiply-add (a single rounding; up to 2e-5 apart otherwise)."""
  scale = np.float32(size_in) / np.float32(size_out)
  centres = np.arange(size_out, dtype=np.float32) + np.float32(0.5)
  src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
  start = np.floor(src)
  weights = _cubic_weights((src - start).astype(np.float32))
  matrix = np.zeros((size_out, size_in), np.float32)
  rows = np.arange(size_out)
  for offset, w in zip(range(-1, 3), weights):
    np.add.at(matrix, (rows, np.clip(start.astype(np.int64) + offset, 0, size_in - 1)), w)
  matrix.setflags(write=False)
  return matrix


def resize_bicubic(x, size: tuple[int, int]):
  """x [..., H, W] -> [..., h, w], equal to torch bicubic (a = -0.75, half-pixel centres, clamped borders, no
  antialias); `jax.image.resize` differs (a = -0.5 and antialiasing when shrinking)."""
  rows = jnp.asarray(bicubic_matrix(x.shape[-2], size[0]))
  cols = jnp.asarray(bicubic_matrix(x.shape[-1], size[1]))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,...hw->...ow", rows, x.astype(jnp.float32), precision=hp)
  return jnp.einsum("...hw,ow->...ho", x, cols, precision=hp)


def preprocess(images, image_size: int):
  """Wan's CLIP input: images [B, 3, H, W] in [-1, 1] -> resized straight to a square (no crop), mapped to [0, 1] and
  normalised with the CLIP mean and std -> [B, 3, image_size, image_size] float32."""
  x = resize_bicubic(images, (image_size, image_size)) * 0.5 + 0.5
  mean = jnp.asarray(MEAN, jnp.float32)[:, None, None]
  std = jnp.asarray(STD, jnp.float32)[:, None, None]
  return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------- modules


def _dense(cfg: CLIPConfig, features: int, axes, name: str, use_bias: bool = True) -> Dense:
  return Dense(features, axes, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), use_bias=use_bias,
               name=name)


class Embed(nn.Module):
  """Patches (a stride-p convolution without bias, as a dense over flattened patches), class token, position
  embeddings, pre-LN."""

  cfg: CLIPConfig

  @nn.compact
  def __call__(self, pixels):
    """pixels [B, 3, S, S] normalised -> tokens [B, 1 + (S/p)^2, D] float32."""
    cfg = self.cfg
    p = cfg.patch_size
    patches = einops.rearrange(pixels, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
    x = _dense(cfg, cfg.dim, ("patch", "embed"), "patch_embedding", use_bias=False)(patches).astype(jnp.float32)
    embedding = lambda name, shape, axes: self.param(
        name, nn.with_logical_partitioning(nn.initializers.normal(cfg.dim ** -0.5), axes), shape)
    cls = embedding("cls_embedding", (cfg.dim,), ("embed",))
    pos = embedding("pos_embedding", (cfg.num_tokens, cfg.dim), (None, "embed"))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.dim)), x], axis=1) + pos
    return AffineLayerNorm(cfg.eps, name="pre_norm")(x)


class Block(nn.Module):
  cfg: CLIPConfig

  @nn.compact
  def __call__(self, x):
    """x [B, T, D] float32 residual stream."""
    cfg = self.cfg
    h = AffineLayerNorm(cfg.eps, name="norm1")(x)
    heads = lambda y: einops.rearrange(y, "b t (n d) -> b t n d", n=cfg.num_heads)
    q, k, v = (heads(_dense(cfg, cfg.dim, ("embed", "heads"), f"attn_{p}")(h)) for p in "qkv")
    h = einops.rearrange(attention.get(cfg.attention)(q, k, v), "b t n d -> b t (n d)")
    x = x + _dense(cfg, cfg.dim, ("heads", "embed"), "attn_o")(h).astype(jnp.float32)
    h = AffineLayerNorm(cfg.eps, name="norm2")(x)
    h = nn.gelu(_dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "mlp_1")(h), approximate=False)
    return x + _dense(cfg, cfg.dim, ("mlp", "embed"), "mlp_2")(h).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------- functional API


def vision_tower(params: Params, cfg: CLIPConfig, pixels):
  """Normalised pixels [B, 3, S, S] -> hidden states after block num_layers - 1, [B, 257, dim] float32 (= transformers
  `CLIPVisionModel(...).hidden_states[-2]`)."""
  if pixels.ndim != 4 or pixels.shape[1:] != (3, cfg.image_size, cfg.image_size):
    raise ValueError(f"CLIP pixels must be [B, 3, {cfg.image_size}, {cfg.image_size}], got {pixels.shape}; "
                     "use `encode` to resize images of any size")
  x = Embed(cfg).apply({"params": params["embed"]}, pixels)
  block = Block(cfg)
  return jax.lax.scan(lambda h, p: (block.apply({"params": p}, h), None), x, params["blocks"])[0]


def encode(params: Params, cfg: CLIPConfig, images):
  """Wan's CLIP features of images [B, 3, H, W] in [-1, 1], any H, W -> [B, 257, dim] float32."""
  if images.ndim != 4 or images.shape[1] != 3:
    raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got shape {images.shape}")
  return vision_tower(params, cfg, preprocess(images, cfg.image_size))


# ------------------------------------------------------------------------------------------- init and axis names


def _init_boxed(cfg: CLIPConfig, rng: jax.Array) -> Params:
  """Parameters in `nn.LogicallyPartitioned` boxes; block leaves stacked [L - 1, ...] with axis name 'layers'."""
  k_embed, k_blocks = jax.random.split(rng)
  pixels = jnp.zeros((1, 3, cfg.image_size, cfg.image_size), jnp.float32)
  embed = Embed(cfg).init(k_embed, pixels)["params"]
  x = jnp.zeros((1, cfg.num_tokens, cfg.dim), jnp.float32)
  blocks = layers.stacked(lambda key: Block(cfg).init(key, x)["params"], k_blocks, cfg.used_layers)
  return {"embed": embed, "blocks": blocks}


# init(cfg, rng): random parameters in cfg.param_dtype (norms, class and position embeddings float32);
# abstract_params; logical_axes
init, abstract_params, logical_axes = layers.param_functions(_init_boxed)
