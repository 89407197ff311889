"""Clips of any length: the window rule, joining windows' pointmaps against known geometry, and the inverse of the
resize-and-crop that maps predictions back onto the dataset's pixels."""

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from one4d_jax.geometry import pointmaps as pm
from one4d_jax.geometry import windows
from one4d_jax.geometry.rotations import pose_matrix


def test_the_window_rule_pads_short_clips_and_overlaps_long_ones():
  assert [windows.padded_length(n) for n in (1, 2, 5, 50, 81)] == [1, 5, 5, 53, 81]
  assert windows.frame_windows(50, 81) == [(0, 50)]  # padded to 53 by the sampler
  assert windows.frame_windows(110, 81) == [(0, 81), (29, 81)]  # Bonn's 110 frames: 52 shared
  spans = windows.frame_windows(300, 81, overlap=20)
  assert spans[0][0] == 0 and spans[-1][0] + 81 == 300
  assert all(b[0] - a[0] <= 81 - 20 for a, b in itertools.pairwise(spans))  # consecutive windows share >= 20 frames
  assert windows.frame_windows(12, 5) == [(0, 5), (4, 5), (7, 5)]  # default overlap: a quarter of the window, >= 1
  with pytest.raises(ValueError, match="overlap must be in"):
    windows.frame_windows(12, 5, overlap=5)
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    windows.frame_windows(12, 6)
  np.testing.assert_array_equal(windows.pad_frames(np.arange(3), 5), [0, 1, 2, 2, 2])


def _scene(f=12, hw=(32, 48), seed=0):
  """Pointmaps [F, H, W, 3] of a random depth field seen by a moving, turning camera, in frame 0's camera."""
  rng = np.random.default_rng(seed)
  depth = rng.uniform(2.0, 5.0, (f, *hw))
  K = np.array([[40.0, 0, hw[1] / 2], [0, 40.0, hw[0] / 2], [0, 0, 1]])
  turns = Rotation.from_euler("xyz", [[2.0 * i, -3.0 * i, 1.0 * i] for i in range(f)], degrees=True)
  c2w = pose_matrix(turns.as_matrix(), np.array([[0.1 * i, -0.05 * i, 0.2 * i] for i in range(f)]))
  xyz, _ = pm.pointmaps_from_depth(depth, np.broadcast_to(K, (f, 3, 3)), c2w, np.ones((f, *hw), bool))
  return xyz.astype(np.float64), c2w


def _in_window_frame(xyz, c2w, start, length, scale):
  """What a window of the model gives: points in its first frame's camera, divided by its own scale."""
  w2c = np.linalg.inv(np.linalg.inv(c2w[0]) @ c2w[start])  # frame 0's camera -> the window's first camera
  local = xyz[start:start + length] @ w2c[:3, :3].T + w2c[:3, 3]
  return local / scale


def test_joined_windows_recover_the_clip_in_frame_0s_camera():
  xyz, c2w = _scene()
  spans = windows.frame_windows(len(xyz), 5)
  scales = [1.0, 3.7, 0.6]
  parts = [_in_window_frame(xyz, c2w, s, n, k) for (s, n), k in zip(spans, scales)]
  joined, valid, transforms = windows.join_windows(parts, [np.ones(p.shape[:3], bool) for p in parts], spans)
  assert valid.all()
  np.testing.assert_allclose(joined, xyz, atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose([t[0] for t in transforms], scales, rtol=1e-5)  # each window's own scale undone


def test_joining_ignores_invalid_points_and_refuses_windows_that_share_too_few():
  xyz, c2w = _scene()
  spans = windows.frame_windows(len(xyz), 5)
  parts = [_in_window_frame(xyz, c2w, s, n, 1.0) for s, n in spans]
  masks = [np.ones(p.shape[:3], bool) for p in parts]
  parts[1][:, :3] = 1e3  # garbage rows, masked out
  masks[1][:, :3] = False
  joined, valid, _ = windows.join_windows(parts, masks, spans)
  np.testing.assert_allclose(joined[valid], xyz[valid], atol=1e-4)
  only_window_1 = np.zeros_like(valid)
  only_window_1[5:7, :3] = True  # frames 5 and 6 are in window 1 alone (0..4, 4..8, 7..11)
  np.testing.assert_array_equal(valid, ~only_window_1)
  masks[1][0] = False  # with window 1's shared frame fully masked, windows 0 and 1 cannot be joined
  with pytest.raises(ValueError, match="windows 0 and 1 share 0 valid points"):
    windows.join_windows(parts, masks, spans)


def test_uncrop_inverts_the_resize_and_crop_the_model_saw():
  src_hw, out_hw = (48, 100), (32, 48)
  resized = pm.cover_size(src_hw, out_hw)  # (32, 67): width cropped
  top, left = pm.center_crop_offsets(resized, out_hw)
  rows, cols = np.meshgrid(np.arange(src_hw[0]), np.arange(src_hw[1]), indexing="ij")
  depth = (2.0 + 0.01 * rows + 0.02 * cols)[None].astype(np.float32)  # linear: bilinear resampling is exact
  crop, _ = pm.resize_crop_depth(depth, np.ones_like(depth, bool), resized, top, left, out_hw)
  crop = (2.0 + 0.01 * ((np.arange(out_hw[0])[:, None] + top + 0.5) * src_hw[0] / resized[0] - 0.5)
          + 0.02 * ((np.arange(out_hw[1])[None] + left + 0.5) * src_hw[1] / resized[1] - 0.5))[None]  # exact crop
  back, covered = pm.uncrop_depth(crop, src_hw, resized, top, left)
  assert back.shape == (1, *src_hw) and covered.shape == (1, *src_hw)
  inner = covered[0].copy()
  inner[:, [np.flatnonzero(inner[0])[0], np.flatnonzero(inner[0])[-1]]] = False  # edge pixels are clamped
  inner[[0, -1]] = False
  np.testing.assert_allclose(back[0][inner], depth[0][inner], atol=1e-4)
  assert not covered[0][:, :10].any() and not covered[0][:, -10:].any() and covered[0][:, 40:60].all()
  assert (back[~covered] == 0).all()
  K = np.array([[40.0, 0, 49.5], [0, 40.0, 23.5], [0, 0, 1]])
  np.testing.assert_allclose(pm.uncrop_intrinsics(pm.resize_crop_intrinsics(K, src_hw, resized, top, left), src_hw,
                                                  resized, top, left), K, atol=1e-9)


def test_plausible_points_are_finite_inside_the_cube_and_off_the_origin():
  xyz = np.array([[0.2, -0.5, 0.9], [0.0, 0.0, 0.0], [1.2, 0.0, 0.5], [np.nan, 0, 0.5], [0.0, 0.0, 1.04]])
  assert pm.plausible_points(xyz).tolist() == [True, False, False, False, True]

