"""Post-optimisation recovers cameras and depth from pointmaps; garbage inputs fail clearly or are handled."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from one4d_jax.eval import camera, depth
from one4d_jax.geometry import postopt

CFG = postopt.PostOptConfig(iters=100)


def _synthetic(f=4, h=12, w=16, focal=14.0, seed=0):
  """A smooth random scene seen by f cameras drifting sideways; pointmaps in frame 0's camera."""
  rng = np.random.default_rng(seed)
  v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  c2w = np.tile(np.eye(4), (f, 1, 1))
  c2w[:, 0, 3] = 0.05 * np.arange(f)
  c2w[:, 1, 3] = 0.02 * np.arange(f) ** 2
  ang = 0.03 * np.arange(f)
  c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = np.cos(ang), np.sin(ang), -np.sin(ang), np.cos(ang)
  d = 2.0 + 0.5 * rng.random((f, h, w))
  cam = np.stack([d * (u - w / 2) / focal, d * (v - h / 2) / focal, d], -1)
  xyz = np.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]
  return xyz.astype(np.float32), d.astype(np.float32), c2w


@pytest.fixture
def kitchen(shared_dir):
  """7-Scenes redkitchen, 60 frames subsampled 8x (60 x 80 px, K scaled so the principal point stays at W/2, H/2)."""
  from one4d_jax.data.readers import open_clip
  root = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  from one4d_jax.geometry.pointmaps import pointmaps_from_depth
  clip = open_clip("sevenscenes", root).load()
  dep, val = clip.depth[:, ::8, ::8], clip.valid[:, ::8, ::8]
  k = clip.K.copy()
  k[:, :2] /= 8
  xyz, ok = pointmaps_from_depth(dep, k, clip.c2w, val)
  return xyz, ok, dep, clip.c2w, k


@pytest.mark.parametrize("noise,max_ate,max_abs_rel", [(0.0, 0.01, 0.01), (0.02, 0.01, 0.03)])
def test_oracle_pointmaps_on_real_7scenes_recover_cameras_and_depth(kitchen, noise, max_ate, max_abs_rel):
  """Noise-free: ATE ~0.3 mm, Abs Rel ~0.001. 2% noise (sigma = 0.02 z per coordinate): ATE ~4 mm, Abs Rel ~0.02."""
  xyz, ok, dep, gt_c2w, k = kitchen
  rng = np.random.default_rng(0)
  noisy = xyz + noise * np.abs(xyz[..., 2:3]) * rng.normal(size=xyz.shape).astype(np.float32)
  out = postopt.post_optimize(noisy, ok, cfg=CFG)
  cams = camera.camera_metrics(np.asarray(out.c2w), gt_c2w)
  dm, _ = depth.depth_evaluation(np.asarray(out.depth), dep, align="none")
  print(f"noise {noise}: {cams}, abs_rel {dm['Abs Rel']:.5f}, focal {float(out.K[0, 0, 0]):.3f} (GT {k[0, 0, 0]})")
  assert cams["ate"] < max_ate
  assert dm["Abs Rel"] < max_abs_rel
  np.testing.assert_allclose(float(out.K[0, 0, 0]), k[0, 0, 0], rtol=0.03 if noise else 1e-3)
  assert np.all(np.isfinite(np.asarray(out.losses)))


def test_closed_form_init_is_exact_on_noise_free_pointmaps():
  xyz, d, c2w = _synthetic()
  out = postopt.post_optimize(xyz, cfg=postopt.PostOptConfig(iters=1))
  np.testing.assert_allclose(np.asarray(out.init_focal), 14.0, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out.init_c2w), c2w, atol=1e-4)


def test_lbfgs_option_lowers_the_objective():
  xyz, d, c2w = _synthetic()
  noisy = xyz + 0.01 * np.random.default_rng(1).normal(size=xyz.shape).astype(np.float32)
  out = postopt.post_optimize(noisy, cfg=postopt.PostOptConfig(iters=20, optimizer="lbfgs"))
  assert float(out.losses[-1]) < float(out.losses[0])
  np.testing.assert_allclose(np.asarray(out.c2w)[:, :3, 3], c2w[:, :3, 3], atol=0.05)


def test_smoothness_term_equals_monst3r_relative_pose_loss(shared_dir):
  root = os.path.join(shared_dir, "reference", "eval_fixtures")
  with open(os.path.join(root, "expected_outputs.json")) as f:
    ref = json.load(f)["temporal_smoothing"]["sum"]
  c2w = jnp.asarray(np.load(os.path.join(root, "cam_synth_pred_c2w.npy")), jnp.float32)
  f = c2w.shape[0]
  params = {"log_depth": jnp.zeros((f, 2, 2)), "quat": postopt.matrix_to_quat(c2w[:, :3, :3]),
            "tlog": postopt.signed_log1p(c2w[:, :3, 3]), "focal": jnp.zeros((1,))}
  cfg = postopt.PostOptConfig(data_weight=0.0, smooth_weight=1.0)
  value = postopt.objective(params, jnp.zeros((f, 2, 2, 3)), jnp.ones((f, 2, 2)), jnp.ones(2), cfg)
  np.testing.assert_allclose(float(value), ref, rtol=1e-5)


def test_all_nan_frame_is_held_by_its_neighbours_and_nothing_turns_nan():
  xyz, d, c2w = _synthetic(f=5)
  xyz[2] = np.nan
  out = postopt.post_optimize(xyz, cfg=postopt.PostOptConfig(iters=30))
  for x in (out.depth, out.c2w, out.K, out.losses):
    assert np.all(np.isfinite(np.asarray(x)))
  np.testing.assert_allclose(np.asarray(out.c2w)[[0, 1, 3, 4], :3, 3], c2w[[0, 1, 3, 4], :3, 3], atol=5e-3)
  gap = np.linalg.norm(np.asarray(out.c2w)[2, :3, 3] - c2w[2, :3, 3])
  assert gap < 0.1, gap  # no data: placed by the init (nearest frame) and the smoothness term


def test_single_frame_recovers_focal_and_identity_pose():
  xyz, d, _ = _synthetic(f=1)
  out = postopt.post_optimize(xyz, cfg=postopt.PostOptConfig(iters=10))
  np.testing.assert_allclose(float(out.init_focal[0]), 14.0, rtol=1e-4)
  np.testing.assert_allclose(float(out.K[0, 0, 0]), 14.0, rtol=5e-3)  # Adam steps of ~lr / 20 in ln f
  np.testing.assert_allclose(np.asarray(out.init_c2w[0]), np.eye(4), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out.c2w[0]), np.eye(4), atol=1e-2)  # Adam at lr 1e-2 jitters ~0.3 deg
  np.testing.assert_allclose(np.asarray(out.depth), d, rtol=2e-2)


def test_garbage_inputs_raise_clear_errors():
  xyz, _, _ = _synthetic(f=2)
  with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
    postopt.post_optimize(xyz[..., :2])
  with pytest.raises(ValueError, match="valid mask"):
    postopt.post_optimize(xyz, valid=np.ones((2, 5, 5), bool))
  with pytest.raises(ValueError, match="confidence"):
    postopt.post_optimize(xyz, conf=np.ones((3, 12, 16)))
  with pytest.raises(ValueError, match="no frame has"):
    postopt.post_optimize(np.full_like(xyz, np.nan))
  with pytest.raises(ValueError, match="unknown optimizer"):
    postopt.post_optimize(xyz, cfg=postopt.PostOptConfig(optimizer="sgd"))


def test_pointmaps_no_camera_explains_still_give_finite_cameras():
  """Generated pointmaps far from any geometry (here: every point behind the camera, a negative least-squares
  focal) start from a 53-degree field of view instead of turning the cameras NaN."""
  rng = np.random.default_rng(0)
  xyz = rng.uniform(-1.0, 1.0, (3, 8, 12, 3)).astype(np.float32)
  xyz[..., 2] = -np.abs(xyz[..., 2]) - 0.5
  out = postopt.post_optimize(xyz, cfg=postopt.PostOptConfig(iters=5))
  for name in ("depth", "K", "c2w"):
    assert np.all(np.isfinite(np.asarray(getattr(out, name)))), name
  assert float(out.init_focal[0]) > 0


def test_chunked_iterations_equal_one_scan_and_an_interrupt_lands_between_chunks(monkeypatch):
  """post_optimize runs CHUNK iterations per compiled call so Ctrl-C is honoured within seconds; the optimiser state
  (Adam moments, the schedule's count) carries over, so the result is the one long scan's."""
  xyz, _, _ = _synthetic()
  cfg = postopt.PostOptConfig(iters=2 * postopt.CHUNK + 3)
  xyz_c, w, init = postopt._prepare(jnp.asarray(xyz), jnp.ones(xyz.shape[:3], bool), None,
                                    jnp.asarray((8.0, 6.0)), cfg)
  one_scan = postopt.optimize_steps(init, postopt.init_state(init, cfg), xyz_c, w, jnp.asarray((8.0, 6.0)), cfg,
                                    cfg.iters)
  chunked = postopt.optimize(init, xyz_c, w, jnp.asarray((8.0, 6.0)), cfg)
  np.testing.assert_allclose(chunked[1], one_scan[2], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(chunked[0]), jax.tree.leaves(one_scan[0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  calls = []
  real = postopt.optimize_steps

  def interrupted(*args, **kwargs):  # Ctrl-C arriving during the second chunk's compiled call
    calls.append(kwargs["steps"])
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(postopt, "optimize_steps", interrupted)
  with pytest.raises(KeyboardInterrupt):
    postopt.post_optimize(xyz, cfg=cfg)
  assert calls == [postopt.CHUNK, postopt.CHUNK]
