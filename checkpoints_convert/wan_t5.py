"""umT5-XXL encoder checkpoints: the two key maps (Wan's .pth, transformers `UMT5EncoderModel`), config inference and
the PyTorch reference, declared as the `t5` Component that `core.convert` / `core.verify` run.

Key names: wan_spec section 4.1. Our tree: `token_embedding/embedding`, `blocks/...` (stacked over layers),
`norm/scale`; see `one4d_jax.models.wan.t5`. SRC is Wan's `models_t5_umt5-xxl-enc-bf16.pth` (the architecture is read
from the tensor shapes; Wan's folder has no config for it) or a transformers folder with config.json (UMT5EncoderModel,
or a whole UMT5 model such as google/umt5-xxl, whose decoder is skipped).
"""

import json
import os

import numpy as np

from checkpoints_convert import core
from checkpoints_convert.core import ConversionError, Rule
from one4d_jax.models.wan import t5

TRANSFORMERS_RULES: list[Rule] = [
    Rule("shared.weight", "token_embedding/embedding"),
    Rule("encoder.embed_tokens.weight", "token_embedding/embedding"),  # the tied copy; used when `shared` is absent
    Rule("encoder.block.{layer}.layer.0.layer_norm.weight", "blocks/norm1/scale"),
    Rule("encoder.block.{layer}.layer.0.SelfAttention.{p}.weight", "blocks/attn/{p}/kernel", "linear",
         {"p": "q|k|v|o"}),
    Rule("encoder.block.{layer}.layer.0.SelfAttention.relative_attention_bias.weight", "blocks/attn/rel_bias"),
    Rule("encoder.block.{layer}.layer.1.layer_norm.weight", "blocks/norm2/scale"),
    Rule("encoder.block.{layer}.layer.1.DenseReluDense.wi_0.weight", "blocks/gate/kernel", "linear"),  # GELU side
    Rule("encoder.block.{layer}.layer.1.DenseReluDense.wi_1.weight", "blocks/fc1/kernel", "linear"),
    Rule("encoder.block.{layer}.layer.1.DenseReluDense.wo.weight", "blocks/fc2/kernel", "linear"),
    Rule("encoder.final_layer_norm.weight", "norm/scale"),
]

WAN_RULES: list[Rule] = [
    Rule("token_embedding.weight", "token_embedding/embedding"),
    Rule("blocks.{layer}.norm1.weight", "blocks/norm1/scale"),
    Rule("blocks.{layer}.attn.{p}.weight", "blocks/attn/{p}/kernel", "linear", {"p": "q|k|v|o"}),
    Rule("blocks.{layer}.pos_embedding.embedding.weight", "blocks/attn/rel_bias"),
    Rule("blocks.{layer}.norm2.weight", "blocks/norm2/scale"),
    Rule("blocks.{layer}.ffn.gate.0.weight", "blocks/gate/kernel", "linear"),
    Rule("blocks.{layer}.ffn.fc1.weight", "blocks/fc1/kernel", "linear"),
    Rule("blocks.{layer}.ffn.fc2.weight", "blocks/fc2/kernel", "linear"),
    Rule("norm.weight", "norm/scale"),
]

RULES = {"transformers": TRANSFORMERS_RULES, "wan": WAN_RULES}

# transformers' UMT5Config defaults, for fields a config.json leaves out
_UMT5_DEFAULTS = dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                      feed_forward_proj="gated-gelu", model_type="umt5")


def detect_format(keys) -> str:
  """'transformers' or 'wan', from the tensor names."""
  keys = set(keys)
  if "shared.weight" in keys or any(k.startswith("encoder.block.") for k in keys):
    return "transformers"
  if "token_embedding.weight" in keys or any(k.startswith("blocks.") for k in keys):
    return "wan"
  raise ConversionError("cannot tell the umT5 checkpoint layout: it has neither transformers keys (shared.weight, "
                        "encoder.block.*) nor Wan keys (token_embedding.weight, blocks.*); first keys: "
                        f"{sorted(keys)[:5]}")


def unused_keys(fmt: str, keys) -> set[str]:
  """Tensors that exist in the source but not in the encoder: the decoder and LM head of a whole UMT5 model, and the
  tied copy of the embedding when the shared one is there."""
  if fmt == "wan":
    return set()
  keys = set(keys)
  unused = {k for k in keys if k.startswith("decoder.") or k == "lm_head.weight"}
  if "shared.weight" in keys:
    unused.add("encoder.embed_tokens.weight")
  return unused & keys


def _config_json(src: str) -> dict:
  path = os.path.join(src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src)), "config.json")
  if not os.path.exists(path):
    raise ConversionError(f"a transformers umT5 checkpoint needs its config.json beside the weights; {path} is missing")
  with open(path) as f:
    return json.load(f)


def read_config(src: str, fmt: str, shapes: dict[str, tuple[int, ...]]) -> t5.T5Config:
  """T5Config from the transformers config.json, or, for Wan's .pth, from the tensor shapes."""
  if fmt == "transformers":
    c = {**_UMT5_DEFAULTS, **_config_json(src)}
    problems = []
    if c["model_type"] != "umt5":
      problems.append(f"model_type is {c['model_type']!r}, not 'umt5' (T5 and mT5 share one relative-position table "
                      "across layers; Wan's encoder has one per layer)")
    if c["feed_forward_proj"] != "gated-gelu":
      problems.append(f"feed_forward_proj is {c['feed_forward_proj']!r}; Wan's encoder is 'gated-gelu'")
    if problems:
      raise ConversionError("unsupported umT5 config: " + "; ".join(problems))
    return t5.T5Config(vocab_size=c["vocab_size"], dim=c["d_model"], ffn_dim=c["d_ff"], num_heads=c["num_heads"],
                       num_layers=c["num_layers"], head_dim=c["d_kv"], num_buckets=c["relative_attention_num_buckets"],
                       max_distance=c["relative_attention_max_distance"], eps=c["layer_norm_epsilon"])

  needed = ["token_embedding.weight", "blocks.{layer}.pos_embedding.embedding.weight", "blocks.{layer}.attn.q.weight",
            "blocks.{layer}.ffn.fc1.weight"]
  found = {template: core.first_shape(shapes, template) for template in needed}
  if None in found.values():
    raise ConversionError("cannot infer the umT5 architecture: the checkpoint has no tensor "
                          f"{[t for t, shape in found.items() if shape is None]}")
  (vocab_size, dim), (num_buckets, num_heads), (inner_dim, _), (ffn_dim, _) = found.values()
  layers = {t.layer for key in shapes for t in core.map_targets(WAN_RULES, key) if t.layer is not None}
  return t5.T5Config(vocab_size=vocab_size, dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=max(layers) + 1,
                     head_dim=inner_dim // num_heads, num_buckets=num_buckets)


def transformers_config(cfg: t5.T5Config) -> dict:
  """UMT5Config keyword arguments for a T5Config."""
  return dict(vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.ffn_dim,
              num_layers=cfg.num_layers, num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
              relative_attention_max_distance=cfg.max_distance, layer_norm_epsilon=cfg.eps,
              feed_forward_proj="gated-gelu", dropout_rate=0.0)


# ---------------------------------------------------------------------------------------- PyTorch reference (torch)


def reference(src: str, fmt: str, sources: dict, cfg: t5.T5Config):
  """transformers UMT5EncoderModel (float32) holding SRC's weights: read by transformers itself from a transformers
  folder (an independent check of our config parsing), or renamed from Wan's layout."""
  import torch
  from transformers import UMT5Config, UMT5EncoderModel
  if fmt == "transformers" and os.path.isdir(src):
    return UMT5EncoderModel.from_pretrained(src, dtype=torch.float32)
  model = UMT5EncoderModel(UMT5Config(**transformers_config(cfg)))
  state = core.torch_state(sources, skip=unused_keys(fmt, sources))
  state = core.rename(state, RULES[fmt], TRANSFORMERS_RULES) if fmt == "wan" else state
  state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
  state.setdefault("shared.weight", state["encoder.embed_tokens.weight"])
  model.load_state_dict(state, strict=True)
  return model


def compare(model, params, cfg: t5.T5Config, rng: np.random.Generator) -> float:
  """Max |JAX - transformers| over a batch of two prompts of 24 and 9 random tokens; the reference is zero-padded
  the way Wan uses it."""
  import jax
  import torch
  length, lengths = 24, np.array([24, 9])
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  ids = rng.integers(0, cfg.vocab_size, (2, length)) * mask
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  out = jax.jit(lambda p, i, m: t5.encode(p, cfg, i, m))(params, ids, mask)
  return float(np.abs(np.asarray(out) - ref * mask[..., None]).max())


COMPONENT = core.Component(
    name="t5", detect_format=detect_format, read_config=read_config, rules=lambda fmt, cfg, keys: RULES[fmt],
    unused_keys=lambda fmt, rules, keys, cfg: unused_keys(fmt, keys), abstract_params=t5.abstract_params,
    reference=reference, reference_rules=lambda cfg: TRANSFORMERS_RULES, compare=compare)
