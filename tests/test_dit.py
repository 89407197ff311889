"""The Wan DiT equals diffusers' WanTransformer3DModel on converted random weights, from both checkpoint layouts."""

import contextlib
import dataclasses
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, optional_import

from one4d_jax.models.wan import dit

torch = optional_import("torch")
diffusers = optional_import("diffusers")
safetensors_torch = optional_import("safetensors.torch")

from checkpoints_convert import core, wan, wan_dit  # noqa: E402
from one4d_jax import checkpoints  # noqa: E402

T2V = dit.DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, text_dim=24, freq_dim=16,
                    policy=dit.FLOAT32)
I2V = T2V.replace(in_dim=36, image_dim=20)


def reference_model(cfg: dit.DiTConfig, seed: int = 0):
  """diffusers model with random weights (biases and norm scales perturbed too, so every tensor matters)."""
  torch.manual_seed(seed)
  model = diffusers.WanTransformer3DModel(**wan_dit.diffusers_kwargs(cfg)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def inputs(cfg: dit.DiTConfig, text_tokens: int = 7, seed: int = 0):
  """Odd latent size 3 x 6 x 10, batch 2 with different timesteps, text shorter than 512."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, cfg.in_dim, 3, 6, 10)).astype(np.float32)
  t = np.array([999.0, 37.5], np.float32)
  text = rng.standard_normal((2, text_tokens, cfg.text_dim)).astype(np.float32)
  image = rng.standard_normal((2, 257, cfg.image_dim)).astype(np.float32) if cfg.is_i2v else None
  return x, t, text, image


def reference_forward(model, cfg, x, t, text, image):
  """diffusers expects text zero-padded to 512 (its pipelines pad; I2V hard-codes the 512-token split)."""
  text512 = np.pad(text, ((0, 0), (0, cfg.text_len - text.shape[1]), (0, 0)))
  with torch.no_grad():
    return model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text512),
                 encoder_hidden_states_image=None if image is None else torch.from_numpy(image),
                 return_dict=False)[0].numpy()


def state_dict_numpy(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@needs_torch
@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_forward_equals_diffusers_on_converted_weights(cfg):
  model = reference_model(cfg)
  params = core.convert_in_memory(wan_dit.DIFFUSERS_RULES, state_dict_numpy(model), dit.abstract_params(cfg))
  x, t, text, image = inputs(cfg)
  ours = jax.jit(lambda p, *a: dit.forward(p, cfg, *a))(params, x, t, text, image)
  ref = reference_forward(model, cfg, x, t, text, image)
  assert ours.shape == ref.shape == (2, 16, 3, 6, 10)
  assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


def write_diffusers_folder(model, path):
  model.save_pretrained(path, max_shard_size="30KB")  # several shards plus an index


def write_wan_folder(model, cfg, path):
  """The original Wan layout, made by renaming the diffusers state dict with the key maps in reverse."""
  os.makedirs(path)
  state = core.rename(model.state_dict(), wan_dit.DIFFUSERS_RULES, wan_dit.WAN_RULES)
  safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                              os.path.join(path, "diffusion_pytorch_model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(wan_dit.wan_config_json(cfg), f)


@needs_torch
@pytest.mark.parametrize("layout", ["diffusers", "wan"])
@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_converted_checkpoint_loads_and_matches_diffusers(tmp_path, cfg, layout):
  model = reference_model(cfg, seed=1)
  src = str(tmp_path / "src")
  write_diffusers_folder(model, src) if layout == "diffusers" else write_wan_folder(model, cfg, src)
  fmt, _ = core.convert("dit", src, str(tmp_path / "dst"), dtype="fp32", progress=False)
  assert fmt == layout
  loaded_cfg, params = checkpoints.load(str(tmp_path / "dst"))
  assert loaded_cfg.is_i2v == cfg.is_i2v and loaded_cfg.num_layers == cfg.num_layers
  x, t, text, image = inputs(cfg, text_tokens=11)
  ours = dit.forward(params, loaded_cfg.with_policy(dtype="float32"), x, t, text, image)
  assert np.abs(np.asarray(ours) - reference_forward(model, cfg, x, t, text, image)).max() <= 1e-5


@needs_torch
def test_bad_checkpoint_lists_every_problem_and_writes_nothing(tmp_path):
  model = reference_model(I2V)
  state = dict(model.state_dict())
  del state["blocks.1.attn2.add_k_proj.weight"]                       # missing
  state["blocks.0.attn1.extra.weight"] = torch.zeros(3)               # unexpected
  state["proj_out.weight"] = torch.zeros(64, 31)                      # wrong shape
  src = tmp_path / "src"
  src.mkdir()
  safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(src / "model.safetensors"))
  model.save_config(str(src))
  with pytest.raises(core.ConversionError) as err:
    core.convert("dit", str(src), str(tmp_path / "dst"), progress=False)
  message = str(err.value)
  assert "1 missing, 1 unexpected, 1 wrong shape" in message
  assert "blocks.1.attn2.add_k_proj.weight -> blocks/cross_attn/k_img/kernel[1]" in message
  assert "blocks.0.attn1.extra.weight" in message
  assert "proj_out.weight: shape [64, 31]" in message and "expects [32, 64]" in message
  assert sorted(os.listdir(tmp_path)) == ["src"]


@needs_torch
def test_conversion_refuses_existing_destination_and_cleans_up_on_failure(tmp_path, monkeypatch):
  model = reference_model(T2V)
  src = str(tmp_path / "src")
  write_diffusers_folder(model, src)
  (tmp_path / "exists").mkdir()
  with pytest.raises(core.ConversionError, match="already exists"):
    core.convert("dit", src, str(tmp_path / "exists"), progress=False)

  def failing_read(*args):
    raise OSError("disk went away")
  monkeypatch.setattr(core, "read_tensor", failing_read)
  with pytest.raises(OSError):
    core.convert("dit", src, str(tmp_path / "dst"), progress=False)
  assert sorted(os.listdir(tmp_path)) == ["exists", "src"]


def test_loading_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a converted one4d_jax checkpoint"):
    checkpoints.load(str(tmp_path))


@needs_torch
def test_cli_verify_prints_max_abs_err_last(tmp_path):
  src = str(tmp_path / "src")
  write_wan_folder(reference_model(I2V, seed=3), I2V, src)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = wan.main(["--component", "dit", "--src", src, "--dst", str(tmp_path / "dst"), "--dtype", "bf16",
                     "--verify"])
  last = out.getvalue().strip().splitlines()[-1]
  assert code == 0, out.getvalue()
  assert last.startswith("max_abs_err=") and float(last.split("=")[1]) <= 1e-5


def test_bad_inputs_name_the_problem():
  params = dit.init(I2V, jax.random.key(0))
  x, t, text, image = inputs(I2V)
  with pytest.raises(ValueError, match="latents have 16 channels, the model expects in_dim=36"):
    dit.forward(params, I2V, x[:, :16], t, text, image)
  with pytest.raises(ValueError, match="an I2V model needs CLIP tokens"):
    dit.forward(params, I2V, x, t, text, None)
  with pytest.raises(ValueError, match="text has 600 tokens, more than text_len=512"):
    dit.forward(params, I2V, x, t, np.zeros((2, 600, 24), np.float32), image)


def test_policy_is_apart_from_the_architecture_and_round_trips_through_json():
  """Every Policy field may differ between two runs of one checkpoint, no architecture field may: the architectures
  compare as one object, and config.json (to_json / from_dict) keeps both parts."""
  run = dit.Policy(dtype="float32", param_dtype="float32", attention="xla", remat="save:qkv", lora_scale=0.5,
                   lora_mode="merged", sharding_rules=(("activation_batch", "fsdp"),), context_parallel="ulysses")
  assert all(getattr(run, f.name) != f.default for f in dataclasses.fields(dit.Policy))  # every field changed
  cfg = I2V.replace(policy=run)
  assert cfg != I2V and cfg.architecture() == I2V.architecture() == I2V.with_policy(remat="full").architecture()
  assert I2V.replace(num_layers=3).architecture() != I2V.architecture()
  assert dit.DiTConfig.from_dict(json.loads(cfg.to_json())) == cfg
  with pytest.raises(ValueError, match="unknown Policy fields"):
    dit.DiTConfig.from_dict({**json.loads(I2V.to_json()), "policy": {"remat_everything": True}})
  with pytest.raises(ValueError, match="unknown remat policy"):
    I2V.with_policy(remat="sometimes")


@pytest.mark.parametrize("policy", ["full", "dots", "save_qkv_attn", "save:ffn_hidden,cross_attn"])
def test_remat_policies_leave_values_and_gradients_unchanged(policy):
  params = dit.init(T2V, jax.random.key(1))
  x, t, text, _ = inputs(T2V)
  loss = lambda p, cfg: jnp.mean(dit.forward(p, cfg, x, t, text) ** 2)
  ref_value, ref_grad = jax.value_and_grad(loss)(params, T2V)
  value, grad = jax.value_and_grad(loss)(params, T2V.with_policy(remat=policy))
  assert np.allclose(value, ref_value, rtol=1e-6)
  assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)))


def test_remat_rematerialises_in_the_compiled_gradient():
  """Read off the compiled gradient program: `full` recomputes the blocks' forward matmuls in the backward pass
  (more dot products than without remat) and keeps fewer bytes of temporaries; saving named activations
  (`save_qkv_attn`) recomputes less than `full`. Deleting the jax.checkpoint makes every count equal."""
  import re
  params = dit.init(T2V, jax.random.key(1))
  x, t, text, _ = inputs(T2V)

  def compiled(policy):
    cfg = T2V.with_policy(remat=policy)
    c = jax.jit(jax.grad(lambda p: jnp.mean(dit.forward(p, cfg, x, t, text) ** 2))).lower(params).compile()
    return len(re.findall(r" dot\(", c.as_text())), c.memory_analysis().temp_size_in_bytes

  (dots_none, temp_none), (dots_full, temp_full) = compiled("none"), compiled("full")
  dots_saved, _ = compiled("save_qkv_attn")
  assert dots_full > dots_none and temp_full < temp_none
  assert dots_none < dots_saved < dots_full
  with pytest.raises(ValueError, match="unknown remat policy 'save:qvk'"):
    T2V.with_policy(remat="save:qvk")


def test_presets_have_the_published_parameter_counts():
  count = lambda cfg: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(dit.abstract_params(cfg)))
  assert count(dit.preset("t2v-1.3b")) == 1_418_996_800      # wan_spec 1.1
  assert count(dit.preset("t2v-14b")) == 14_288_491_584
  assert count(dit.preset("i2v-14b")) == 16_394_878_784
  assert count(dit.preset("fun-inp-14b")) == 16_394_878_784
  assert count(dit.preset("fun-inp-1.3b")) == 1_564_428_608


@needs_torch
def test_checkpoint_loads_onto_a_mesh_sharded_by_logical_axes(tmp_path):
  from jax.sharding import PartitionSpec as P

  from configs import one4d as one4d_config
  from one4d_jax import sharding
  model = reference_model(I2V, seed=2)
  write_diffusers_folder(model, str(tmp_path / "src"))
  core.convert("dit", str(tmp_path / "src"), str(tmp_path / "dst"), dtype="fp32", progress=False)
  mesh = sharding.make_mesh(fsdp=4, tensor=2)
  rules = one4d_config.get_config("variant=tiny").sharding_rules
  with pytest.raises(ValueError, match="needs rules="):
    checkpoints.load(str(tmp_path / "dst"), shardings=mesh)
  cfg, params = checkpoints.load(str(tmp_path / "dst"), shardings=mesh, rules=rules)
  assert params["blocks"]["self_attn"]["q"]["kernel"].sharding.spec == P(None, ("fsdp", "context"), "tensor")
  assert params["blocks"]["self_attn"]["q"]["kernel"].shape == (2, 32, 32)
  x, t, text, image = inputs(cfg)
  ours = jax.jit(lambda p, *a: dit.forward(p, cfg, *a))(params, x, t, text, image)
  assert np.abs(np.asarray(ours) - reference_forward(model, cfg, x, t, text, image)).max() <= 1e-5


@needs_torch
@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the second adapter, on purpose
@pytest.mark.parametrize("lora_mode", ["factored", "merged"])
def test_one4d_branches_equal_diffusers_with_peft_adapters(lora_mode):
  """What a PyTorch user would run: one WanTransformer3DModel, two peft adapters (rgb, xyz), one forward per branch.
  With the links zero, One4D's branch velocities equal it; the LoRA factors travel through `wan_dit.lora_to_peft`."""
  peft = pytest.importorskip("peft")
  from one4d_jax.models import one4d

  cfg = I2V.with_policy(lora_mode=lora_mode)
  ocfg = one4d.One4DConfig(cfg, lora_rank=4, lora_alpha=8.0, link_layers=(1,))
  model = reference_model(cfg)
  frozen = core.convert_in_memory(wan_dit.DIFFUSERS_RULES, state_dict_numpy(model), dit.abstract_params(cfg))
  trainable = one4d.init_trainable(ocfg, dit.abstract_params(cfg), jax.random.key(1))
  keys = iter(jax.random.split(jax.random.key(2), 1000))
  trainable["lora"] = jax.tree_util.tree_map_with_path(  # B random, so every factor matters (links stay zero)
      lambda p, a: 0.3 * jax.random.normal(next(keys), a.shape) if p[-1].key == "b" else a, trainable["lora"])
  x, t, text, image = inputs(cfg)
  rgb, cond = x[:, :16], x[:, 16:]
  xyz = np.random.default_rng(3).standard_normal(rgb.shape).astype(np.float32)
  v_rgb, v_xyz = jax.jit(lambda tr: one4d.apply(frozen, tr, ocfg, rgb, xyz, cond, t, text, image))(trainable)

  modules = sorted({k.split(".", 2)[2].rsplit(".lora_", 1)[0] for k in wan_dit.lora_to_peft(trainable["lora"]["rgb"])})
  assert len(modules) == 12  # every linear of a block
  for name in ("rgb", "xyz"):
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=modules), adapter_name=name)
    state = {k: torch.from_numpy(v) for k, v in wan_dit.lora_to_peft(trainable["lora"][name]).items()}
    result = peft.set_peft_model_state_dict(model, state, adapter_name=name)
    assert not [k for k in result.unexpected_keys if "lora" in k]
  for name, ours, branch_x in (("rgb", v_rgb, x), ("xyz", v_xyz, np.concatenate([xyz, np.zeros_like(cond)], 1))):
    model.set_adapter(name)
    ref = reference_forward(model, cfg, branch_x, t, text, image)
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-5, name
  model.disable_adapters()
  assert np.abs(np.asarray(v_rgb) - reference_forward(model, cfg, x, t, text, image)).max() > 1e-2  # LoRA matters
