"""Clips of any length through a model that takes 1 + 4k <= max_frames frames.

The rule: a clip of F <= max_frames frames is one window, padded up to the next 1 + 4k with copies of its last frame
(which inherit that frame's observation; their outputs are dropped). A longer clip is cut into windows of max_frames
that overlap by at least `overlap` frames, spread evenly from its first frame to its last. Each window's pointmaps are
in its own first frame's camera, normalised on their own; `join_windows` maps every window into window 0's frame by
the similarity (Umeyama, with scale) that best aligns the points of the frames it shares with the windows before it,
pixel by pixel, and cross-fades the shared frames. One post-optimisation of the joined pointmaps then gives one
camera trajectory for the whole clip.
"""

import math

import numpy as np

from one4d_jax import umc
from one4d_jax.geometry.sim3 import umeyama


def padded_length(num_frames: int) -> int:
  """The smallest 1 + 4k >= num_frames (the frame count the VAE takes)."""
  if num_frames < 1:
    raise ValueError(f"need at least one frame, got {num_frames}")
  return num_frames + (-(num_frames - 1)) % umc.TEMPORAL_STRIDE


def pad_frames(x: np.ndarray, length: int) -> np.ndarray:
  """x [F, ...] with its last entry repeated up to `length` along axis 0."""
  return np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)]) if length > len(x) else x


def frame_windows(num_frames: int, max_frames: int, overlap: int | None = None) -> list[tuple[int, int]]:
  """(first frame, frames) of each window covering num_frames (see the module docstring for the rule); overlap
  defaults to a quarter of the window (20 of 81 frames)."""
  umc.check_frame_count(max_frames)
  overlap = max(1, (max_frames - 1) // 4) if overlap is None else overlap
  if num_frames < 1:
    raise ValueError(f"need at least one frame, got {num_frames}")
  if num_frames <= max_frames:
    return [(0, num_frames)]
  if not 0 < overlap < max_frames:
    raise ValueError(f"overlap must be in [1, {max_frames - 1}] frames to join windows of {max_frames}, got {overlap}")
  count = math.ceil((num_frames - overlap) / (max_frames - overlap))
  starts = np.round(np.linspace(0, num_frames - max_frames, count)).astype(int)
  return [(int(s), max_frames) for s in starts]


def _ramp(length: int, lead: int, trail: int) -> np.ndarray:
  """Per-frame blend weights of a window: rising over the `lead` frames it shares with the window before, falling
  over the `trail` frames it shares with the one after, 1 elsewhere."""
  w = np.ones(length)
  w[:lead] = np.minimum(w[:lead], np.arange(1, lead + 1) / (lead + 1))
  if trail:
    w[length - trail:] = np.minimum(w[length - trail:], np.arange(trail, 0, -1) / (trail + 1))
  return w


def join_windows(pointmaps: list[np.ndarray], valid: list[np.ndarray], windows: list[tuple[int, int]],
                 pixel_stride: int = 4, min_points: int = 64) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
  """Per-window pointmaps [L, H, W, 3] and validity [L, H, W] -> (pointmaps [F, H, W, 3] in window 0's frame,
  validity [F, H, W], the (scale, R, t) applied to each window). Alignment uses every `pixel_stride`-th pixel of the
  shared frames valid in both; fewer than `min_points` such points is an error naming the windows."""
  if not (len(pointmaps) == len(valid) == len(windows)) or not windows:
    raise ValueError(f"need one pointmap and one mask per window: {len(pointmaps)}, {len(valid)}, {len(windows)}")
  total = windows[-1][0] + windows[-1][1]
  h, w = pointmaps[0].shape[1:3]
  acc = np.zeros((total, h, w, 3))
  weight = np.zeros((total, h, w))
  transforms = []
  for k, ((start, length), xyz, ok) in enumerate(zip(windows, pointmaps, valid)):
    if xyz.shape != (length, h, w, 3) or ok.shape != (length, h, w):
      raise ValueError(f"window {k} (frames {start}..{start + length - 1}): pointmaps {xyz.shape} and mask "
                       f"{ok.shape}, expected {(length, h, w, 3)} and {(length, h, w)}")
    xyz = np.asarray(xyz, np.float64)
    ok = np.asarray(ok, bool) & np.all(np.isfinite(xyz), -1)
    lead = max(0, windows[k - 1][0] + windows[k - 1][1] - start) if k else 0
    trail = max(0, start + length - windows[k + 1][0]) if k + 1 < len(windows) else 0
    s, r, t = 1.0, np.eye(3), np.zeros(3)
    if k:
      joined = acc[start:start + lead] / np.maximum(weight[start:start + lead], 1e-12)[..., None]
      both = (ok[:lead] & (weight[start:start + lead] > 0))[:, ::pixel_stride, ::pixel_stride]
      if both.sum() < min_points:
        raise ValueError(f"windows {k - 1} and {k} share {int(both.sum())} valid points in frames {start}.."
                         f"{start + lead - 1} (need {min_points}): too few to join them; raise the overlap")
      s, r, t = umeyama(xyz[:lead, ::pixel_stride, ::pixel_stride][both],
                        joined[:, ::pixel_stride, ::pixel_stride][both], with_scale=True)
      xyz = s * xyz @ r.T + t
    blend = _ramp(length, lead, trail)[:, None, None] * ok
    acc[start:start + length] += np.where(ok[..., None], xyz, 0.0) * blend[..., None]
    weight[start:start + length] += blend
    transforms.append((float(s), r, t))
  joined_valid = weight > 0
  joined = np.where(joined_valid[..., None], acc / np.maximum(weight, 1e-12)[..., None], 0.0)
  return joined.astype(np.float32), joined_valid, transforms
