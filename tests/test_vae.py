"""The Wan2.1 VAE equals diffusers' AutoencoderKLWan on converted random weights; chunked, tiled and converted paths."""

import contextlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, optional_import

from one4d_jax.models.wan import vae

torch = optional_import("torch")
diffusers = optional_import("diffusers")
safetensors_torch = optional_import("safetensors.torch")

from checkpoints_convert import core, wan, wan_vae  # noqa: E402
from one4d_jax import checkpoints  # noqa: E402

CFG = vae.preset("tiny")  # dim 8, dim_mult (1, 2, 2, 2), 1 res block per stage, z_dim 16


def reference_model(cfg: vae.VAEConfig = CFG, seed: int = 0):
  """diffusers VAE with random weights; every tensor perturbed, so norm scales and biases matter too."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKLWan(**wan_vae.diffusers_kwargs(cfg)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def state_dict_numpy(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
  model = reference_model()
  params = core.convert_in_memory(wan_vae.diffusers_rules(CFG), state_dict_numpy(model), vae.abstract_params(CFG))
  return model, jax.device_put(params, jax.devices()[0])  # placed like `checkpoints.load` does: compiled code is shared


def normalise(cfg, mu):
  mean = np.asarray(cfg.latents_mean, np.float32)[:, None, None, None]
  std = np.asarray(cfg.latents_std, np.float32)[:, None, None, None]
  return (mu - mean) / std


def video(frames: int, batch: int = 1, height: int = 32, width: int = 48, seed: int = 0):
  """Non-square clips. Tests share a few shapes: `encode`/`decode` jit internally, so each shape compiles once."""
  return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, frames, height, width)).astype(np.float32)


def reference_codec(model, x):
  """diffusers: raw posterior mean and its decoding."""
  with torch.no_grad():
    mu = model.encode(torch.from_numpy(x)).latent_dist.mode()
    return mu.numpy(), model.decode(mu).sample.numpy()


@needs_torch
@pytest.mark.parametrize("frames,batch", [(1, 1), (5, 1), (9, 2)])
def test_encode_and_decode_equal_diffusers_on_a_non_square_clip(reference, frames, batch):
  model, params = reference
  x = video(frames, batch)
  mu, ref_video = reference_codec(model, x)
  z = np.asarray(vae.encode(params, CFG, x))
  out = np.asarray(vae.decode(params, CFG, normalise(CFG, mu)))
  assert z.shape == mu.shape == (batch, 16, 1 + (frames - 1) // 4, 4, 6)
  assert out.shape == ref_video.shape == x.shape
  assert np.abs(z - normalise(CFG, mu)).max() <= 1e-4
  assert np.abs(out - ref_video).max() <= 1e-4
  assert np.mean(np.abs(ref_video) < 1) > 0.3  # the comparison is not decided by the [-1, 1] clamp alone


@needs_torch
def test_whole_sequence_path_equals_the_chunked_path(reference):
  _, params = reference
  x = video(9, 2)  # encode chunks [0], [1:5], [5:9]; 3 latent frames decoded one at a time
  z_chunked = np.asarray(vae.encode(params, CFG, x, chunked=True))
  z_whole = np.asarray(vae.encode(params, CFG, x, chunked=False))
  assert np.abs(z_whole - z_chunked).max() <= 1e-5
  out_chunked = np.asarray(vae.decode(params, CFG, z_chunked, chunked=True))
  out_whole = np.asarray(vae.decode(params, CFG, z_chunked, chunked=False))
  assert np.abs(out_whole - out_chunked).max() <= 1e-5


@needs_torch
def test_posterior_sample_adds_the_reference_posterior_std_in_normalised_units(reference):
  model, params = reference
  x = video(5)
  rng = jax.random.key(3)
  with torch.no_grad():
    posterior = model.encode(torch.from_numpy(x)).latent_dist
  sample = np.asarray(vae.encode(params, CFG, x, rng=rng))
  eps = np.moveaxis(np.asarray(jax.random.normal(rng, (1, 2, 4, 6, 16))), -1, 1)  # drawn channel-last inside
  expected = normalise(CFG, posterior.mean.numpy() + posterior.std.numpy() * eps)
  assert np.abs(sample - expected).max() <= 1e-4
  assert np.abs(sample - normalise(CFG, posterior.mean.numpy())).max() > 1e-2


@needs_torch
def test_tiled_decode_equals_diffusers_tiled_decode(reference):
  model, params = reference
  z = np.random.default_rng(1).standard_normal((1, 16, 1, 7, 10)).astype(np.float32)  # 56 x 80 pixels, 3 x 4 tiles
  mean = np.asarray(CFG.latents_mean, np.float32)[:, None, None, None]
  mu = torch.from_numpy(z * np.asarray(CFG.latents_std, np.float32)[:, None, None, None] + mean)
  model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                      tile_sample_stride_width=24)
  try:
    with torch.no_grad():
      ref_tiled = model.decode(mu).sample.numpy()
  finally:
    model.disable_tiling()
  tiled = np.asarray(vae.decode(params, CFG, z, tile=(32, 32), tile_stride=(24, 24), chunked=False))
  assert np.abs(tiled - ref_tiled).max() <= 1e-4


@needs_torch
def test_a_tile_as_large_as_the_image_decodes_exactly_like_no_tiling(reference):
  _, params = reference
  z = np.random.default_rng(2).standard_normal((1, 16, 2, 4, 6)).astype(np.float32)
  tiled = np.asarray(vae.decode(params, CFG, z, tile=(32, 48)))
  assert np.array_equal(tiled, np.asarray(vae.decode(params, CFG, z)))


@needs_torch
def test_wrong_frame_count_or_size_names_the_problem(reference):
  _, params = reference
  with pytest.raises(ValueError, match=r"video has 7 frames; the Wan VAE needs 1 \+ 4k frames \(nearest: 5 or 9\)"):
    vae.encode(params, CFG, video(7))
  with pytest.raises(ValueError, match=r"has 4 frames.*\(nearest: 1 or 5\)"):
    vae.encode(params, CFG, video(4))
  with pytest.raises(ValueError, match="size 36x48 is not divisible by the spatial factor 8"):
    vae.encode(params, CFG, video(5, height=36))
  with pytest.raises(ValueError, match=r"must be \[B, 3, F, H, W\]"):
    vae.encode_pointmaps(params, CFG, video(5)[:, :2])
  with pytest.raises(ValueError, match="latents must be"):
    vae.decode(params, CFG, np.zeros((1, 4, 2, 4, 4), np.float32))


@needs_torch
def test_pointmaps_go_through_the_rgb_codec_unchanged(reference):
  _, params = reference
  xyz = video(5, seed=7)
  z = np.asarray(vae.encode_pointmaps(params, CFG, xyz))
  assert np.array_equal(np.asarray(z), np.asarray(vae.encode(params, CFG, xyz)))
  assert np.array_equal(np.asarray(vae.decode_pointmaps(params, CFG, z, chunked=True)),
                        np.asarray(vae.decode(params, CFG, z, chunked=True)))


@needs_torch
def test_bf16_compute_stays_close_to_float32(reference):
  _, params = reference
  x = video(5)
  cfg16 = CFG.replace(dtype="bfloat16")
  z32, z16 = np.asarray(vae.encode(params, CFG, x)), np.asarray(vae.encode(params, cfg16, x, chunked=False))
  out32 = np.asarray(vae.decode(params, CFG, z32))
  out16 = np.asarray(vae.decode(params, cfg16, z32, chunked=False))
  assert z16.dtype == out16.dtype == np.float32
  assert np.abs(z16 - z32).max() <= 0.1 * np.abs(z32).max()
  assert np.abs(out16 - out32).mean() <= 0.05


@needs_torch
def test_wan21_preset_matches_the_published_size_and_both_key_maps():
  cfg = vae.preset("wan2.1")
  abstract = vae.abstract_params(cfg)
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract)) == 126_892_531  # wan_spec 3.1
  with torch.device("meta"):
    state = diffusers.AutoencoderKLWan().state_dict()
  assert len(state) == 194
  core.plan(wan_vae.diffusers_rules(cfg), {k: tuple(v.shape) for k, v in state.items()}, abstract)
  wan_state = core.rename(state, wan_vae.diffusers_rules(cfg), wan_vae.wan_rules(cfg))
  wan_shapes = {k: tuple(v.shape) for k, v in wan_state.items()}
  core.plan(wan_vae.wan_rules(cfg), wan_shapes, abstract)
  assert wan_vae.infer_wan_config(wan_shapes) == cfg
  # wan_spec 3.4: the only shortcut convs, and the shapes of the temporal resamples
  assert sorted(k for k in wan_shapes if k.endswith("shortcut.weight")) == [
      "decoder.upsamples.4.shortcut.weight", "encoder.downsamples.3.shortcut.weight",
      "encoder.downsamples.6.shortcut.weight"]
  assert wan_shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
  assert wan_shapes["encoder.downsamples.8.time_conv.weight"] == (384, 384, 3, 1, 1)
  assert wan_shapes["decoder.middle.1.to_qkv.weight"] == (1152, 384, 1, 1)


def test_logical_axes_name_every_parameter_axis():
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  axes, abstract = vae.logical_axes(CFG), vae.abstract_params(CFG)
  assert jax.tree.structure(abstract) == jax.tree.structure(axes, is_leaf=is_spec)
  assert all(len(spec) == a.ndim for a, spec in zip(jax.tree.leaves(abstract), jax.tree.leaves(axes, is_leaf=is_spec)))


# ----------------------------------------------------------------------------------------------------- conversion


def write_wan_pth(model, path):
  """The original Wan layout, made by renaming the diffusers state dict with the key maps in reverse."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save(core.rename(model.state_dict(), wan_vae.diffusers_rules(CFG), wan_vae.wan_rules(CFG)), path)


@needs_torch
@pytest.mark.parametrize("layout", ["diffusers", "wan-folder", "wan-file"])
def test_converted_checkpoint_loads_and_matches_diffusers(tmp_path, layout):
  model = reference_model(seed=1)
  if layout == "diffusers":
    src = str(tmp_path / "src")
    model.save_pretrained(src)
  else:
    write_wan_pth(model, str(tmp_path / "src" / "Wan2.1_VAE.pth"))
    (tmp_path / "src" / "unrelated.pth").write_bytes(b"")  # a Wan model folder holds other .pth files too
    src = str(tmp_path / "src") if layout == "wan-folder" else str(tmp_path / "src" / "Wan2.1_VAE.pth")
  fmt, _ = core.convert("vae", src, str(tmp_path / "dst"), dtype="fp32", progress=False)
  assert fmt == layout.split("-")[0]
  cfg, params = checkpoints.load(str(tmp_path / "dst"))
  assert cfg == CFG  # architecture read from config.json (diffusers) or from the tensor shapes (Wan)
  x = video(5, seed=4)
  mu, ref_video = reference_codec(model, x)
  assert np.abs(np.asarray(vae.encode(params, cfg, x)) - normalise(cfg, mu)).max() <= 1e-4
  assert np.abs(np.asarray(vae.decode(params, cfg, normalise(cfg, mu))) - ref_video).max() <= 1e-4


@needs_torch
@pytest.mark.parametrize("layout", ["diffusers", "wan"])
def test_bad_checkpoint_lists_every_problem_and_writes_nothing(tmp_path, layout):
  model = reference_model()
  src = tmp_path / "src"
  if layout == "diffusers":
    model.save_pretrained(str(src))  # config.json; the weights file is replaced below
    state = dict(model.state_dict())
    missing = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    unexpected, wrong = "encoder.mid_block.extra.weight", "encoder.conv_in.weight"
  else:
    src.mkdir()
    state = core.rename(model.state_dict(), wan_vae.diffusers_rules(CFG), wan_vae.wan_rules(CFG))
    missing, unexpected, wrong = ("decoder.upsamples.3.shortcut.weight", "encoder.middle.9.weight",
                                  "encoder.downsamples.2.residual.6.weight")
  del state[missing]
  state[unexpected] = torch.zeros(3)
  state[wrong] = torch.zeros(8, 8, 3, 3, 2)
  if layout == "diffusers":
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(src / "diffusion_pytorch_model.safetensors"))
  else:
    torch.save(state, str(src / "Wan2.1_VAE.pth"))
  with pytest.raises(core.ConversionError) as err:
    core.convert("vae", str(src), str(tmp_path / "dst"), progress=False)
  message = str(err.value)
  assert "1 missing, 1 unexpected, 1 wrong shape" in message
  assert f"missing key: {missing} -> decoder/up_3/shortcut/kernel" in message
  assert f"unexpected key: {unexpected} [3]" in message
  assert f"{wrong}: shape [8, 8, 3, 3, 2]" in message
  assert sorted(os.listdir(tmp_path)) == ["src"]


@needs_torch
def test_cli_verify_returns_0_and_prints_max_abs_err_last(tmp_path):
  write_wan_pth(reference_model(seed=2), str(tmp_path / "src" / "Wan2.1_VAE.pth"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = wan.main(["--component", "vae", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"),
                     "--dtype", "bf16", "--verify"])
  last = out.getvalue().strip().splitlines()[-1]
  assert code == 0, out.getvalue()
  assert last.startswith("max_abs_err=") and float(last.split("=")[1]) <= 1e-4
  cfg, params = checkpoints.load(str(tmp_path / "dst"))
  assert cfg.param_dtype == "bfloat16" and params["decoder"]["conv_in"]["kernel"].dtype == jnp.bfloat16
  write_wan_pth(reference_model(seed=3), str(tmp_path / "other" / "Wan2.1_VAE.pth"))
  assert core.verify("vae", str(tmp_path / "other"), str(tmp_path / "dst")) > 1e-2  # the check can fail
