"""The Wan2.1 3D causal VAE (encoder and decoder) as pure functions over an explicit parameter tree.

Spec: `shared/reference/wan_spec.md` sections 3.1-3.3. The reference runs time in chunks with per-conv caches; the rules
of 3.3 make that equal to one pass over the whole sequence. Both are here and agree to float rounding: `chunked=True`
(the default) keeps the reference's caches explicitly, in flax's `cache` collection, and scans over the chunks, so
memory is that of one chunk whatever the clip length (an 81-frame 480p clip through the whole-sequence path needs
12 GB per activation at Wan's width); `chunked=False` runs every conv over the whole clip at once, for short clips on
wide hardware. Decoding can also be tiled spatially with blended seams (`tile=...`), the approximation diffusers'
`tiled_decode` makes, reproduced exactly.

Public tensors are channel-first like Wan and diffusers: videos `[B, 3, F, H, W]` in [-1, 1], latents
`[B, z_dim, F_lat, H/8, W/8]` normalised per channel with `(mu - mean) / std` (wan_spec 3.2). Inside, activations are
channel-last `[B, T, H, W, C]`. The tree is `{"encoder": ..., "decoder": ...}`: the encoder ends with Wan's `conv1`
(`quant_conv`) and the decoder starts with Wan's `conv2` (`post_quant_conv`), so either half can be loaded alone.
"""

import dataclasses
import functools
import math
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

Params = dict[str, Any]

# Per-channel latent statistics of Wan2.1's VAE (wan_spec 3.2).
WAN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                   3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class VAEConfig(ConfigMixin):
  """Wan2.1 VAE architecture (field names as in Wan's `WanVAE_`, including its spelling `temperal`). `dtype` is the
  conv/attention compute dtype; RMS norms run in float32 and the latent moments are returned in float32."""

  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  in_channels: int = 3
  latents_mean: tuple[float, ...] = WAN_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN_LATENTS_STD
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for name in ("dim_mult", "temperal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"temperal_downsample {self.temperal_downsample} needs one entry per downsampling stage, "
                       f"len(dim_mult) - 1 = {len(self.dim_mult) - 1}")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"latents_mean/latents_std need z_dim={self.z_dim} entries, got {len(self.latents_mean)} and "
                       f"{len(self.latents_std)}")

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)


PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    # Test size (stack_notes 2f): every block kind of the real VAE (shortcuts, both 3D resamples, attention) at 220k
    # parameters.
    "tiny": VAEConfig(dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
}


def preset(name: str, **overrides) -> VAEConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown VAE preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------------------- layers


def _conv_params(module: nn.Module, in_features: int, features: int, kernel_size: tuple[int, ...], cfg: VAEConfig):
  """kernel [*kernel_size, in, out] and bias [out], torch's default init scale."""
  init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  axes = (None,) * len(kernel_size) + ("conv_in", "conv_out")
  kernel = module.param("kernel", nn.with_logical_partitioning(init, axes), (*kernel_size, in_features, features),
                        jnp.dtype(cfg.param_dtype))
  bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)), (features,),
                      jnp.dtype(cfg.param_dtype))
  return kernel, bias


def conv2d(x, kernel, bias, stride: int, padding, dtype):
  """x [N, H, W, C], kernel [kh, kw, C, O]."""
  y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (stride, stride), padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias.astype(dtype)


def temporal_conv(x, kernel, bias, stride: int, dtype):
  """Unpadded conv over time followed by a 'same' spatial conv: x [B, T, H, W, C], kernel [kt, kh, kw, C, O] ->
  [B, (T - kt) // stride + 1, H, W, O].

  The kt frames of each window are stacked into channels and run as one 2D conv over (output frames x batch): the
  same sum, and about 3x faster than XLA:CPU's 3D conv (measured on [6, 128, 224, 32] -> 32)."""
  kt, kh, kw, c, o = kernel.shape
  b, t = x.shape[:2]
  t_out = (t - kt) // stride + 1
  if t_out <= 0:
    return jnp.zeros((b, 0, *x.shape[2:4], o), dtype)
  x = x.astype(dtype)
  if kt > 1:
    x = jnp.concatenate([x[:, i:i + stride * (t_out - 1) + 1:stride] for i in range(kt)], axis=-1)
  elif stride > 1:
    x = x[:, ::stride]
  kernel = einops.rearrange(kernel, "t h w c o -> h w (t c) o")
  y = conv2d(einops.rearrange(x, "b t h w c -> (b t) h w c"), kernel, bias, 1, ((kh // 2,) * 2, (kw // 2,) * 2), dtype)
  return einops.rearrange(y, "(b t) h w o -> b t h w o", b=b)


class ConvParams(nn.Module):
  """Just the (kernel, bias) of a conv, for the resample convs whose windows `Resample` builds itself."""

  features: int
  kernel_size: tuple[int, ...]
  cfg: VAEConfig

  @nn.compact
  def __call__(self, in_features: int):
    return _conv_params(self, in_features, self.features, self.kernel_size, self.cfg)


class CausalConv3d(nn.Module):
  """Conv3d, 'same' in space and causal in time (wan_spec 3.3 rule 1): the kt-1 frames before x are zeros at the
  start of the video or, while streaming (`cache` collection mutable), the tail of the previous chunk's input."""

  features: int
  kernel_size: tuple[int, int, int]
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    kernel, bias = _conv_params(self, x.shape[-1], self.features, self.kernel_size, self.cfg)
    history = self.kernel_size[0] - 1
    if history:
      zeros = lambda: jnp.zeros((x.shape[0], history, *x.shape[2:]), x.dtype)
      if self.is_mutable_collection("cache"):
        cache = self.variable("cache", "history", zeros)
        x = jnp.concatenate([cache.value.astype(x.dtype), x], axis=1)
        cache.value = x[:, -history:]
      else:
        x = jnp.concatenate([zeros(), x], axis=1)
    return temporal_conv(x, kernel, bias, 1, self.cfg.dtype)


class RMSNorm(nn.Module):
  """Wan's RMS_norm: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels, in float32 (wan_spec 3.1)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("conv_out",)), (c,))
    x32 = x.astype(jnp.float32)
    inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x32), axis=-1, keepdims=True), 1e-24))
    return (x32 * inv_norm * (math.sqrt(c) * gamma)).astype(x.dtype)


class ResidualBlock(nn.Module):
  """RMS_norm, SiLU, causal 3x3x3 conv, twice, plus a 1x1x1 shortcut conv when the width changes."""

  features: int
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    shortcut = x if x.shape[-1] == self.features else CausalConv3d(self.features, (1, 1, 1), cfg, name="shortcut")(x)
    h = CausalConv3d(self.features, (3, 3, 3), cfg, name="conv1")(nn.silu(RMSNorm(name="norm1")(x)))
    h = CausalConv3d(self.features, (3, 3, 3), cfg, name="conv2")(nn.silu(RMSNorm(name="norm2")(h)))
    return h + shortcut


class AttentionBlock(nn.Module):
  """Single-head self-attention over the pixels of each frame separately (so chunking never affects it)."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x):
    b, _, h, w, c = x.shape
    dtype = jnp.dtype(self.cfg.dtype)
    dense = lambda n, name: Dense(n, ("conv_in", "conv_out"), dtype, jnp.dtype(self.cfg.param_dtype), name=name)
    q, k, v = jnp.split(dense(3 * c, "qkv")(RMSNorm(name="norm")(x)), 3, axis=-1)
    tokens = lambda y: einops.rearrange(y, "b t h w c -> (b t) (h w) 1 c")
    out = attention.get("xla")(tokens(q), tokens(k), tokens(v))
    out = einops.rearrange(out, "(b t) (h w) 1 c -> b t h w c", b=b, h=h, w=w)
    return x + dense(c, "proj")(out)


class Resample(nn.Module):
  """Spatial x2 down/up sampling, optionally with Wan's temporal x2 (wan_spec 3.3 rules 2-3).

  `first` says the chunk starts the video: frame 0 then bypasses the temporal resampling. When streaming, later chunks
  (`first=False`) continue from the cached tail of the previous chunk."""

  mode: str  # downsample2d | downsample3d | upsample2d | upsample3d
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, first: bool):
    cfg = self.cfg
    b, c = x.shape[0], x.shape[-1]
    if self.mode == "upsample3d":
      x = self._double_time(x, first)
    frames = einops.rearrange(x, "b t h w c -> (b t) h w c")
    if self.mode.startswith("up"):
      frames = jnp.repeat(jnp.repeat(frames, 2, axis=1), 2, axis=2)  # nearest-exact x2
      kernel, bias = ConvParams(c // 2, (3, 3), cfg, name="conv")(c)
      frames = conv2d(frames, kernel, bias, 1, ((1, 1), (1, 1)), cfg.dtype)
    else:
      kernel, bias = ConvParams(c, (3, 3), cfg, name="conv")(c)
      frames = conv2d(frames, kernel, bias, 2, ((0, 1), (0, 1)), cfg.dtype)  # ZeroPad2d right/bottom, stride 2
    x = einops.rearrange(frames, "(b t) h w c -> b t h w c", b=b)
    if self.mode == "downsample3d":
      x = self._halve_time(x, first)
    return x

  def _halve_time(self, x, first: bool):
    """out_0 = x_0, out_j = time_conv(x_{2j-2}, x_{2j-1}, x_{2j}) (stride 2, no padding); T = 1+2k -> 1+k."""
    kernel, bias = ConvParams(x.shape[-1], (3, 1, 1), self.cfg, name="time_conv")(x.shape[-1])
    streaming = self.is_mutable_collection("cache")
    if first:
      if x.shape[1] % 2 == 0:
        raise ValueError(f"the first chunk reaching a temporal downsample has {x.shape[1]} frames; it needs 1+2k")
      out = jnp.concatenate([x[:, :1], temporal_conv(x, kernel, bias, 2, self.cfg.dtype)], axis=1)
    else:
      if x.shape[1] % 2:
        raise ValueError(f"a later chunk reaching a temporal downsample has {x.shape[1]} frames; it needs an even "
                         "count")
      out = temporal_conv(jnp.concatenate([self.get_variable("cache", "last"), x], axis=1), kernel, bias, 2,
                          self.cfg.dtype)
    if streaming:
      self.put_variable("cache", "last", x[:, -1:])
    return out

  def _double_time(self, x, first: bool):
    """Frame 0 passes once; frames 1.. go through a causal time_conv (frame 0 not in its context) whose output
    channels [a | b] become two frames each: a_1 b_1 a_2 b_2 ...; T -> 1 + 2(T-1)."""
    head, rest = (x[:, :1], x[:, 1:]) if first else (None, x)
    y = CausalConv3d(2 * x.shape[-1], (3, 1, 1), self.cfg, name="time_conv")(rest)
    y = einops.rearrange(y, "b t h w (s c) -> b (t s) h w c", s=2)
    return y if head is None else jnp.concatenate([head, y], axis=1)


def _mid_block(cfg: VAEConfig, x, width: int):
  x = ResidualBlock(width, cfg, name="mid_0")(x)
  x = AttentionBlock(cfg, name="mid_attn")(x)
  return ResidualBlock(width, cfg, name="mid_1")(x)


def _head(cfg: VAEConfig, x, features: int):
  return CausalConv3d(features, (3, 3, 3), cfg, name="conv_out")(nn.silu(RMSNorm(name="norm_out")(x)))


class Encoder(nn.Module):
  """Video [B, T, H, W, 3] -> moments [B, T', H/8, W/8, 2 z_dim] (mu | logvar), after Wan's conv1 (`quant_conv`).
  Blocks are named `down_{i}` with Wan's flat `encoder.downsamples.{i}` index."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, x, first: bool = True):
    cfg = self.cfg
    dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
    x = CausalConv3d(dims[0], (3, 3, 3), cfg, name="conv_in")(x.astype(cfg.dtype))
    index = 0
    for stage, width in enumerate(dims[1:]):
      for _ in range(cfg.num_res_blocks):
        x = ResidualBlock(width, cfg, name=f"down_{index}")(x)
        index += 1
      if stage < len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temperal_downsample[stage] else "downsample2d"
        x = Resample(mode, cfg, name=f"down_{index}")(x, first)
        index += 1
    x = _head(cfg, _mid_block(cfg, x, dims[-1]), 2 * cfg.z_dim)
    return CausalConv3d(2 * cfg.z_dim, (1, 1, 1), cfg, name="quant_conv")(x).astype(jnp.float32)


class Decoder(nn.Module):
  """Un-normalised latents [B, T, h, w, z_dim] -> video [B, 1 + 4(T-1), 8h, 8w, 3] (not clamped), starting with Wan's
  conv2 (`post_quant_conv`). Blocks are named `up_{j}` with Wan's flat `decoder.upsamples.{j}` index."""

  cfg: VAEConfig

  @nn.compact
  def __call__(self, z, first: bool = True):
    cfg = self.cfg
    dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    x = CausalConv3d(cfg.z_dim, (1, 1, 1), cfg, name="post_quant_conv")(z.astype(cfg.dtype))
    x = CausalConv3d(dims[0], (3, 3, 3), cfg, name="conv_in")(x)
    x = _mid_block(cfg, x, dims[0])
    temperal_upsample = cfg.temperal_downsample[::-1]
    index = 0
    for stage, width in enumerate(dims[1:]):
      for _ in range(cfg.num_res_blocks + 1):
        x = ResidualBlock(width, cfg, name=f"up_{index}")(x)
        index += 1
      if stage < len(cfg.dim_mult) - 1:
        mode = "upsample3d" if temperal_upsample[stage] else "upsample2d"
        x = Resample(mode, cfg, name=f"up_{index}")(x, first)
        index += 1
    return _head(cfg, x, cfg.in_channels).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ temporal driving


def _stream(module: nn.Module, params: Params, x, chunk: int):
  """Run `module` on frame 0, then on `chunk` frames at a time under `lax.scan`, carrying every causal conv's last
  input frames and every temporal downsample's last frame in the `cache` collection: the reference's feat_cache
  schedule (wan_spec 3.3). Peak memory is that of one chunk, plus the input and output."""
  out, state = module.apply({"params": params}, x[:, :1], True, mutable=["cache"])
  rest = x[:, 1:]
  if rest.shape[1] == 0:
    return out

  def body(state, frames):
    y, state = module.apply({"params": params, **state}, frames, False, mutable=["cache"])
    return state, y

  _, ys = jax.lax.scan(body, state, einops.rearrange(rest, "b (n t) ... -> n b t ...", t=chunk))
  return jnp.concatenate([out, einops.rearrange(ys, "n b t ... -> b (n t) ...")], axis=1)


def _run(module: nn.Module, params: Params, x, chunked: bool, chunk: int):
  if chunked:
    return _stream(module, params, x, chunk)
  return module.apply({"params": params}, x, True)


# ------------------------------------------------------------------------------------------------- functional API


def valid_frame_counts(cfg: VAEConfig, frames: int) -> tuple[int, ...]:
  """The nearest frame counts 1 + k * temporal_factor around `frames` (one value if it is valid)."""
  tf = cfg.temporal_factor
  below = 1 + tf * max((frames - 1) // tf, 0)
  return (below,) if below >= frames else (below, below + tf)


def _check_video(cfg: VAEConfig, video, name: str):
  if video.ndim != 5 or video.shape[1] != cfg.in_channels:
    raise ValueError(f"{name} must be [B, {cfg.in_channels}, F, H, W], got shape {tuple(video.shape)}")
  frames, height, width = video.shape[2:]
  if valid_frame_counts(cfg, frames) != (frames,):
    nearest = " or ".join(map(str, valid_frame_counts(cfg, frames)))
    raise ValueError(f"{name} has {frames} frames; the Wan VAE needs 1 + {cfg.temporal_factor}k frames (nearest: "
                     f"{nearest}). Trim or pad the clip.")
  s = cfg.spatial_factor
  if height % s or width % s:
    raise ValueError(f"{name} size {height}x{width} is not divisible by the spatial factor {s}")


def _check_latents(cfg: VAEConfig, z):
  if z.ndim != 5 or z.shape[1] != cfg.z_dim or z.shape[2] < 1:
    raise ValueError(f"latents must be [B, z_dim={cfg.z_dim}, F >= 1, h, w], got shape {tuple(z.shape)}")


def _stats(cfg: VAEConfig):
  return jnp.asarray(cfg.latents_mean, jnp.float32), jnp.asarray(cfg.latents_std, jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "chunked"))
def _encode_moments(params: Params, cfg: VAEConfig, x, chunked: bool):
  """Video [B, F, H, W, 3] -> moments [B, F', h, w, 2 z_dim] (mu | logvar), float32."""
  return _run(Encoder(cfg), params, x, chunked, cfg.temporal_factor)


def encode(params: Params, cfg: VAEConfig, video, *, rng: jax.Array | None = None, chunked: bool = True):
  """Video [B, 3, F = 1+4k, H, W] in [-1, 1] -> normalised latents [B, z_dim, 1+k, H/8, W/8] float32.

  Returns (mu - mean) / std (what Wan's `encode` and diffusers' `argmax` pipelines use). With `rng`, a posterior
  sample mu + exp(logvar/2) * eps (logvar clipped to [-30, 20] like diffusers), normalised the same way. (VideoX-Fun's
  training adds exp(logvar/2) * eps after normalising, i.e. without the 1/std factor on the noise; wan_spec 3.2.)
  chunked: stream frames [0], [1:5], [5:9], ... with explicit caches (the reference's schedule, memory of one chunk);
    False runs the whole clip at once. Same result either way.
  """
  _check_video(cfg, video, "video")
  x = einops.rearrange(video, "b c f h w -> b f h w c")
  moments = _encode_moments(params["encoder"], cfg, x, chunked)
  mu, logvar = jnp.split(moments, 2, axis=-1)
  if rng is not None:
    mu = mu + jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0)) * jax.random.normal(rng, mu.shape, mu.dtype)
  mean, std = _stats(cfg)
  return einops.rearrange((mu - mean) / std, "b f h w c -> b c f h w")


@functools.partial(jax.jit, static_argnames=("cfg", "chunked"))
def _decode_raw(params: Params, cfg: VAEConfig, mu, chunked: bool):
  """Un-normalised latents [B, T, h, w, z] -> unclamped video [B, F, H, W, 3]; jitted so each tile compiles once."""
  return _run(Decoder(cfg), params, mu, chunked, 1)


def decode(params: Params, cfg: VAEConfig, z, *, chunked: bool = True, tile: tuple[int, int] | None = None,
           tile_stride: tuple[int, int] | None = None):
  """Normalised latents [B, z_dim, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w] float32 clamped to [-1, 1].

  chunked: decode one latent frame at a time with explicit caches (the reference's schedule); False decodes the whole
    clip at once. Same result either way.
  tile: (height, width) of overlapping spatial tiles in pixels, decoded separately and blended linearly over the
    overlap, exactly like diffusers' `tiled_decode` (an approximation: the decoder's receptive field is cut at the
    tile borders). tile_stride: distance between tiles in pixels, default 3/4 of `tile` (diffusers: 256 and 192).
    Tiling applies only when the image is larger than one tile. Call `decode` un-jitted for tiling to bound memory:
    each tile is then a separate jitted call.
  """
  _check_latents(cfg, z)
  mean, std = _stats(cfg)
  mu = einops.rearrange(z, "b c f h w -> b f h w c").astype(jnp.float32) * std + mean
  if tile is None:
    video = _decode_raw(params["decoder"], cfg, mu, chunked)
  else:
    video = _tiled_decode(params["decoder"], cfg, mu, chunked, tile, tile_stride)
  return einops.rearrange(jnp.clip(video, -1.0, 1.0), "b f h w c -> b c f h w")


def _blend(a, b, extent: int, axis: int):
  """b's first `extent` rows along `axis` fade in from a's last ones: a * (1 - y/e) + b * (y/e), y = 0..e-1."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  shape = [1] * b.ndim
  shape[axis] = extent
  w = np.arange(extent, dtype=np.float64).reshape(shape) / extent  # weights rounded once, from float64, like torch
  tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
  head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
  blended = tail * jnp.asarray(1 - w, tail.dtype) + head * jnp.asarray(w, head.dtype)
  return jax.lax.concatenate([blended, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis)


def _tiled_decode(params: Params, cfg: VAEConfig, mu, chunked: bool, tile, tile_stride):
  """diffusers' AutoencoderKLWan.tiled_decode on [B, T, h, w, z]: tiles start every stride, each blended with its
  (already blended) upper and left neighbours, then cropped to the stride."""
  s = cfg.spatial_factor
  tile_h, tile_w = tile
  stride_h, stride_w = tile_stride or (tile_h * 3 // 4, tile_w * 3 // 4)
  if min(tile_h, tile_w, stride_h, stride_w) < s or not (stride_h <= tile_h and stride_w <= tile_w):
    raise ValueError(f"tile {tile} and tile_stride {(stride_h, stride_w)} must be >= {s} pixels with stride <= tile")
  _, _, h, w, _ = mu.shape
  lt_h, lt_w, ls_h, ls_w = tile_h // s, tile_w // s, stride_h // s, stride_w // s
  if h <= lt_h and w <= lt_w:
    return _decode_raw(params, cfg, mu, chunked)
  rows = [[_decode_raw(params, cfg, mu[:, :, i:i + lt_h, j:j + lt_w], chunked) for j in range(0, w, ls_w)]
          for i in range(0, h, ls_h)]
  out_rows = []
  for i, row in enumerate(rows):
    for j in range(len(row)):
      if i > 0:
        row[j] = _blend(rows[i - 1][j], row[j], tile_h - stride_h, axis=2)
      if j > 0:
        row[j] = _blend(row[j - 1], row[j], tile_w - stride_w, axis=3)
    out_rows.append(jnp.concatenate([t[:, :, :stride_h, :stride_w] for t in row], axis=3))
  return jnp.concatenate(out_rows, axis=2)[:, :, :h * s, :w * s]


def encode_pointmaps(params: Params, cfg: VAEConfig, xyz, *, rng: jax.Array | None = None, chunked: bool = True):
  """XYZ pointmaps [B, 3, F, H, W], already normalised to [-1, 1] per clip -> latents, exactly like RGB.

  One4D encodes geometry with the unchanged Wan VAE: the three coordinates take the places of R, G, B. Training and
  inference both go through this pair so the convention lives in one place."""
  return encode(params, cfg, xyz, rng=rng, chunked=chunked)


def decode_pointmaps(params: Params, cfg: VAEConfig, z, **decode_options):
  """Latents -> XYZ pointmaps [B, 3, F, H, W] in [-1, 1] (still normalised; undo the clip's scale outside)."""
  return decode(params, cfg, z, **decode_options)


# ------------------------------------------------------------------------------------------- init and axis names


def _init_boxed(cfg: VAEConfig, rng: jax.Array) -> Params:
  """Parameters in `nn.LogicallyPartitioned` boxes, from example inputs just long enough to reach every layer."""
  k_enc, k_dec = jax.random.split(rng)
  s = cfg.spatial_factor
  video = jnp.zeros((1, 1 + cfg.temporal_factor, s, s, cfg.in_channels), jnp.float32)
  latents = jnp.zeros((1, 2, 1, 1, cfg.z_dim), jnp.float32)
  return {"encoder": Encoder(cfg).init(k_enc, video)["params"], "decoder": Decoder(cfg).init(k_dec, latents)["params"]}


# init(cfg, rng): random parameters (convs at torch's default scale, zero biases, unit norm scales);
# abstract_params; logical_axes
init, abstract_params, logical_axes = layers.param_functions(_init_boxed)
