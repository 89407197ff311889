"""A tiny One4D learns: trained on the VAE latents of one real RGB-D clip, its flow-matching loss halves."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from one4d_jax import umc
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit, vae
from one4d_jax.train import step as train

PIL = pytest.importorskip("PIL.Image")

FRAMES = 5  # 1 + 4k
SIZE = (64, 96)  # H, W -> latents 8 x 12
STEPS = 500


def load_clip(folder: str):
  """Frames in [-1, 1] [1, 3, F, H, W] and pointmaps in frame 0's camera, normalised to [-1, 1], from frames.json."""
  entries = json.load(open(os.path.join(folder, "frames.json")))["root"][:FRAMES * 2:2]
  rgb, xyz = [], []
  for e in entries:
    image = PIL.open(os.path.join(folder, os.path.basename(e["rgb_image"]))).convert("RGB").resize(SIZE[::-1])
    depth = np.asarray(PIL.open(os.path.join(folder, os.path.basename(e["depth_image"]))), np.float32)
    depth = depth[::depth.shape[0] // SIZE[0], ::depth.shape[1] // SIZE[1]][:SIZE[0], :SIZE[1]]
    depth = depth * e["info"]["depth_scale"]
    k = np.array(e["info"]["kcam"]["matrix"], np.float64) * [[SIZE[1] / 640], [SIZE[0] / 480], [1]]
    v, u = np.mgrid[:SIZE[0], :SIZE[1]] + 0.5
    cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1) * depth[..., None]
    c2w = np.array(e["info"]["rt_cam"]["matrix"], np.float64)  # frame 0 is the identity: world = frame 0's camera
    xyz.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
    rgb.append(np.asarray(image, np.float32) / 127.5 - 1)
  xyz = np.stack(xyz)
  xyz = xyz / np.abs(xyz).max()
  to_video = lambda a: jnp.asarray(np.transpose(np.stack(a) if isinstance(a, list) else a, (3, 0, 1, 2))[None],
                                   jnp.float32)
  return to_video(rgb), to_video(xyz)


def test_tiny_one4d_halves_its_loss_on_a_real_clip(shared_dir):
  frames, pointmaps = load_clip(os.path.join(shared_dir, "data", "rgbd_office_31f_align3d"))
  vae_cfg = vae.preset("tiny")
  vae_params = vae.init(vae_cfg, jax.random.key(0))
  encode = jax.jit(lambda video: vae.encode(vae_params, vae_cfg, video, chunked=False))
  observed = jnp.asarray(umc.observed_frames("single_image", FRAMES))[None]
  base = dit.preset("tiny")
  batch = {"rgb": encode(frames), "xyz": encode(pointmaps), "cond": umc.condition(encode, frames, observed),
           "text": jax.random.normal(jax.random.key(1), (1, 7, base.text_dim)),
           "clip": jax.random.normal(jax.random.key(2), (1, 257, base.image_dim))}
  assert batch["rgb"].shape == (1, 16, 2, 8, 12)

  # The frozen base here is random, not pretrained: adapting the embeddings and the head too ("all") gives the tiny
  # model the capacity to fit (block linears alone plateau near 0.55x of the initial loss).
  cfg = one4d.One4DConfig(base, lora_rank=16, lora_alpha=16.0, lora_targets=one4d.TARGET_SETS["all"])
  frozen = dit.init(base, jax.random.key(3))
  tc = train.TrainConfig(lr=5e-3, warmup_steps=20, text_drop_prob=0.0)
  tx = train.make_optimizer(tc)
  state = train.init_state(one4d.init_trainable(cfg, dit.abstract_params(base), jax.random.key(4)), tx)
  step = train.jit_train_step(cfg, tc, tx)

  # The loss on fixed draws of (t, noise), so that before and after compare the same quantity.
  loss = jax.jit(lambda tr, key: train.loss_fn(tr, frozen, cfg, tc, batch, key)[0])
  evaluate = lambda tr: np.mean([loss(tr, key) for key in jax.random.split(jax.random.key(5), 16)])
  initial = evaluate(state.trainable)
  for _ in range(STEPS):
    state, metrics = step(frozen, state, batch, jax.random.key(6))
  final = evaluate(state.trainable)
  print(f"flow-matching loss {initial:.4f} -> {final:.4f} after {STEPS} steps")
  assert np.isfinite(final) and final <= 0.5 * initial
