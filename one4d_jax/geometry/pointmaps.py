"""Pointmaps <-> depth, intrinsics and poses, the per-clip [-1, 1] normalisation, and resize/crop that keep K right.

One4D's XYZ branch generates, for every frame, the 3-D point seen at each pixel in the *first frame's camera*
coordinates (OpenCV camera: x right, y down, z forward), divided by one per-clip scale so the values sit in [-1, 1]
like RGB. Everything here is plain numpy (float64 inside, float32 out): it runs in the input pipeline on hosts and in
evaluation; nothing needs an accelerator.

Conventions (one place for each):
- K is the 3x3 pinhole matrix with pixel centres at integer coordinates (OpenCV): pixel (u, v) covers
  [u - 0.5, u + 0.5). Resizing by s maps u to (u + 0.5) s - 0.5, so cx' = (cx + 0.5) s - 0.5 and fx' = fx s.
- Poses are camera-to-world 4x4 (`c2w`). `relative_poses` re-expresses them in frame 0's camera, so frame 0 is I.
- Normalisation is isotropic and keeps the origin at camera 0: `xyz_n = xyz / scale` with `scale` the largest
  absolute coordinate of any valid point of the clip (or a quantile of it, with clipping). One number undoes it
  (`denormalize`), cameras stay rigid (translations are divided by the same scale) and z stays positive.
"""

import numpy as np


def relative_poses(c2w: np.ndarray) -> np.ndarray:
  """c2w [F, 4, 4] camera-to-world -> camera-to-frame-0-camera [F, 4, 4] (frame 0 becomes the identity)."""
  c2w = np.asarray(c2w, np.float64)
  _check_shape("c2w", c2w, (None, 4, 4))
  return np.linalg.inv(c2w[0]) @ c2w


def _affine_rays(depth: np.ndarray, M: np.ndarray, t: np.ndarray) -> np.ndarray:
  """d * M @ (u, v, 1) + t per pixel, elementwise (3x3 batched matmuls over millions of pixels are slow in numpy).
  depth [F, H, W], M [F, 3, 3], t [F, 3] -> [F, H, W, 3] in depth's float dtype."""
  dtype = np.result_type(depth.dtype, np.float32)
  height, width = depth.shape[1:]
  u = np.arange(width, dtype=dtype)[None, None, :]
  v = np.arange(height, dtype=dtype)[None, :, None]
  M, t = M.astype(dtype), t.astype(dtype)
  out = np.empty(depth.shape + (3,), dtype)
  for c in range(3):
    m = M[:, c, :, None, None]
    out[..., c] = depth * (m[:, 0] * u + m[:, 1] * v + m[:, 2]) + t[:, c, None, None]
  return out


def unproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
  """depth [F, H, W] (z along the optical axis), K [F, 3, 3] -> points in each frame's own camera [F, H, W, 3]."""
  depth = np.asarray(depth)
  K = np.asarray(K, np.float64)
  _check_shape("depth", depth, (None, None, None))
  _check_shape("K", K, (depth.shape[0], 3, 3))
  return _affine_rays(depth, np.linalg.inv(K), np.zeros((depth.shape[0], 3)))


def transform_points(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
  """T [F, 4, 4] applied to points [F, H, W, 3]."""
  T = np.asarray(T, np.float64)
  dtype = np.result_type(xyz.dtype, np.float32)
  R, t = T[:, :3, :3].astype(dtype), T[:, :3, 3].astype(dtype)
  out = np.empty(xyz.shape, dtype)
  for c in range(3):
    out[..., c] = sum(R[:, c, k, None, None] * xyz[..., k] for k in range(3)) + t[:, c, None, None]
  return out


def pointmaps_from_depth(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                         valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """depth [F, H, W] metres, K [F, 3, 3], c2w [F, 4, 4] camera-to-world -> (xyz [F, H, W, 3] float32 in frame 0's
  camera, valid bool [F, H, W]).

  A pixel is valid where its depth is finite and positive (and `valid`, if given, says so); invalid points are 0.
  Computed in depth's precision (float32 depth: float32, about 1e-7 relative; pass float64 for more)."""
  depth = np.asarray(depth)
  K = np.asarray(K, np.float64)
  _check_shape("depth", depth, (None, None, None))
  _check_shape("K", K, (depth.shape[0], 3, 3))
  _check_shape("c2w", np.asarray(c2w), (depth.shape[0], 4, 4))
  ok = np.isfinite(depth) & (depth > 0)
  if valid is not None:
    _check_shape("valid", np.asarray(valid), depth.shape)
    ok &= np.asarray(valid, bool)
  rel = relative_poses(c2w)
  xyz = _affine_rays(np.where(ok, depth, 0), rel[:, :3, :3] @ np.linalg.inv(K), rel[:, :3, 3])
  xyz *= ok[..., None]
  return xyz.astype(np.float32, copy=False), ok


def depth_from_pointmaps(xyz: np.ndarray, c2w_rel: np.ndarray) -> np.ndarray:
  """xyz [F, H, W, 3] in frame 0's camera, c2w_rel [F, 4, 4] camera-to-frame-0 (`relative_poses`) -> depth [F, H, W]
  float32, the z of each point in its own frame's camera (the inverse of `pointmaps_from_depth` on valid pixels)."""
  xyz = np.asarray(xyz)
  c2w_rel = np.asarray(c2w_rel, np.float64)
  _check_shape("xyz", xyz, (None, None, None, 3))
  _check_shape("c2w_rel", c2w_rel, (xyz.shape[0], 4, 4))
  return transform_points(np.linalg.inv(c2w_rel), xyz)[..., 2].astype(np.float32)


def project(xyz_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Points [..., 3] in a camera with K [3, 3] -> (pixel coordinates [..., 2] as (u, v), depth z [...])."""
  xyz_cam = np.asarray(xyz_cam, np.float64)
  z = xyz_cam[..., 2]
  uvw = xyz_cam @ np.asarray(K, np.float64).T
  with np.errstate(divide="ignore", invalid="ignore"):
    return uvw[..., :2] / z[..., None], z


def reprojection_depth_error(xyz: np.ndarray, valid: np.ndarray, K: np.ndarray, c2w_rel: np.ndarray,
                             depth: np.ndarray, depth_valid: np.ndarray, i: int, j: int) -> float:
  """Median relative error |z_ij - depth_j(u, v)| / depth_j(u, v) of frame i's points (in frame 0's camera) projected
  into frame j (nearest pixel), over points that land on a valid pixel of frame j. NaN when none does."""
  pts = np.asarray(xyz[i], np.float64)[np.asarray(valid[i], bool)]
  T_j0 = np.linalg.inv(np.asarray(c2w_rel[j], np.float64))
  cam = pts @ T_j0[:3, :3].T + T_j0[:3, 3]
  uv, z = project(cam, K[j])
  u, v = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
  height, width = depth.shape[1:]
  inside = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
  u, v, z = u[inside], v[inside], z[inside]
  hit = np.asarray(depth_valid[j], bool)[v, u]
  if not hit.any():
    return float("nan")
  ref = np.asarray(depth[j], np.float64)[v[hit], u[hit]]
  return float(np.median(np.abs(z[hit] - ref) / ref))


def normalize_pointmaps(xyz: np.ndarray, valid: np.ndarray, quantile: float = 1.0,
                        min_scale: float = 1e-6) -> tuple[np.ndarray, float]:
  """xyz [F, H, W, 3], valid [F, H, W] -> (xyz / scale clipped to [-1, 1] with invalid points 0, scale).

  scale is the `quantile` (1.0 = maximum, exact and unclipped) of the per-point largest absolute coordinate over the
  clip's valid points; a quantile below 1 trades a few clipped outliers for resolution in the rest. A clip with no
  valid point gets scale 1."""
  xyz = np.asarray(xyz, np.float32)
  valid = np.asarray(valid, bool)
  _check_shape("valid", valid, xyz.shape[:-1])
  if not 0 < quantile <= 1:
    raise ValueError(f"quantile must be in (0, 1], got {quantile}")
  extent = np.abs(xyz).max(axis=-1)
  if not valid.any():
    scale = 1.0
  elif quantile == 1.0:
    scale = max(float(extent.max(where=valid, initial=0.0)), min_scale)
  else:
    scale = max(float(np.quantile(extent[valid], quantile)), min_scale)
  out = xyz * np.float32(1.0 / scale)
  np.clip(out, -1.0, 1.0, out=out)
  out *= valid[..., None]
  return out, scale


def denormalize(xyz_normalised: np.ndarray, scale) -> np.ndarray:
  """Undo `normalize_pointmaps` (metric units again); `scale` may be per-example [B] with xyz [B, ...]."""
  xyz_normalised = np.asarray(xyz_normalised)
  scale = np.asarray(scale, xyz_normalised.dtype)
  return xyz_normalised * scale.reshape(scale.shape + (1,) * (xyz_normalised.ndim - scale.ndim))


def normalize_poses(c2w_rel: np.ndarray, scale: float) -> np.ndarray:
  """Camera-to-frame-0 poses with translations divided by the pointmap scale (the cameras of the normalised clip)."""
  out = np.array(c2w_rel, np.float64)
  out[..., :3, 3] /= scale
  return out


def resize_intrinsics(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
  """K [..., 3, 3] for an image resized from src_hw to dst_hw (pixel centres at integers, see module docstring)."""
  sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
  out = np.array(K, np.float64)
  out[..., 0, 0] *= sx
  out[..., 0, 1] *= sx
  out[..., 1, 1] *= sy
  out[..., 0, 2] = (out[..., 0, 2] + 0.5) * sx - 0.5
  out[..., 1, 2] = (out[..., 1, 2] + 0.5) * sy - 0.5
  return out


def crop_intrinsics(K: np.ndarray, top: int, left: int) -> np.ndarray:
  """K [..., 3, 3] for the crop whose top-left pixel was (left, top)."""
  out = np.array(K, np.float64)
  out[..., 0, 2] -= left
  out[..., 1, 2] -= top
  return out


def cover_size(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
  """The smallest resize of src_hw (aspect kept, up to rounding) that covers dst_hw, ready for a crop to dst_hw."""
  s = max(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
  return max(dst_hw[0], round(src_hw[0] * s)), max(dst_hw[1], round(src_hw[1] * s))


def center_crop_offsets(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
  """(top, left) of the centred dst_hw crop of an image of size src_hw."""
  if src_hw[0] < dst_hw[0] or src_hw[1] < dst_hw[1]:
    raise ValueError(f"cannot crop {dst_hw} out of {src_hw}; resize first (cover_size)")
  return (src_hw[0] - dst_hw[0]) // 2, (src_hw[1] - dst_hw[1]) // 2


def resize_crop_frames(frames: np.ndarray, resized_hw: tuple[int, int], top: int, left: int,
                       out_hw: tuple[int, int]) -> np.ndarray:
  """uint8 frames [F, H, W, 3] -> resized to resized_hw (bilinear, antialiased on downscale) then cropped at
  (top, left) to out_hw."""
  from PIL import Image

  frames = np.asarray(frames)
  _check_shape("frames", frames, (None, None, None, 3))
  if frames.shape[1:3] == tuple(resized_hw):
    resized = frames
  else:
    size = (resized_hw[1], resized_hw[0])
    resized = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])
  return resized[:, top:top + out_hw[0], left:left + out_hw[1]]


def resize_crop_depth(depth: np.ndarray, valid: np.ndarray, resized_hw: tuple[int, int], top: int, left: int,
                      out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """depth and valid [F, H, W] -> the same resize + crop as `resize_crop_frames`, by nearest pixel: depth is never
  averaged across an edge, so every kept value is a measured one and the mask stays exact."""
  depth = np.asarray(depth)
  src_h, src_w = depth.shape[1:]
  rows = np.minimum(((np.arange(top, top + out_hw[0]) + 0.5) * src_h / resized_hw[0]).astype(np.int64), src_h - 1)
  cols = np.minimum(((np.arange(left, left + out_hw[1]) + 0.5) * src_w / resized_hw[1]).astype(np.int64), src_w - 1)
  return depth[:, rows][:, :, cols], np.asarray(valid, bool)[:, rows][:, :, cols]


def resize_crop_intrinsics(K: np.ndarray, src_hw: tuple[int, int], resized_hw: tuple[int, int], top: int,
                           left: int) -> np.ndarray:
  """K for `resize_crop_frames` / `resize_crop_depth` with the same arguments."""
  return crop_intrinsics(resize_intrinsics(K, src_hw, resized_hw), top, left)


def resize_nearest(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """x [..., h, w] -> [..., *hw], each output pixel taking the input pixel its centre falls in (masks, labels)."""
  x = np.asarray(x)
  rows = np.minimum(((np.arange(hw[0]) + 0.5) * x.shape[-2] / hw[0]).astype(int), x.shape[-2] - 1)
  cols = np.minimum(((np.arange(hw[1]) + 0.5) * x.shape[-1] / hw[1]).astype(int), x.shape[-1] - 1)
  return x[..., rows, :][..., cols]


def uncrop_depth(depth: np.ndarray, src_hw: tuple[int, int], resized_hw: tuple[int, int], top: int,
                 left: int) -> tuple[np.ndarray, np.ndarray]:
  """The inverse of `resize_crop_depth`: depth [F, h, w] predicted on the crop -> (depth [F, *src_hw] bilinear at
  each source pixel's centre, covered [F, *src_hw]); pixels outside the crop have no prediction (0, not covered)."""
  from scipy.ndimage import map_coordinates
  depth = np.asarray(depth, np.float32)
  f, h, w = depth.shape
  rows = (np.arange(src_hw[0]) + 0.5) * resized_hw[0] / src_hw[0] - 0.5 - top  # in crop pixels
  cols = (np.arange(src_hw[1]) + 0.5) * resized_hw[1] / src_hw[1] - 0.5 - left
  inside = ((rows >= -0.5) & (rows <= h - 0.5))[:, None] & ((cols >= -0.5) & (cols <= w - 0.5))[None, :]
  grid = np.stack(np.meshgrid(np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1), indexing="ij"))
  out = np.stack([map_coordinates(d, grid, order=1, mode="nearest") for d in depth])
  return np.where(inside, out, 0.0).astype(np.float32), np.broadcast_to(inside, (f, *src_hw)).copy()


def uncrop_intrinsics(K: np.ndarray, src_hw: tuple[int, int], resized_hw: tuple[int, int], top: int,
                      left: int) -> np.ndarray:
  """The inverse of `resize_crop_intrinsics`: K of the crop -> K of the source image."""
  return resize_intrinsics(crop_intrinsics(K, -top, -left), resized_hw, src_hw)


def plausible_points(xyz: np.ndarray, margin: float = 0.05, min_norm: float = 1e-2) -> np.ndarray:
  """bool [...]: the points of normalised pointmaps [..., 3] a model trained on `normalize_pointmaps` output can have
  meant: finite, inside the [-1, 1] cube (up to `margin`), and not at the origin, where training put the pixels
  without depth (a valid point that close to frame 0's camera is 1% of the clip's extent away)."""
  xyz = np.asarray(xyz)
  extent = np.abs(xyz).max(axis=-1)
  return np.all(np.isfinite(xyz), -1) & (extent <= 1.0 + margin) & (extent >= min_norm)


def _check_shape(name: str, x: np.ndarray, expected: tuple) -> None:
  if x.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, x.shape)):
    shown = tuple("*" if e is None else e for e in expected)
    raise ValueError(f"{name}: expected shape {shown}, found {x.shape}")
