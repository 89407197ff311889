"""Wan2.1 DiT checkpoints: the two key maps (original Wan, diffusers), config parsing and the PyTorch reference
(diffusers `WanTransformer3DModel`), declared as the `dit` Component that `core.convert` / `core.verify` run.

Key names: wan_spec section 2 (the rename table of diffusers' convert_wan_to_diffusers.py). Our tree:
`embed/...`, `blocks/...` (stacked over layers), `head/...`; see `one4d_jax.models.wan.dit`.
"""

import json
import os

import numpy as np

from checkpoints_convert import core
from checkpoints_convert.core import ConversionError, Rule, affine_norm, linear, source_key
from one4d_jax.checkpoints import flatten, is_stacked
from one4d_jax.models.wan import dit

DIFFUSERS_RULES: list[Rule] = [
    Rule("patch_embedding.weight", "embed/patch_embedding/kernel", "conv_as_linear"),
    Rule("patch_embedding.bias", "embed/patch_embedding/bias"),
    *linear("condition_embedder.text_embedder.linear_{i}", "embed/text_embedding_{i}", i="1|2"),
    *linear("condition_embedder.time_embedder.linear_{i}", "embed/time_embedding_{i}", i="1|2"),
    *linear("condition_embedder.time_proj", "embed/time_projection"),
    *affine_norm("condition_embedder.image_embedder.norm{i}", "embed/img_norm_{i}", i="1|2"),
    *linear("condition_embedder.image_embedder.ff.net.0.proj", "embed/img_linear_1"),
    *linear("condition_embedder.image_embedder.ff.net.2", "embed/img_linear_2"),
    Rule("blocks.{layer}.scale_shift_table", "blocks/modulation", "drop_leading_1"),
    *linear("blocks.{layer}.attn1.to_{p}", "blocks/self_attn/{p}", p="q|k|v"),
    *linear("blocks.{layer}.attn1.to_out.0", "blocks/self_attn/o"),
    Rule("blocks.{layer}.attn1.norm_{p}.weight", "blocks/self_attn/norm_{p}/scale", choices={"p": "q|k"}),
    *affine_norm("blocks.{layer}.norm2", "blocks/norm3"),  # diffusers norm2 is the cross-attention LN (Wan norm3)
    *linear("blocks.{layer}.attn2.to_{p}", "blocks/cross_attn/{p}", p="q|k|v"),
    *linear("blocks.{layer}.attn2.to_out.0", "blocks/cross_attn/o"),
    Rule("blocks.{layer}.attn2.norm_{p}.weight", "blocks/cross_attn/norm_{p}/scale", choices={"p": "q|k"}),
    *linear("blocks.{layer}.attn2.add_{p}_proj", "blocks/cross_attn/{p}_img", p="k|v"),
    Rule("blocks.{layer}.attn2.norm_added_k.weight", "blocks/cross_attn/norm_k_img/scale"),
    *linear("blocks.{layer}.ffn.net.0.proj", "blocks/ffn_1"),
    *linear("blocks.{layer}.ffn.net.2", "blocks/ffn_2"),
    Rule("scale_shift_table", "head/modulation", "drop_leading_1"),
    *linear("proj_out", "head/linear"),
]

WAN_RULES: list[Rule] = [
    Rule("patch_embedding.weight", "embed/patch_embedding/kernel", "conv_as_linear"),
    Rule("patch_embedding.bias", "embed/patch_embedding/bias"),
    *linear("text_embedding.0", "embed/text_embedding_1"),
    *linear("text_embedding.2", "embed/text_embedding_2"),
    *linear("time_embedding.0", "embed/time_embedding_1"),
    *linear("time_embedding.2", "embed/time_embedding_2"),
    *linear("time_projection.1", "embed/time_projection"),
    *affine_norm("img_emb.proj.0", "embed/img_norm_1"),
    *linear("img_emb.proj.1", "embed/img_linear_1"),
    *linear("img_emb.proj.3", "embed/img_linear_2"),
    *affine_norm("img_emb.proj.4", "embed/img_norm_2"),
    Rule("blocks.{layer}.modulation", "blocks/modulation", "drop_leading_1"),
    *linear("blocks.{layer}.self_attn.{p}", "blocks/self_attn/{p}", p="q|k|v|o"),
    Rule("blocks.{layer}.self_attn.norm_{p}.weight", "blocks/self_attn/norm_{p}/scale", choices={"p": "q|k"}),
    *affine_norm("blocks.{layer}.norm3", "blocks/norm3"),
    *linear("blocks.{layer}.cross_attn.{p}", "blocks/cross_attn/{p}", p="q|k|v|o|k_img|v_img"),
    Rule("blocks.{layer}.cross_attn.norm_{p}.weight", "blocks/cross_attn/norm_{p}/scale",
         choices={"p": "q|k|k_img"}),
    *linear("blocks.{layer}.ffn.0", "blocks/ffn_1"),
    *linear("blocks.{layer}.ffn.2", "blocks/ffn_2"),
    Rule("head.modulation", "head/modulation", "drop_leading_1"),
    *linear("head.head", "head/linear"),
]

RULES = {"diffusers": DIFFUSERS_RULES, "wan": WAN_RULES}


def detect_format(keys) -> str:
  """'diffusers' or 'wan', from the tensor names (config files of both layouts vary too much to trust)."""
  keys = set(keys)
  if any(k.startswith("condition_embedder.") for k in keys):
    return "diffusers"
  if any(k.startswith(("time_embedding.", "text_embedding.")) for k in keys):
    return "wan"
  raise ConversionError("cannot tell the checkpoint layout: it has neither diffusers keys (condition_embedder.*) "
                        f"nor original Wan keys (time_embedding.*); first keys: {sorted(keys)[:5]}")


def read_config(folder: str, fmt: str, shapes: dict[str, tuple[int, ...]]) -> dit.DiTConfig:
  """DiTConfig from the source folder's config.json (either layout). The CLIP width of an original Wan checkpoint is
  read from its `img_emb` weights, since Wan's config does not record it."""
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise ConversionError(f"{folder} has no config.json")
  with open(path) as f:
    c = json.load(f)
  try:
    if fmt == "diffusers":
      if c.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads" or not c.get("cross_attn_norm", True):
        raise ConversionError("only qk_norm='rms_norm_across_heads' with cross_attn_norm=True is Wan2.1")
      dim = c["num_attention_heads"] * c["attention_head_dim"]
      if c.get("image_dim") is not None and c.get("added_kv_proj_dim") != dim:
        raise ConversionError(f"added_kv_proj_dim={c.get('added_kv_proj_dim')} must equal the inner dim {dim} for "
                              "Wan2.1 I2V")
      return dit.DiTConfig(dim=dim, ffn_dim=c["ffn_dim"], num_heads=c["num_attention_heads"],
                           num_layers=c["num_layers"], in_dim=c["in_channels"], out_dim=c["out_channels"],
                           text_dim=c["text_dim"], freq_dim=c["freq_dim"], image_dim=c.get("image_dim"),
                           patch_size=tuple(c.get("patch_size", (1, 2, 2))), eps=c.get("eps", 1e-6))
    image_dim = None
    if c.get("model_type", "t2v") in ("i2v", "flf2v"):
      image_dim = shapes["img_emb.proj.0.weight"][0] if "img_emb.proj.0.weight" in shapes else 1280
    return dit.DiTConfig(dim=c["dim"], ffn_dim=c["ffn_dim"], num_heads=c["num_heads"], num_layers=c["num_layers"],
                         in_dim=c.get("in_dim", 16), out_dim=c.get("out_dim", 16), text_dim=c.get("text_dim", 4096),
                         text_len=c.get("text_len", 512), freq_dim=c.get("freq_dim", 256), image_dim=image_dim,
                         patch_size=tuple(c.get("patch_size", (1, 2, 2))), eps=c.get("eps", 1e-6))
  except KeyError as e:
    raise ConversionError(f"{path} lacks the field {e} needed for a {fmt} Wan DiT config") from None


# ------------------------------------------------------------------------------------ PyTorch reference (torch only)


def diffusers_kwargs(cfg: dit.DiTConfig) -> dict:
  """WanTransformer3DModel constructor arguments for a DiTConfig."""
  return dict(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
              in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
              ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              eps=cfg.eps, image_dim=cfg.image_dim, added_kv_proj_dim=cfg.dim if cfg.is_i2v else None)


def wan_config_json(cfg: dit.DiTConfig) -> dict:
  """The config.json of an original Wan checkpoint (WanModel constructor arguments)."""
  return dict(model_type="i2v" if cfg.is_i2v else "t2v", patch_size=list(cfg.patch_size), text_len=cfg.text_len,
              in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim,
              out_dim=cfg.out_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, window_size=[-1, -1],
              qk_norm=True, cross_attn_norm=True, eps=cfg.eps)


def lora_to_peft(lora: dict, rules: list[Rule] = DIFFUSERS_RULES) -> dict[str, np.ndarray]:
  """One branch's LoRA tree (`{.., 'q': {'a': [L, in, r], 'b': [L, r, out]}}`) -> peft's state-dict layout under the
  module names of `rules`: `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r] (torch Linear
  weights are [out, in]). Runs a trained branch in diffusers + peft (`set_peft_model_state_dict(model, state,
  adapter_name)`, lora_alpha = our alpha) and lets tests compare the two."""
  out = {}
  for path, leaf in flatten(lora).items():
    module, factor = path.rsplit("/", 1)
    leaf = np.asarray(leaf)
    for layer in range(leaf.shape[0]) if is_stacked(path) else [None]:
      key, transform = source_key(rules, f"{module}/kernel", layer)
      if transform != "linear":
        raise ConversionError(f"LoRA on {module} ({key}, stored as {transform}) has no peft Linear equivalent")
      value = leaf if layer is None else leaf[layer]
      out[f"{key.removesuffix('.weight')}.lora_{'A' if factor == 'a' else 'B'}.weight"] = np.ascontiguousarray(value.T)
  return out


def reference(src: str, fmt: str, sources: dict, cfg: dit.DiTConfig):
  """diffusers WanTransformer3DModel (float32) holding SRC's weights: read by diffusers itself from a diffusers folder
  (an independent check of our config parsing), or renamed from Wan's layout through the key maps."""
  import torch
  from diffusers import WanTransformer3DModel
  if fmt == "diffusers":
    return WanTransformer3DModel.from_pretrained(src, torch_dtype=torch.float32)
  model = WanTransformer3DModel(**diffusers_kwargs(cfg))
  model.load_state_dict(core.rename(core.torch_state(sources), WAN_RULES, DIFFUSERS_RULES), strict=True)
  return model


def compare(model, params, cfg: dit.DiTConfig, rng: np.random.Generator) -> float:
  """Max |JAX - diffusers| of the velocity for a random 3x6x10 latent, 16 text tokens and, for I2V, 257 CLIP tokens."""
  import jax
  import torch
  frames, height, width = 3, 6, 10
  x = rng.standard_normal((1, cfg.in_dim, frames, height, width)).astype(np.float32)
  t = np.array([613.0], np.float32)
  text = rng.standard_normal((1, 16, cfg.text_dim)).astype(np.float32)
  image = rng.standard_normal((1, 257, cfg.image_dim)).astype(np.float32) if cfg.is_i2v else None
  text512 = np.pad(text, ((0, 0), (0, cfg.text_len - text.shape[1]), (0, 0)))
  with torch.no_grad():
    ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text512),
                encoder_hidden_states_image=None if image is None else torch.from_numpy(image),
                return_dict=False)[0].numpy()
  out = jax.jit(lambda p, *a: dit.forward(p, cfg, *a))(params, x, t, text, image)
  return float(np.abs(np.asarray(out) - ref).max())


COMPONENT = core.Component(
    name="dit", detect_format=detect_format, read_config=read_config, rules=lambda fmt, cfg, keys: RULES[fmt],
    abstract_params=dit.abstract_params, reference=reference, reference_rules=lambda cfg: DIFFUSERS_RULES,
    compare=compare, read_sources=core.read_headers)  # a DiT is a folder: config.json beside its safetensors
