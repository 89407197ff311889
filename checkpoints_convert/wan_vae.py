"""Wan2.1 VAE checkpoints: the two key maps (original `Wan2.1_VAE.pth`, diffusers `AutoencoderKLWan`), config reading
and the PyTorch reference, declared as the `vae` Component that `core.convert` / `core.verify` run.

Key names: wan_spec section 3.4. Our tree (`one4d_jax.models.wan.vae`) keeps Wan's flat block indices
(`encoder/down_{i}` = `encoder.downsamples.{i}`, `decoder/up_{j}` = `decoder.upsamples.{j}`), so the Wan map is
index-free; diffusers groups the decoder into `up_blocks.{i}.resnets.{r}` / `.upsamplers.0` with
j = i * (num_res_blocks + 2) + r, so its decoder rules are spelled out per block for the config.
"""

import json
import os

import numpy as np

from checkpoints_convert import core
from checkpoints_convert.core import ConversionError, Rule
from one4d_jax.models.wan import vae

# ---------------------------------------------------------------------------------------------------------- key maps

IDX = r"\d+"


def conv(src: str, dst: str, transform: str = "conv3d", **choices) -> list[Rule]:
  """A torch conv `src.{weight,bias}` -> `dst/{kernel,bias}`."""
  return [Rule(f"{src}.weight", f"{dst}/kernel", transform, choices),
          Rule(f"{src}.bias", f"{dst}/bias", "identity", choices)]


def rms(src: str, dst: str, **choices) -> list[Rule]:
  """RMS_norm gamma [C, 1, 1(, 1)] -> scale [C]."""
  return [Rule(f"{src}.gamma", f"{dst}/scale", "flatten", choices)]


def residual(src: str, dst: str, layout: str, **choices) -> list[Rule]:
  """ResidualBlock: Wan's Sequential indices residual.{0,2,3,6} + shortcut, diffusers' named layers."""
  n1, c1, n2, c2, sc = (("residual.0", "residual.2", "residual.3", "residual.6", "shortcut") if layout == "wan" else
                        ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"))
  return [*rms(f"{src}.{n1}", f"{dst}/norm1", **choices), *conv(f"{src}.{c1}", f"{dst}/conv1", **choices),
          *rms(f"{src}.{n2}", f"{dst}/norm2", **choices), *conv(f"{src}.{c2}", f"{dst}/conv2", **choices),
          *conv(f"{src}.{sc}", f"{dst}/shortcut", **choices)]


def resample(src: str, dst: str, **choices) -> list[Rule]:
  """Resample: the spatial Conv2d is Sequential index 1 in both layouts; time_conv exists for the 3D modes."""
  return [*conv(f"{src}.resample.1", f"{dst}/conv", "conv2d", **choices),
          *conv(f"{src}.time_conv", f"{dst}/time_conv", **choices)]


def middle_and_head(part: str, layout: str, mid: tuple[str, str, str], head: tuple[str, str]) -> list[Rule]:
  """mid: source prefixes of (resnet 0, attention, resnet 1); head: (norm, conv)."""
  attn = mid[1]
  return [*residual(mid[0], f"{part}/mid_0", layout), *residual(mid[2], f"{part}/mid_1", layout),
          *rms(f"{attn}.norm", f"{part}/mid_attn/norm"),
          *conv(f"{attn}.to_qkv", f"{part}/mid_attn/qkv", "conv_as_linear"),
          *conv(f"{attn}.proj", f"{part}/mid_attn/proj", "conv_as_linear"),
          *rms(head[0], f"{part}/norm_out"), *conv(head[1], f"{part}/conv_out")]


def wan_rules(cfg: vae.VAEConfig) -> list[Rule]:
  """Original Wan (`WanVAE_` state dict, `Wan2.1_VAE.pth`). Index-free: the same for every config."""
  del cfg
  rules = [*conv("conv1", "encoder/quant_conv"), *conv("conv2", "decoder/post_quant_conv")]
  for part, blocks, ours in (("encoder", "downsamples", "down"), ("decoder", "upsamples", "up")):
    rules += [*conv(f"{part}.conv1", f"{part}/conv_in"),
              *residual(f"{part}.{blocks}.{{i}}", f"{part}/{ours}_{{i}}", "wan", i=IDX),
              *resample(f"{part}.{blocks}.{{i}}", f"{part}/{ours}_{{i}}", i=IDX),
              *middle_and_head(part, "wan", (f"{part}.middle.0", f"{part}.middle.1", f"{part}.middle.2"),
                               (f"{part}.head.0", f"{part}.head.2"))]
  return rules


def diffusers_rules(cfg: vae.VAEConfig) -> list[Rule]:
  """diffusers `AutoencoderKLWan` (Wan2.1 layout, `is_residual=False`)."""
  rules = [*conv("quant_conv", "encoder/quant_conv"), *conv("post_quant_conv", "decoder/post_quant_conv")]
  for part in ("encoder", "decoder"):
    rules += [*conv(f"{part}.conv_in", f"{part}/conv_in"),
              *middle_and_head(part, "diffusers", (f"{part}.mid_block.resnets.0", f"{part}.mid_block.attentions.0",
                                      f"{part}.mid_block.resnets.1"), (f"{part}.norm_out", f"{part}.conv_out"))]
  rules += [*residual("encoder.down_blocks.{i}", "encoder/down_{i}", "diffusers", i=IDX),
            *resample("encoder.down_blocks.{i}", "encoder/down_{i}", i=IDX)]
  per_stage = cfg.num_res_blocks + 2
  for stage in range(len(cfg.dim_mult)):
    for r in range(cfg.num_res_blocks + 1):
      rules += residual(f"decoder.up_blocks.{stage}.resnets.{r}", f"decoder/up_{stage * per_stage + r}", "diffusers")
    rules += resample(f"decoder.up_blocks.{stage}.upsamplers.0", f"decoder/up_{stage * per_stage + per_stage - 1}")
  return rules


RULES = {"wan": wan_rules, "diffusers": diffusers_rules}


def detect_format(keys) -> str:
  """'diffusers' or 'wan', from the tensor names."""
  keys = set(keys)
  if "encoder.conv_in.weight" in keys or any(k.startswith("encoder.down_blocks.") for k in keys):
    return "diffusers"
  if "encoder.conv1.weight" in keys or any(k.startswith("encoder.downsamples.") for k in keys):
    return "wan"
  raise ConversionError("cannot tell the VAE checkpoint layout: it has neither diffusers keys (encoder.conv_in.*) "
                        f"nor original Wan keys (encoder.conv1.*); first keys: {sorted(keys)[:5]}")


# ------------------------------------------------------------------------------------------------------- configs


def infer_wan_config(shapes: dict[str, tuple[int, ...]]) -> vae.VAEConfig:
  """VAEConfig of an original Wan checkpoint (which ships no config) from its encoder's tensors: width from
  encoder.conv1, z_dim from conv2, stages from the flat encoder.downsamples list. Falls back to the `wan2.1` preset
  when the tensors are too broken to read, so that `core.plan` reports what is wrong with them."""
  base = vae.preset("wan2.1")
  try:
    dim, z_dim = shapes["encoder.conv1.weight"][0], shapes["conv2.weight"][0]
    indices = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.downsamples.")})
    stages, temporal, count, width = [], [], 0, None
    for i in indices:
      prefix = f"encoder.downsamples.{i}."
      if prefix + "resample.1.weight" in shapes:
        stages.append((count, width))
        temporal.append(prefix + "time_conv.weight" in shapes)
        count = 0
      else:
        width, count = shapes[prefix + "residual.2.weight"][0], count + 1
    stages.append((count, width))
    if len({n for n, _ in stages}) != 1 or any(w % dim for _, w in stages):
      return base
    cfg = base.replace(dim=dim, dim_mult=tuple(w // dim for _, w in stages), num_res_blocks=stages[0][0],
                       temperal_downsample=tuple(temporal))
  except (KeyError, IndexError, TypeError, ValueError):
    return base
  if z_dim != base.z_dim:
    raise ConversionError(f"this Wan VAE has z_dim={z_dim}; original Wan checkpoints carry no latent statistics and "
                          f"only Wan2.1's (z_dim={base.z_dim}) are known")
  return cfg


def read_diffusers_config(folder: str) -> vae.VAEConfig:
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise ConversionError(f"{folder} has no config.json (a diffusers AutoencoderKLWan folder has one)")
  with open(path) as f:
    c = json.load(f)
  unsupported = {k: c.get(k) for k, ok in (("is_residual", False), ("attn_scales", []), ("patch_size", None),
                                           ("dropout", 0.0)) if c.get(k, ok) != ok}
  if c.get("decoder_base_dim") not in (None, c.get("base_dim", 96)):
    unsupported["decoder_base_dim"] = c["decoder_base_dim"]
  if c.get("in_channels", 3) != c.get("out_channels", 3):
    unsupported["out_channels"] = c["out_channels"]
  if unsupported:
    raise ConversionError(f"{path}: only the Wan2.1 VAE is supported; unsupported settings {unsupported}")
  defaults = vae.VAEConfig()
  try:
    return vae.VAEConfig(dim=c.get("base_dim", 96), z_dim=c.get("z_dim", 16),
                         dim_mult=tuple(c.get("dim_mult", defaults.dim_mult)),
                         num_res_blocks=c.get("num_res_blocks", 2),
                         temperal_downsample=tuple(c.get("temperal_downsample", defaults.temperal_downsample)),
                         in_channels=c.get("in_channels", 3),
                         latents_mean=tuple(c.get("latents_mean", defaults.latents_mean)),
                         latents_std=tuple(c.get("latents_std", defaults.latents_std)))
  except ValueError as e:
    raise ConversionError(f"{path}: {e}") from None


def diffusers_kwargs(cfg: vae.VAEConfig) -> dict:
  """AutoencoderKLWan constructor arguments for a VAEConfig."""
  return dict(base_dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
              attn_scales=[], temperal_downsample=list(cfg.temperal_downsample), latents_mean=list(cfg.latents_mean),
              latents_std=list(cfg.latents_std), in_channels=cfg.in_channels, out_channels=cfg.in_channels)


# --------------------------------------------------------------------------------- sources and PyTorch reference


def read_sources(src: str) -> dict[str, core.SourceTensor]:
  """Tensor headers of SRC: a .pth or .safetensors file, a diffusers `vae` folder, or a folder holding
  `Wan2.1_VAE.pth` (a Wan model folder, where the DiT shards and encoder files sit beside it)."""
  wan_file = os.path.join(src, "Wan2.1_VAE.pth")
  return core.read_sources(wan_file if os.path.isdir(src) and os.path.exists(wan_file) else src)


def read_config(src: str, fmt: str, shapes: dict[str, tuple[int, ...]]) -> vae.VAEConfig:
  if fmt == "wan":
    return infer_wan_config(shapes)
  return read_diffusers_config(src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src)))


def reference(src: str, fmt: str, sources: dict, cfg: vae.VAEConfig):
  """diffusers AutoencoderKLWan (float32) holding SRC's weights: read by diffusers itself from a diffusers folder (an
  independent check of our config parsing), or renamed from Wan's layout through the key maps."""
  import torch
  from diffusers import AutoencoderKLWan
  if fmt == "diffusers" and os.path.isdir(src):
    return AutoencoderKLWan.from_pretrained(src, torch_dtype=torch.float32)
  state = core.torch_state(sources)
  if fmt == "wan":
    state = core.rename(state, wan_rules(cfg), diffusers_rules(cfg))
  model = AutoencoderKLWan(**diffusers_kwargs(cfg))
  model.load_state_dict(state, strict=True)
  return model


def compare(model, params, cfg: vae.VAEConfig, rng: np.random.Generator) -> float:
  """Max |JAX - diffusers| over the normalised latent mean and the decoded video of a random clip of 5 frames of
  32x48 pixels (for Wan's factors)."""
  import torch
  s = cfg.spatial_factor
  video = rng.uniform(-1, 1, (1, cfg.in_channels, 1 + cfg.temporal_factor, 4 * s, 6 * s)).astype(np.float32)
  mean = np.asarray(cfg.latents_mean, np.float32)[:, None, None, None]
  std = np.asarray(cfg.latents_std, np.float32)[:, None, None, None]
  with torch.no_grad():
    mu = model.encode(torch.from_numpy(video)).latent_dist.mode()
    ref_video = model.decode(mu).sample.numpy()
  ref_z = (mu.numpy() - mean) / std
  z = np.asarray(vae.encode(params, cfg, video))
  out = np.asarray(vae.decode(params, cfg, ref_z))
  return float(max(np.abs(z - ref_z).max(), np.abs(out - ref_video).max()))


COMPONENT = core.Component(
    name="vae", detect_format=detect_format, read_config=read_config, rules=lambda fmt, cfg, keys: RULES[fmt](cfg),
    abstract_params=vae.abstract_params, reference=reference, reference_rules=diffusers_rules, compare=compare,
    read_sources=read_sources)
