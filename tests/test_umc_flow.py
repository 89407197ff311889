"""UMC tensors for the four tasks against an independent computation; the flow convention against Wan's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from one4d_jax import flow, umc

F = 13  # pixel frames -> 4 latent frames


def mask_by_formula(observed: np.ndarray) -> np.ndarray:
  """wan_spec 5.1: channel c of latent frame j holds pixel frame 0 if j = 0, else pixel frame 4(j-1)+1+c."""
  f_lat = (len(observed) - 1) // 4 + 1
  out = np.zeros((4, f_lat))
  for j in range(f_lat):
    for c in range(4):
      out[c, j] = observed[0] if j == 0 else observed[4 * (j - 1) + 1 + c]
  return out


@pytest.mark.parametrize("task,sparsity,expected_frames", [
    ("single_image", None, [0]),
    ("sparse", 0.3, [0, 4, 8, 12]),  # round(0.3 * 13) = 4 frames at linspace(0, 12, 4)
    ("full_video", None, list(range(F))),
    ("text", None, []),
])
def test_four_tasks_give_the_documented_condition(task, sparsity, expected_frames):
  observed = umc.observed_frames(task, F, sparsity)
  assert list(np.flatnonzero(observed)) == expected_frames

  frames = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 3, F, 16, 24)), jnp.float32)
  encode = lambda video: jnp.tile(video[:, :, ::4, ::8, ::8].mean(1, keepdims=True), (1, 16, 1, 1, 1)) + 0.5
  cond = umc.condition(encode, frames, jnp.asarray(observed)[None])
  assert cond.shape == (1, 20, 4, 2, 3)

  mask = np.asarray(cond[0, :4])
  np.testing.assert_array_equal(mask, np.broadcast_to(mask_by_formula(observed)[..., None, None], mask.shape))
  video = np.asarray(umc.condition_video(frames, jnp.asarray(observed)[None]))
  assert np.all(video[:, :, ~observed] == 0) and np.array_equal(video[:, :, observed], np.asarray(frames)[:, :, observed])
  if task == "text":  # no frame: mask and condition latent all zero (not the latent of a grey video)
    assert not np.any(np.asarray(cond))
  else:
    np.testing.assert_array_equal(np.asarray(cond[:, 4:]), np.asarray(encode(jnp.asarray(video))))
  clip = umc.clip_condition(jnp.ones((1, 257, 8)), jnp.asarray(observed)[None])
  assert np.all(np.asarray(clip) == (0.0 if task == "text" else 1.0))


def test_sparse_keeps_first_and_last_frames_at_every_ratio():
  for ratio in (0.5, 0.25, 0.1, 0.05, 0.03):
    observed = umc.observed_frames("sparse", 81, ratio)
    assert observed[0] and observed[-1] and observed.sum() == max(2, round(ratio * 81))


def test_frame_counts_other_than_1_plus_4k_are_rejected():
  with pytest.raises(ValueError, match="10 frames: the VAE needs 1 \\+ 4k frames \\(nearest: 9 or 13\\)"):
    umc.latent_mask(jnp.ones((1, 10), bool), (2, 2))


def test_task_sampler_matches_the_configured_ratios():
  rng = np.random.default_rng(0)
  draws = [umc.sample_task(rng, 21)[0] for _ in range(4000)]
  for task, p in umc.PAPER_TASK_PROBS.items():
    assert abs(draws.count(task) / len(draws) - p) < 0.025, task
  with_text = {"single_image": 0.3, "sparse": 0.3, "full_video": 0.3, "text": 0.1}
  draws = [umc.sample_task(rng, 21, with_text)[0] for _ in range(4000)]
  assert abs(draws.count("text") / len(draws) - 0.1) < 0.02
  with pytest.raises(ValueError, match="unknown tasks"):
    umc.sample_task(rng, 21, {"image": 1.0})


def test_paper_flow_is_wans_flow_with_sigma_one_minus_t():
  rng = np.random.default_rng(0)
  z, eps = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((2, 3, 4)).astype(np.float32)
  t = np.array([0.2, 0.9], np.float32)
  sigma = 1 - t
  wan_noisy = (1 - sigma)[:, None, None] * z + sigma[:, None, None] * eps  # Wan: x_s = (1 - s) x0 + s eps
  np.testing.assert_allclose(flow.noisy(z, eps, t), wan_noisy, rtol=1e-6)
  np.testing.assert_allclose(flow.to_wan_timestep(t), 1000 * sigma, rtol=1e-6)
  wan_output = eps - z  # a perfect Wan model predicts eps - x0 ...
  np.testing.assert_allclose(flow.velocity_from_wan(wan_output), flow.target(z, eps))  # ... = -(paper velocity)
  # one Euler step along the paper's velocity is one Wan Euler step x <- x + (s_next - s) v_wan
  dt = 0.1
  np.testing.assert_allclose(flow.noisy(z, eps, t) + dt * flow.target(z, eps),
                             wan_noisy + (-dt) * wan_output, rtol=1e-5, atol=1e-6)


def test_training_times_follow_the_shifted_grid():
  t = np.asarray(flow.sample_t(jax.random.key(0), 20000))
  sigma = 1 - t
  grid = 5 * np.linspace(1, 1e-3, 1000) / (1 + 4 * np.linspace(1, 1e-3, 1000))
  assert np.all(np.min(np.abs(sigma[:, None] - grid[None]), axis=1) < 1e-6)  # every draw is a grid point
  assert abs(np.median(sigma) - 5 * 0.5 / (1 + 4 * 0.5)) < 0.02  # uniform index: median at the shifted midpoint
  t = np.asarray(flow.sample_t(jax.random.key(1), 2000, "logit_normal", shift=1.0))
  assert 0 < t.min() and t.max() < 1 and abs(np.median(t) - 0.5) < 0.05
  with pytest.raises(ValueError, match="unknown timestep scheme"):
    flow.sample_t(jax.random.key(0), 2, "cosine")


def test_latent_validity_is_the_share_of_valid_pixels_each_latent_cell_encodes():
  from one4d_jax.models.wan import vae as vae_lib
  from one4d_jax.train.inputs import latent_validity
  cfg = vae_lib.preset("wan2.1")
  rng = np.random.default_rng(0)
  valid = rng.random((2, 9, 16, 24)) > 0.3
  got = latent_validity(valid, cfg)
  assert got.shape == (2, 1, 3, 2, 3)
  frames = {0: [0], 1: [1, 2, 3, 4], 2: [5, 6, 7, 8]}  # the causal VAE: frame 0 alone, then 4 frames per latent
  for b in range(2):
    for i, fs in frames.items():
      for y in range(2):
        for x in range(3):
          want = valid[b, fs, 8 * y:8 * y + 8, 8 * x:8 * x + 8].mean()
          assert abs(got[b, 0, i, y, x] - want) < 1e-6
  with pytest.raises(ValueError, match="does not fold onto the VAE's latent grid"):
    latent_validity(valid[:, :8], cfg)


def test_the_masked_xyz_loss_ignores_cells_without_valid_pixels():
  rng = np.random.default_rng(1)
  pred, target = (jnp.asarray(rng.standard_normal((2, 16, 3, 2, 3)), jnp.float32) for _ in range(2))
  assert float(flow.mse(pred, target, jnp.ones((2, 1, 3, 2, 3)))) == pytest.approx(float(flow.mse(pred, target)))
  weight = np.ones((2, 1, 3, 2, 3), np.float32)
  weight[0, 0, 1, 1, 2], weight[1, 0, 0, 0, 0] = 0.0, 0.25
  loss = float(flow.mse(pred, target, jnp.asarray(weight)))
  err = np.square(np.asarray(pred) - np.asarray(target))
  assert loss == pytest.approx(float((weight * err).sum() / (weight.sum() * 16)), rel=1e-6)
  moved = pred.at[0, :, 1, 1, 2].add(100.0)  # a cell without valid pixels: the loss does not see it
  assert float(flow.mse(moved, target, jnp.asarray(weight))) == pytest.approx(loss, rel=1e-6)
