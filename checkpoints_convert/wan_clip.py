"""CLIP ViT-H/14 vision tower checkpoints: the two key maps (Wan's open-clip .pth, transformers `CLIPVisionModel`),
config inference and the PyTorch reference, declared as the `clip` Component that `core.convert` / `core.verify` run.

Key names: wan_spec section 4.2. Our tree: `embed/...` and `blocks/...` (stacked over the first num_layers - 1 layers);
see `one4d_jax.models.wan.clip`. Wan reads the penultimate block, so the last block, the post-LN, the projection head
and the text tower in the sources are skipped. SRC is Wan's `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`
(architecture from the tensor shapes) or a transformers folder with config.json (CLIPVisionModel, whose files have a
`vision_model.` prefix before transformers 5, or a whole CLIPModel).
"""

import json
import os

import numpy as np

from checkpoints_convert import core
from checkpoints_convert.core import ConversionError, Rule, affine_norm, linear
from one4d_jax.models.wan import clip

HEAD_DIM = 80  # open-clip ViT-H/14 `head_width`; Wan's .pth does not record the head count (Wan hard-codes 16 of 80)


def transformers_rules(prefix: str = "") -> list[Rule]:
  """CLIPVisionModel names; `prefix` is 'vision_model.' in files written before transformers 5 and in CLIPModel."""
  return [
      Rule(f"{prefix}embeddings.patch_embedding.weight", "embed/patch_embedding/kernel", "conv_as_linear"),
      Rule(f"{prefix}embeddings.class_embedding", "embed/cls_embedding"),
      Rule(f"{prefix}embeddings.position_embedding.weight", "embed/pos_embedding"),
      *affine_norm(f"{prefix}pre_layrnorm", "embed/pre_norm"),
      *affine_norm(f"{prefix}encoder.layers.{{layer}}.layer_norm{{i}}", "blocks/norm{i}", i="1|2"),
      *linear(f"{prefix}encoder.layers.{{layer}}.self_attn.{{p}}_proj", "blocks/attn_{p}", p="q|k|v"),
      *linear(f"{prefix}encoder.layers.{{layer}}.self_attn.out_proj", "blocks/attn_o"),
      *linear(f"{prefix}encoder.layers.{{layer}}.mlp.fc{{i}}", "blocks/mlp_{i}", i="1|2"),
  ]


TRANSFORMERS_RULES = transformers_rules()

WAN_RULES: list[Rule] = [
    Rule("visual.patch_embedding.weight", "embed/patch_embedding/kernel", "conv_as_linear"),
    Rule("visual.cls_embedding", "embed/cls_embedding", "flatten"),
    Rule("visual.pos_embedding", "embed/pos_embedding", "drop_leading_1"),
    *affine_norm("visual.pre_norm", "embed/pre_norm"),
    *affine_norm("visual.transformer.{layer}.norm{i}", "blocks/norm{i}", i="1|2"),
    *[Rule("visual.transformer.{layer}.attn.to_qkv.weight", f"blocks/attn_{p}/kernel", f"qkv_{p}_linear", fanout=True)
      for p in "qkv"],
    *[Rule("visual.transformer.{layer}.attn.to_qkv.bias", f"blocks/attn_{p}/bias", f"qkv_{p}", fanout=True)
      for p in "qkv"],
    *linear("visual.transformer.{layer}.attn.proj", "blocks/attn_o"),
    *linear("visual.transformer.{layer}.mlp.0", "blocks/mlp_1"),
    *linear("visual.transformer.{layer}.mlp.2", "blocks/mlp_2"),
]

# transformers' CLIPVisionConfig defaults, for fields a config.json leaves out
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)


def transformers_prefix(keys) -> str | None:
  """The prefix of the transformers vision keys among `keys`: '', 'vision_model.', or None if there are none."""
  for prefix in ("", "vision_model."):
    if f"{prefix}embeddings.patch_embedding.weight" in keys or any(
        k.startswith(f"{prefix}encoder.layers.") for k in keys):
      return prefix
  return None


def detect_format(keys) -> str:
  """'wan' or 'transformers', from the tensor names."""
  keys = set(keys)
  if any(k.startswith("visual.transformer.") or k == "visual.patch_embedding.weight" for k in keys):
    return "wan"
  if transformers_prefix(keys) is not None:
    return "transformers"
  raise ConversionError("cannot tell the CLIP checkpoint layout: it has neither transformers vision keys "
                        "([vision_model.]embeddings.*, encoder.layers.*) nor Wan keys (visual.*); first keys: "
                        f"{sorted(keys)[:5]}")


def rules(fmt: str, cfg: clip.CLIPConfig, keys) -> list[Rule]:
  """The key map of SRC's layout (for transformers, under the prefix its files use)."""
  del cfg
  return WAN_RULES if fmt == "wan" else transformers_rules(transformers_prefix(set(keys)))


def unused_keys(rules: list[Rule], keys, cfg: clip.CLIPConfig) -> set[str]:
  """Source tensors Wan never reads: the last block, the post-LN, the projection head, the text tower."""
  skipped_prefixes = ("textual.", "visual.post_norm.", "text_model.", "visual_projection.", "text_projection.",
                      "post_layernorm.", "vision_model.post_layernorm.")
  skipped = {"log_scale", "logit_scale", "visual.head", "embeddings.position_ids",
             "vision_model.embeddings.position_ids"}
  return {k for k in keys if k in skipped or k.startswith(skipped_prefixes)
          or any(t.layer == cfg.used_layers for t in core.map_targets(rules, k))}


def _config_json(src: str) -> dict:
  path = os.path.join(src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src)), "config.json")
  if not os.path.exists(path):
    raise ConversionError(f"a transformers CLIP checkpoint needs its config.json beside the weights; {path} is missing")
  with open(path) as f:
    c = json.load(f)
  return c.get("vision_config", {}) if c.get("model_type") == "clip" else c


def read_config(src: str, fmt: str, shapes: dict[str, tuple[int, ...]]) -> clip.CLIPConfig:
  """CLIPConfig from the transformers config.json (CLIPVisionConfig or CLIPConfig.vision_config), or, for Wan's .pth,
  from the tensor shapes with open-clip's head width of 80."""
  if fmt == "transformers":
    c = {**_VISION_DEFAULTS, **_config_json(src)}
    if c["hidden_act"] != "gelu" or c["num_channels"] != 3:
      raise ConversionError(f"unsupported CLIP vision config: hidden_act={c['hidden_act']!r}, num_channels="
                            f"{c['num_channels']}; Wan's ViT-H/14 has exact 'gelu' and 3 channels")
    return clip.CLIPConfig(image_size=c["image_size"], patch_size=c["patch_size"], dim=c["hidden_size"],
                           mlp_dim=c["intermediate_size"], num_heads=c["num_attention_heads"],
                           num_layers=c["num_hidden_layers"], eps=c["layer_norm_eps"])
  needed = ["visual.patch_embedding.weight", "visual.pos_embedding", "visual.transformer.{layer}.mlp.0.weight"]
  found = {template: core.first_shape(shapes, template) for template in needed}
  if None in found.values():
    raise ConversionError("cannot infer the CLIP architecture: the checkpoint has no tensor "
                          f"{[t for t, shape in found.items() if shape is None]}")
  (dim, _, patch, _), (_, num_tokens, _), (mlp_dim, _) = found.values()
  if dim % HEAD_DIM:
    raise ConversionError(f"CLIP width {dim} is not a multiple of the ViT-H/14 head width {HEAD_DIM}")
  layers = {t.layer for key in shapes for t in core.map_targets(WAN_RULES, key) if t.layer is not None}
  return clip.CLIPConfig(image_size=round((num_tokens - 1) ** 0.5) * patch, patch_size=patch, dim=dim, mlp_dim=mlp_dim,
                         num_heads=dim // HEAD_DIM, num_layers=max(layers) + 1)


def transformers_config(cfg: clip.CLIPConfig) -> dict:
  """CLIPVisionConfig keyword arguments for a CLIPConfig."""
  return dict(hidden_size=cfg.dim, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
              hidden_act="gelu", layer_norm_eps=cfg.eps)


def wan_to_transformers(state: dict) -> dict:
  """Wan's `visual.*` tensors under CLIPVisionModel names (wan_spec 4.2 table), written out here rather than derived
  from the key maps, so `verify` checks the maps against an independent statement of them."""
  out = {}
  for key, value in state.items():
    if not key.startswith("visual.") or key == "visual.head":
      continue
    name = key.removeprefix("visual.")
    if name == "cls_embedding":
      out["embeddings.class_embedding"] = value.reshape(-1)
    elif name == "pos_embedding":
      out["embeddings.position_embedding.weight"] = value[0]
    elif name == "patch_embedding.weight":
      out["embeddings.patch_embedding.weight"] = value
    elif name.startswith(("pre_norm.", "post_norm.")):
      out[name.replace("pre_norm", "pre_layrnorm").replace("post_norm", "post_layernorm")] = value
    else:
      _, layer, *rest = name.split(".")
      rest = ".".join(rest)
      prefix = f"encoder.layers.{layer}."
      if rest.startswith("attn.to_qkv."):
        for part, chunk in zip("qkv", value.chunk(3, dim=0)):
          out[prefix + f"self_attn.{part}_proj." + rest.rsplit(".", 1)[1]] = chunk
      else:
        renames = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
                   "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
        module, param = rest.rsplit(".", 1)
        out[prefix + f"{renames[module]}.{param}"] = value
  return out


# ---------------------------------------------------------------------------------------- PyTorch reference (torch)


def reference(src: str, fmt: str, sources: dict, cfg: clip.CLIPConfig):
  """transformers CLIPVisionModel (float32) holding SRC's weights: read by transformers itself from a transformers
  folder, or renamed from Wan's layout by `wan_to_transformers`."""
  import torch
  from transformers import CLIPVisionConfig, CLIPVisionModel
  if fmt == "transformers" and os.path.isdir(src):
    return CLIPVisionModel.from_pretrained(src, dtype=torch.float32)
  model = CLIPVisionModel(CLIPVisionConfig(**transformers_config(cfg)))
  state = core.torch_state(sources)
  if fmt == "wan":
    state = wan_to_transformers(state)
  else:
    state = {k.removeprefix("vision_model."): v for k, v in state.items() if not k.startswith(
        ("text_model.", "visual_projection.", "text_projection.", "logit_scale"))}
  model.load_state_dict(state, strict=False)
  missing = set(model.state_dict()) - set(state)
  if missing - {"post_layernorm.weight", "post_layernorm.bias"}:  # the post-LN is unused; Wan's file has it anyway
    raise ConversionError(f"the reference CLIPVisionModel lacks {sorted(missing)}")
  return model


def compare(model, params, cfg: clip.CLIPConfig, rng: np.random.Generator) -> float:
  """Max |JAX - transformers| of the penultimate block's tokens (`hidden_states[-2]`) for a random image of another
  size, preprocessed as Wan does it in PyTorch (bicubic resize, CLIP normalisation)."""
  import jax
  import torch
  import torch.nn.functional as F
  images = rng.uniform(-1, 1, (1, 3, cfg.image_size * 3 // 2 + 1, cfg.image_size * 2 // 3 + 1)).astype(np.float32)
  size = (cfg.image_size, cfg.image_size)
  pixels = F.interpolate(torch.from_numpy(images), size=size, mode="bicubic", align_corners=False) * 0.5 + 0.5
  pixels = (pixels - torch.tensor(clip.MEAN)[:, None, None]) / torch.tensor(clip.STD)[:, None, None]
  with torch.no_grad():
    ref = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].numpy()
  out = jax.jit(lambda p, x: clip.encode(p, cfg, x))(params, images)
  return float(np.abs(np.asarray(out) - ref).max())


COMPONENT = core.Component(
    name="clip", detect_format=detect_format, read_config=read_config, rules=rules,
    unused_keys=lambda fmt, rules, keys, cfg: unused_keys(rules, keys, cfg), abstract_params=clip.abstract_params,
    reference=reference, reference_rules=lambda cfg: TRANSFORMERS_RULES, compare=compare)
