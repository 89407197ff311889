"""umT5 and CLIP equal transformers' UMT5EncoderModel / CLIPVisionModel on converted random weights (both checkpoint
layouts), the bicubic resize equals torch's, and the tokenizer gives transformers' ids after Wan's text cleaning."""

import contextlib
import html
import io
import os

import jax
import numpy as np
import pytest
from conftest import needs_torch, optional_import

from one4d_jax.models.wan import clip, t5
from one4d_jax.models.wan import tokenizer as tokenizer_lib

torch = optional_import("torch")
transformers = optional_import("transformers")

from checkpoints_convert import core, wan, wan_clip, wan_t5  # noqa: E402
from one4d_jax import checkpoints  # noqa: E402

T5_TINY = t5.preset("tiny")
# Wan's umT5 file does not record max_distance (Wan hard-codes 128), so the checkpoint tests use 128.
T5_W128 = T5_TINY.replace(max_distance=128)
CLIP_TINY = clip.preset("tiny")
# Wan's CLIP file does not record the head count (open-clip's head width 80 is assumed), so the layout tests use 80.
CLIP_W80 = CLIP_TINY.replace(dim=160, mlp_dim=320, num_heads=2)


def perturbed(model, seed: int = 0, scale: float = 0.1):
  """Random weights with every tensor (norm scales, biases, bias tables) moved away from its init."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model.eval()


def umt5_reference(cfg: t5.T5Config, seed: int = 0):
  return perturbed(transformers.UMT5EncoderModel(transformers.UMT5Config(**wan_t5.transformers_config(cfg))), seed)


def clip_reference(cfg: clip.CLIPConfig, seed: int = 0):
  """Perturbed on the scale of CLIP's init (std 0.02), so activations stay O(1) like a trained tower's, not O(10)."""
  return perturbed(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**wan_clip.transformers_config(cfg))),
                   seed, scale=0.02)


def numpy_state(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def t5_batch(cfg: t5.T5Config, lengths=(40, 23, 1), length: int = 40, seed: int = 0):
  """Right-padded ids of several lengths (1 = only `</s>`); 40 tokens reach the log-spaced and clipped buckets."""
  lengths = np.asarray(lengths)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  ids = np.random.default_rng(seed).integers(3, cfg.vocab_size, (len(lengths), length)) * mask
  return ids, mask


def umt5_forward(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()


def assert_equals_wan_use_of_umt5(ours, ref, mask, tol=1e-5):
  """Equal on every real position, exactly zero on every padded one."""
  ours, real = np.asarray(ours), mask.astype(bool)
  assert ours.shape == ref.shape
  assert np.abs(ours[real] - ref[real]).max() <= tol
  assert np.all(ours[~real] == 0)


def clip_params(model, cfg: clip.CLIPConfig):
  """In-memory conversion; the last block and the post-LN are not part of the tree."""
  state = numpy_state(model)
  unused = wan_clip.unused_keys(wan_clip.TRANSFORMERS_RULES, state, cfg)
  state = {k: v for k, v in state.items() if k not in unused}
  return core.convert_in_memory(wan_clip.TRANSFORMERS_RULES, state, clip.abstract_params(cfg))


def clip_penultimate(model, pixels):
  with torch.no_grad():
    return model(pixel_values=torch.from_numpy(np.array(pixels)), output_hidden_states=True).hidden_states[-2].numpy()


# ------------------------------------------------------------------------------------------------------ umT5


@pytest.fixture(scope="module")
def umt5_tiny():
  """(transformers model, our converted parameters) for T5_TINY."""
  model = umt5_reference(T5_TINY)
  state = numpy_state(model)  # holds the embedding twice (shared, encoder.embed_tokens); the converter keeps one
  unused = wan_t5.unused_keys("transformers", state)
  state = {k: v for k, v in state.items() if k not in unused}
  return model, core.convert_in_memory(wan_t5.TRANSFORMERS_RULES, state, t5.abstract_params(T5_TINY))


@needs_torch
def test_umt5_equals_transformers_on_real_tokens_and_is_zero_beyond(umt5_tiny):
  model, params = umt5_tiny
  ids, mask = t5_batch(T5_TINY)
  ours = jax.jit(lambda p, i, m: t5.encode(p, T5_TINY, i, m))(params, ids, mask)
  assert_equals_wan_use_of_umt5(ours, umt5_forward(model, ids, mask), mask)


@needs_torch
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (32, 20), (16, 64)])
def test_relative_position_buckets_equal_transformers_up_to_600_tokens(num_buckets, max_distance):
  from transformers.models.umt5.modeling_umt5 import UMT5Attention
  config = transformers.UMT5Config(relative_attention_num_buckets=num_buckets,
                                   relative_attention_max_distance=max_distance)
  attention = UMT5Attention(config, has_relative_attention_bias=True)
  rel = torch.arange(600)[None, :] - torch.arange(600)[:, None]
  ref = attention._relative_position_bucket(rel).numpy()
  np.testing.assert_array_equal(t5.relative_position_buckets(600, num_buckets, max_distance), ref)


@needs_torch
def test_umt5_padding_never_changes_the_real_tokens(umt5_tiny):
  """Wan pads to 512 and masks the padded keys: a prompt's features do not depend on how much padding follows."""
  _, params = umt5_tiny
  ids, mask = t5_batch(T5_TINY, lengths=(9,), length=40)
  encode = jax.jit(lambda p, i, m: t5.encode(p, T5_TINY, i, m))
  long, short = encode(params, ids, mask), encode(params, ids[:, :12], mask[:, :12])
  np.testing.assert_allclose(np.asarray(long)[:, :12], np.asarray(short), rtol=0, atol=1e-5)


@needs_torch
def test_umt5_bad_inputs_name_the_problem(umt5_tiny):
  _, params = umt5_tiny
  ids, mask = t5_batch(T5_TINY)
  with pytest.raises(ValueError, match="attention mask must have the shape of the ids"):
    t5.encode(params, T5_TINY, ids, mask[:, :5])


# ------------------------------------------------------------------------------------------------------ CLIP


@needs_torch
def test_clip_tower_equals_transformers_penultimate_hidden_states():
  model = clip_reference(CLIP_TINY)
  params = clip_params(model, CLIP_TINY)
  pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
  ours = jax.jit(lambda p, x: clip.vision_tower(p, CLIP_TINY, x))(params, pixels)
  assert ours.shape == (2, CLIP_TINY.num_tokens, CLIP_TINY.dim)
  assert np.abs(np.asarray(ours) - clip_penultimate(model, pixels)).max() <= 1e-5


@needs_torch
@pytest.mark.parametrize("shape,size", [((2, 3, 120, 208), (224, 224)), ((1, 3, 480, 832), (224, 224)),
                                        ((1, 3, 37, 53), (224, 224)), ((1, 1, 7, 9), (3, 20))],
                         ids=["up", "down", "odd", "mixed"])
def test_bicubic_resize_equals_torch_interpolate(shape, size):
  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bicubic", align_corners=False).numpy()
  ours = np.asarray(jax.jit(clip.resize_bicubic, static_argnums=1)(x, size))
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).max() <= 1e-5


def wan_preprocess_torch(images: np.ndarray, size: int) -> np.ndarray:
  """Wan2.1:wan/modules/clip.py:L527-542 in PyTorch: bicubic straight to a square, [-1, 1] -> [0, 1], normalise."""
  x = torch.nn.functional.interpolate(torch.from_numpy(images), size=(size, size), mode="bicubic", align_corners=False)
  x = x.mul(0.5).add(0.5)
  mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
  std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
  return ((x - mean) / std).numpy()


@needs_torch
def test_clip_encode_equals_wan_preprocessing_then_transformers():
  model = clip_reference(CLIP_TINY, seed=1)
  params = clip_params(model, CLIP_TINY)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 3, 45, 70)).astype(np.float32)
  ours = jax.jit(lambda p, x: clip.encode(p, CLIP_TINY, x))(params, images)
  ref = clip_penultimate(model, wan_preprocess_torch(images, CLIP_TINY.image_size))
  assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


def test_clip_bad_inputs_name_the_problem():
  params = clip.abstract_params(CLIP_TINY)
  with pytest.raises(ValueError, match=r"CLIP pixels must be \[B, 3, 32, 32\], got \(1, 3, 30, 32\)"):
    clip.vision_tower(params, CLIP_TINY, np.zeros((1, 3, 30, 32), np.float32))
  with pytest.raises(ValueError, match="images must be"):
    clip.encode(params, CLIP_TINY, np.zeros((1, 4, 30, 32), np.float32))


@pytest.mark.parametrize("module,name", [(t5, "umt5-xxl"), (t5, "tiny"), (clip, "vit-h-14"), (clip, "tiny")])
def test_every_parameter_has_one_axis_name_per_dimension_and_bf16_only_in_matmul_weights(module, name):
  cfg = module.preset(name)
  abstract = checkpoints.flatten(module.abstract_params(cfg))
  axes = checkpoints.flatten(module.logical_axes(cfg), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert set(axes) == set(abstract)
  assert all(len(axes[p]) == len(leaf.shape) for p, leaf in abstract.items())
  assert all((axes[p][0] == "layers") == p.startswith("blocks/") for p in abstract)
  low = {p for p, leaf in abstract.items() if leaf.dtype != np.float32}
  matmul = {p for p in abstract if p.endswith(("/kernel", "/bias", "token_embedding/embedding")) and "norm" not in p}
  assert low == (matmul if cfg.param_dtype == "bfloat16" else set())


# ------------------------------------------------------------------------------------------------ tokenizer


def wan_clean(text: str) -> str:
  """Wan2.1:wan/modules/tokenizers.py `whitespace_clean(basic_clean(text))`, verbatim (with the `regex` module)."""
  import ftfy
  regex = pytest.importorskip("regex")
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return regex.sub(r"\s+", " ", text).strip()


PROMPTS = [
    "the red car drives slowly past old buildings",
    "  the   red\tcar \n\n drives\u3000past\u00a0buildings  ",
    "rain &amp;amp; fog &lt;b&gt; at night",
    "\u201cquoted\u201d caf\u00c3\u00a9 na\u00efve \uff21\uff22\uff23 \ufb01sh",
    "a </s> b x<pad>y hello <extra_id_3> world <unk>",
    "",
    "emoji \U0001f600 and \u6771\u4eac and \x1c separator",
    " ".join(["camera pans across a quiet street"] * 120),  # longer than 512 tokens: truncated, `</s>` kept
]


@pytest.fixture(scope="module")
def spm_folders(tmp_path_factory):
  """A T5-style sentencepiece model (pad 0, eos 1, unk 2) trained on generated text, in a folder of its own and as the
  tokenizer.json folder transformers writes from it."""
  spm = pytest.importorskip("sentencepiece")
  root = tmp_path_factory.mktemp("tokenizer")
  words = ["camera", "pans", "across", "a", "quiet", "street", "at", "night", "the", "red", "car", "drives", "slowly",
           "past", "old", "buildings", "rain", "fog", "falls", "on", "glass", "caf\u00e9", "hello,", "world!", "(x)",
           "dog's", "42", "3.14", "\u6771\u4eac", "\u00fcber", "stra\u00dfe", "\"quoted\""]
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(words, rng.integers(3, 16))) for _ in range(400)]
  (root / "corpus.txt").write_text("\n".join(lines))
  (root / "spm").mkdir()
  spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "spm" / "spiece"),
                                 vocab_size=64, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 character_coverage=1.0, normalization_rule_name="nmt_nfkc", minloglevel=2)
  os.remove(root / "spm" / "spiece.vocab")
  transformers.T5Tokenizer.from_pretrained(str(root / "spm")).save_pretrained(str(root / "json"))
  assert "tokenizer.json" in os.listdir(root / "json")
  return {"sentencepiece": str(root / "spm"), "tokenizer.json": str(root / "json")}


@needs_torch
@pytest.mark.parametrize("text_len", [16, 512])
@pytest.mark.parametrize("backend", ["sentencepiece", "tokenizer.json"])
def test_tokenizer_equals_transformers_after_wan_cleaning(spm_folders, backend, text_len):
  folder = spm_folders[backend]
  # A folder with only spiece.model has no config naming its class; the tokenizer.json folder has (as umt5-xxl's).
  ref_class = transformers.T5Tokenizer if backend == "sentencepiece" else transformers.AutoTokenizer
  ref_tokenizer = ref_class.from_pretrained(folder)
  ref = ref_tokenizer([wan_clean(p) for p in PROMPTS], padding="max_length", max_length=text_len, truncation=True,
                      add_special_tokens=True, return_tensors="np")
  ids, mask = tokenizer_lib.load(folder, text_len=text_len)(PROMPTS)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])
  assert ids.dtype == mask.dtype == np.int32
  assert ids[-1, text_len - 1] == ref_tokenizer.eos_token_id and mask[-1].all()  # truncated, `</s>` kept


def test_text_cleaning_equals_wan():
  for text in PROMPTS + ["\x1c\x1d", "a\u2028b\u2029c\u0085d", "&amp;quot;x&amp;quot;", "\u00e2\u0080\u0099"]:
    assert tokenizer_lib.clean(text) == wan_clean(text), repr(text)


def test_tokenizer_folder_without_files_names_what_it_needs(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor spiece.model"):
    tokenizer_lib.load(str(tmp_path))


# ----------------------------------------------------------------------------------- checkpoint layouts on disk


def wan_t5_state(hf: dict, num_layers: int) -> dict:
  """Wan's umT5 names, written from the wan_spec 4.1 table (independent of the converter's key maps)."""
  out = {"token_embedding.weight": hf["shared.weight"], "norm.weight": hf["encoder.final_layer_norm.weight"]}
  for i in range(num_layers):
    src = f"encoder.block.{i}.layer."
    out[f"blocks.{i}.norm1.weight"] = hf[src + "0.layer_norm.weight"]
    for p in "qkvo":
      out[f"blocks.{i}.attn.{p}.weight"] = hf[src + f"0.SelfAttention.{p}.weight"]
    out[f"blocks.{i}.pos_embedding.embedding.weight"] = hf[src + "0.SelfAttention.relative_attention_bias.weight"]
    out[f"blocks.{i}.norm2.weight"] = hf[src + "1.layer_norm.weight"]
    out[f"blocks.{i}.ffn.gate.0.weight"] = hf[src + "1.DenseReluDense.wi_0.weight"]
    out[f"blocks.{i}.ffn.fc1.weight"] = hf[src + "1.DenseReluDense.wi_1.weight"]
    out[f"blocks.{i}.ffn.fc2.weight"] = hf[src + "1.DenseReluDense.wo.weight"]
  return out


def wan_clip_state(hf: dict, num_layers: int) -> dict:
  """Wan's open-clip names (the `visual.` tower plus the unused text tower, head and logit scale), written from the
  wan_spec 4.2 table: fused qkv, [1, 1, D] class and [1, N, D] position embeddings."""
  dim = hf["embeddings.class_embedding"].shape[0]
  out = {"visual.patch_embedding.weight": hf["embeddings.patch_embedding.weight"],
         "visual.cls_embedding": hf["embeddings.class_embedding"].reshape(1, 1, dim),
         "visual.pos_embedding": hf["embeddings.position_embedding.weight"][None],
         "visual.head": torch.randn(dim, 8), "log_scale": torch.tensor(4.6),
         "textual.token_embedding.weight": torch.randn(11, 8)}
  for ours, theirs in (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")):
    for p in ("weight", "bias"):
      out[f"visual.{ours}.{p}"] = hf[f"{theirs}.{p}"]
  for i in range(num_layers):
    src, dst = f"encoder.layers.{i}.", f"visual.transformer.{i}."
    for p in ("weight", "bias"):
      out[dst + f"attn.to_qkv.{p}"] = torch.cat([hf[src + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
      for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                           ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")):
        out[dst + f"{ours}.{p}"] = hf[src + f"{theirs}.{p}"]
  return out


def bf16_rounded(model):
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p.to(torch.bfloat16).float())
  return model


def write_t5_source(model, cfg, layout: str, path) -> str:
  """`transformers`: save_pretrained folder; `transformers-full`: a whole UMT5 model (decoder and LM head skipped);
  `wan`: a bf16 .pth like models_t5_umt5-xxl-enc-bf16.pth."""
  if layout == "transformers":
    model.save_pretrained(str(path))
    return str(path)
  if layout == "transformers-full":
    full = transformers.UMT5ForConditionalGeneration(model.config)
    full.encoder.load_state_dict(model.encoder.state_dict())
    full.shared.load_state_dict(model.shared.state_dict())
    full.save_pretrained(str(path))
    return str(path)
  os.makedirs(path)
  state = {k: v.to(torch.bfloat16).contiguous() for k, v in wan_t5_state(model.state_dict(), cfg.num_layers).items()}
  torch.save(state, str(path / "models_t5_umt5-xxl-enc-bf16.pth"))
  bf16_rounded(model)  # the reference now holds what the file holds
  return str(path / "models_t5_umt5-xxl-enc-bf16.pth")


def write_clip_source(model, cfg, layout: str, path) -> str:
  """`transformers`: save_pretrained folder; `transformers-4`: the same tensors under transformers 4's
  `vision_model.` names plus a CLIPModel's text tower and projections; `wan`: an open-clip .pth."""
  from safetensors.torch import save_file
  if layout == "transformers":
    model.save_pretrained(str(path))
    return str(path)
  if layout == "transformers-4":
    model.save_pretrained(str(path))
    state = {f"vision_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state.update({"text_model.embeddings.token_embedding.weight": torch.randn(11, 8), "logit_scale": torch.tensor(2.),
                  "visual_projection.weight": torch.randn(8, cfg.dim), "text_projection.weight": torch.randn(8, 8)})
    save_file(state, str(path / "model.safetensors"))
    return str(path)
  os.makedirs(path)
  torch.save(wan_clip_state(model.state_dict(), cfg.num_layers), str(path / "models_clip_vit-h-14.pth"))
  return str(path)  # a folder holding exactly one .pth


@needs_torch
@pytest.mark.parametrize("layout", ["transformers", "transformers-full", "wan"])
def test_converted_umt5_loads_and_matches_transformers(tmp_path, layout):
  model = umt5_reference(T5_W128, seed=2)
  src = write_t5_source(model, T5_W128, layout, tmp_path / "src")
  fmt, _ = core.convert("t5", src, str(tmp_path / "dst"), "fp32", progress=False)
  assert fmt == layout.split("-")[0]
  cfg, params = checkpoints.load(str(tmp_path / "dst"))
  assert cfg == T5_W128
  ids, mask = t5_batch(cfg, seed=1)
  assert_equals_wan_use_of_umt5(t5.encode(params, cfg, ids, mask), umt5_forward(model, ids, mask), mask)


@needs_torch
@pytest.mark.parametrize("layout", ["transformers", "transformers-4", "wan"])
def test_converted_clip_loads_and_matches_transformers(tmp_path, layout):
  model = clip_reference(CLIP_W80, seed=2)
  src = write_clip_source(model, CLIP_W80, layout, tmp_path / "src")
  fmt, _ = core.convert("clip", src, str(tmp_path / "dst"), "fp32", progress=False)
  assert fmt == layout.split("-")[0]
  cfg, params = checkpoints.load(str(tmp_path / "dst"))
  assert cfg == CLIP_W80.replace(dtype="float32", param_dtype="float32")
  assert jax.tree.leaves(params)[0].shape[0] == cfg.num_layers - 1  # the last block is not kept
  images = np.random.default_rng(2).uniform(-1, 1, (1, 3, 50, 41)).astype(np.float32)
  ref = clip_penultimate(model, wan_preprocess_torch(images, cfg.image_size))
  assert np.abs(np.asarray(clip.encode(params, cfg, images)) - ref).max() <= 1e-5


@needs_torch
def test_bad_umt5_checkpoint_lists_every_problem_and_writes_nothing(tmp_path):
  state = wan_t5_state(umt5_reference(T5_W128).state_dict(), T5_W128.num_layers)
  del state["blocks.1.ffn.gate.0.weight"]                             # missing
  state["blocks.0.attn.extra.weight"] = torch.zeros(3)                # unexpected
  state["norm.weight"] = torch.zeros(31)                              # wrong shape
  (tmp_path / "src").mkdir()
  torch.save(state, str(tmp_path / "src" / "t5.pth"))
  with pytest.raises(core.ConversionError) as err:
    core.convert("t5", str(tmp_path / "src" / "t5.pth"), str(tmp_path / "dst"), progress=False)
  message = str(err.value)
  assert "1 missing, 1 unexpected, 1 wrong shape" in message
  assert "blocks.1.ffn.gate.0.weight -> blocks/gate/kernel[1]" in message
  assert "blocks.0.attn.extra.weight" in message
  assert "norm.weight: shape [31]" in message and "expects [32]" in message
  assert sorted(os.listdir(tmp_path)) == ["src"]


@needs_torch
def test_bad_clip_checkpoint_lists_every_problem_and_writes_nothing(tmp_path):
  state = wan_clip_state(clip_reference(CLIP_W80).state_dict(), CLIP_W80.num_layers)
  del state["visual.transformer.0.mlp.2.bias"]                                      # missing
  state["visual.transformer.1.attn.extra"] = torch.zeros(3)                         # unexpected
  state["visual.transformer.1.attn.to_qkv.weight"] = torch.zeros(3 * 160 + 1, 160)  # not three equal parts
  (tmp_path / "src").mkdir()
  torch.save(state, str(tmp_path / "src" / "clip.pth"))
  with pytest.raises(core.ConversionError) as err:
    core.convert("clip", str(tmp_path / "src"), str(tmp_path / "dst"), progress=False)
  message = str(err.value)
  assert "1 missing, 1 unexpected, 3 wrong shape" in message
  assert "visual.transformer.0.mlp.2.bias -> blocks/mlp_2/bias[0]" in message
  assert "visual.transformer.1.attn.extra" in message
  assert "visual.transformer.1.attn.to_qkv.weight: shape [481, 160]" in message
  assert sorted(os.listdir(tmp_path)) == ["src"]


@needs_torch
@pytest.mark.parametrize("component,layout", [("t5", "wan"), ("t5", "transformers"), ("clip", "wan"),
                                              ("clip", "transformers-4")])
def test_cli_verify_prints_max_abs_err_last_and_succeeds(tmp_path, component, layout):
  if component == "t5":
    src = write_t5_source(umt5_reference(T5_W128, seed=3), T5_W128, layout, tmp_path / "src")
  else:
    src = write_clip_source(clip_reference(CLIP_W80, seed=3), CLIP_W80, layout, tmp_path / "src")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = wan.main(["--component", component, "--src", src, "--dst", str(tmp_path / "dst"), "--dtype", "bf16",
                     "--verify"])
  last = out.getvalue().strip().splitlines()[-1]
  assert code == 0, out.getvalue()
  assert last.startswith("max_abs_err=") and float(last.split("=")[1]) <= 1e-5


@needs_torch
def test_verify_detects_a_wrong_conversion(tmp_path):
  """The check can fail: a checkpoint whose weights differ from SRC gives a large error."""
  src = write_t5_source(umt5_reference(T5_W128, seed=4), T5_W128, "transformers", tmp_path / "src")
  other = write_t5_source(umt5_reference(T5_W128, seed=5), T5_W128, "transformers", tmp_path / "other")
  core.convert("t5", other, str(tmp_path / "dst"), "fp32", progress=False)
  assert core.verify("t5", src, str(tmp_path / "dst")) > 1e-2


def test_published_wan_key_sets_give_the_presets_and_plan_completely():
  """Wan's real .pth key sets and shapes (wan_spec 4.1 / 4.2 tables), without data: the architecture read off the
  shapes is the preset, and every parameter is covered."""
  d, ffn = 4096, 10240
  umt5 = {"token_embedding.weight": (256384, d), "norm.weight": (d,)}
  for i in range(24):
    umt5.update({f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
                 f"blocks.{i}.pos_embedding.embedding.weight": (32, 64), f"blocks.{i}.ffn.gate.0.weight": (ffn, d),
                 f"blocks.{i}.ffn.fc1.weight": (ffn, d), f"blocks.{i}.ffn.fc2.weight": (d, ffn),
                 **{f"blocks.{i}.attn.{p}.weight": (d, d) for p in "qkvo"}})
  cfg = wan_t5.read_config("unused.pth", "wan", umt5)
  assert cfg == t5.preset("umt5-xxl")
  core.plan(wan_t5.WAN_RULES, umt5, t5.abstract_params(cfg))

  w = 1280
  vit = {"visual.patch_embedding.weight": (w, 3, 14, 14), "visual.cls_embedding": (1, 1, w),
         "visual.pos_embedding": (1, 257, w), "visual.pre_norm.weight": (w,), "visual.pre_norm.bias": (w,),
         "visual.post_norm.weight": (w,), "visual.post_norm.bias": (w,), "visual.head": (w, 1024), "log_scale": (),
         "textual.token_embedding.weight": (514, 1024)}
  for i in range(32):
    block = {"norm1": (w,), "norm2": (w,), "attn.to_qkv": (3 * w, w), "attn.proj": (w, w), "mlp.0": (4 * w, w),
             "mlp.2": (w, 4 * w)}
    for name, shape in block.items():
      vit[f"visual.transformer.{i}.{name}.weight"] = shape
      vit[f"visual.transformer.{i}.{name}.bias"] = shape[:1]
  cfg = wan_clip.read_config("unused.pth", "wan", vit)
  assert cfg == clip.preset("vit-h-14")
  unused = wan_clip.unused_keys(wan_clip.WAN_RULES, vit, cfg)
  used = {k: v for k, v in vit.items() if k not in unused}
  assert len(vit) - len(used) == 12 + 5  # block 31, post-LN, head, logit scale, text tower
  core.plan(wan_clip.WAN_RULES, used, clip.abstract_params(cfg))


def test_presets_have_the_published_parameter_counts():
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  assert count(t5.abstract_params(t5.preset("umt5-xxl"))) == 5_680_910_336  # 5.68 B (wan_spec 4.1)
  vit = clip.preset("vit-h-14")
  block = count(clip.abstract_params(vit)["blocks"]) // vit.used_layers
  post_norm_and_head = 2 * 1280 + 1280 * 1024
  assert count(clip.abstract_params(vit)) + block + post_norm_and_head == 632_076_800  # 632 M tower (wan_spec 4.2)
  assert count(clip.abstract_params(vit)["embed"]["pos_embedding"]) == 257 * 1280
