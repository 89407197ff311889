"""Geometry: pointmaps from depth and cameras agree across frames of a real clip; resize/crop keep K consistent;
normalisation and its inverse; rotation helpers."""

import os

import numpy as np
import pytest

from one4d_jax import geometry as g
from one4d_jax.data import open_clip

SEVENSCENES_FRAMES = [0, 1, 10, 59]  # frames 100, 101, 110, 159 of the clip


@pytest.fixture
def kitchen(shared_dir):
  clip = open_clip("sevenscenes", os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f"))
  return clip.load(SEVENSCENES_FRAMES)


def _pair_errors(xyz, valid, K, c2w, depth, depth_valid):
  rel = g.relative_poses(c2w)
  return {(i, j): g.reprojection_depth_error(xyz, valid, K, rel, depth, depth_valid, i, j)
          for i in range(len(xyz)) for j in range(len(xyz)) if i != j}


def test_sevenscenes_pointmaps_reproject_into_every_other_frame(kitchen):
  xyz, valid = g.pointmaps_from_depth(kitchen.depth, kitchen.K, kitchen.c2w, kitchen.valid)
  errors = _pair_errors(xyz, valid, kitchen.K, kitchen.c2w, kitchen.depth, kitchen.valid)
  print({k: round(v, 4) for k, v in errors.items()})
  assert max(errors.values()) < 0.02
  # Without the camera motion the same check fails: the test sees the poses.
  still = np.broadcast_to(np.eye(4), kitchen.c2w.shape)
  xyz_still, _ = g.pointmaps_from_depth(kitchen.depth, kitchen.K, still, kitchen.valid)
  assert g.reprojection_depth_error(xyz_still, valid, kitchen.K, still, kitchen.depth, kitchen.valid, 0, 3) > 0.1


def test_frame0_pointmap_is_its_own_camera_and_depth_roundtrips(kitchen):
  xyz, valid = g.pointmaps_from_depth(kitchen.depth, kitchen.K, kitchen.c2w, kitchen.valid)
  assert np.array_equal(valid, kitchen.valid)
  np.testing.assert_allclose(xyz[0][..., 2][valid[0]], kitchen.depth[0][valid[0]], rtol=1e-6)
  depth = g.depth_from_pointmaps(xyz, g.relative_poses(kitchen.c2w))
  np.testing.assert_allclose(depth[valid], kitchen.depth[valid], rtol=1e-5, atol=1e-5)
  assert (xyz[~valid] == 0).all()


def test_resize_and_crop_keep_reprojection_consistent(kitchen):
  src_hw, out_hw = kitchen.depth.shape[1:], (120, 208)  # 4:3 -> about 16:9, as 480x640 -> 352x624
  resized_hw = g.cover_size(src_hw, out_hw)
  for top, left in [g.center_crop_offsets(resized_hw, out_hw), (0, 0), (resized_hw[0] - out_hw[0], 0)]:
    depth, valid = g.resize_crop_depth(kitchen.depth, kitchen.valid, resized_hw, top, left, out_hw)
    K = g.resize_crop_intrinsics(kitchen.K, src_hw, resized_hw, top, left)
    frames = g.resize_crop_frames(kitchen.frames, resized_hw, top, left, out_hw)
    assert frames.shape == (4, *out_hw, 3) and depth.shape == (4, *out_hw)
    xyz, valid = g.pointmaps_from_depth(depth, K, kitchen.c2w, valid)
    errors = _pair_errors(xyz, valid, K, kitchen.c2w, depth, valid)
    assert max(errors.values()) < 0.02, (top, left, errors)


def test_resized_intrinsics_project_to_the_resized_pixel():
  K = np.array([[500.0, 0, 319.5], [0, 480, 241.0], [0, 0, 1]])
  points = np.random.default_rng(0).uniform([-1, -1, 1], [1, 1, 4], (50, 3))
  uv, _ = g.project(points, K)
  (sy, sx), (top, left) = (0.55, 0.7), (7, 11)
  K2 = g.crop_intrinsics(g.resize_intrinsics(K, (480, 640), (480 * sy, 640 * sx)), top, left)
  uv2, _ = g.project(points, K2)
  expected = (uv + 0.5) * [sx, sy] - 0.5 - [left, top]
  np.testing.assert_allclose(uv2, expected, atol=1e-9)


def test_nearest_depth_resize_keeps_measured_values():
  depth = np.random.default_rng(1).uniform(1, 2, (2, 48, 64)).astype(np.float32)
  valid = depth > 1.2
  out, out_valid = g.resize_crop_depth(depth, valid, (96, 128), 3, 5, (40, 60))
  assert set(np.unique(out)) <= set(np.unique(depth)) and out.shape == (2, 40, 60)
  up, up_valid = g.resize_crop_depth(depth, valid, (96, 128), 0, 0, (96, 128))
  assert np.array_equal(up[:, ::2, ::2], depth) and np.array_equal(up_valid[:, 1::2, 1::2], valid)


def test_normalisation_is_within_unit_range_and_invertible(kitchen):
  xyz, valid = g.pointmaps_from_depth(kitchen.depth, kitchen.K, kitchen.c2w, kitchen.valid)
  xyz_n, scale = g.normalize_pointmaps(xyz, valid)
  assert np.abs(xyz_n).max() == pytest.approx(1.0) and 2.0 < scale < 4.0  # max-abs coordinate, metres
  np.testing.assert_allclose(g.denormalize(xyz_n, scale)[valid], xyz[valid], atol=1e-5)
  clipped, s98 = g.normalize_pointmaps(xyz, valid, quantile=0.98)
  assert s98 < scale and np.abs(clipped).max() <= 1.0
  batch = g.denormalize(np.stack([xyz_n, xyz_n]), np.array([scale, 2 * scale]))
  np.testing.assert_allclose(batch[1], 2 * batch[0], rtol=1e-6)
  rel_n = g.normalize_poses(g.relative_poses(kitchen.c2w), scale)  # the same clip in normalised units stays rigid
  err = g.reprojection_depth_error(xyz_n, valid, kitchen.K, rel_n, kitchen.depth / scale, valid, 0, 3)
  assert err < 0.02
  empty, one = g.normalize_pointmaps(xyz, np.zeros_like(valid))
  assert one == 1.0 and not empty.any()


def test_shape_errors_name_the_argument():
  with pytest.raises(ValueError, match=r"c2w: expected shape \(2, 4, 4\), found \(3, 4, 4\)"):
    g.pointmaps_from_depth(np.ones((2, 4, 4)), np.tile(np.eye(3), (2, 1, 1)), np.tile(np.eye(4), (3, 1, 1)))


def test_quaternion_roundtrip_and_orthonormalize():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(20, 4))
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  q *= np.sign(q[:, 3:])
  R = g.quat_to_matrix(q)
  np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
  np.testing.assert_allclose(g.matrix_to_quat(R), q, atol=1e-10)
  np.testing.assert_allclose(g.quat_to_matrix([0, 0, np.sin(0.25), np.cos(0.25)]),
                             [[np.cos(0.5), -np.sin(0.5), 0], [np.sin(0.5), np.cos(0.5), 0], [0, 0, 1]], atol=1e-12)
  noisy = R * 1.0003 + 1e-4
  fixed = g.orthonormalize(noisy)
  np.testing.assert_allclose(np.linalg.det(fixed), 1.0, atol=1e-12)
  assert g.rotation_angle_deg(np.swapaxes(fixed, -1, -2) @ R).max() < 0.05


def test_ned_camera_axes_become_opencv_axes():
  """A NED camera at the origin looks along its x; the OpenCV camera built from it looks along its z = world x."""
  c2w = g.ned_to_opencv_c2w(np.eye(4))
  np.testing.assert_allclose(c2w[:3, 2], [1, 0, 0])  # forward
  np.testing.assert_allclose(c2w[:3, 0], [0, 1, 0])  # right
  np.testing.assert_allclose(c2w[:3, 1], [0, 0, 1])  # down
