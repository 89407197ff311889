"""What a person gives One4D, as the frames and observation mask the sampler takes (Unified Masked Conditioning).

An image (image-to-4D: frame 0 observed), some images at chosen frame indices (sparse: those observed), a video file
or a folder of images (video-to-4D reconstruction: every frame observed, `start` and `stride` picking them; no depth
or cameras needed), or nothing (text-to-4D). Each builder reads and checks its whole input, so a missing or unreadable
file is an error before any model loads, and says in `notes` what it used: each frame's index in its source, and how
the frames were fitted to the model's size (cover-resize and centre crop, as training saw them).
"""

import os
from typing import NamedTuple, Sequence

import numpy as np

from one4d_jax import media
from one4d_jax.geometry import pointmaps as pm
from one4d_jax.geometry import windows


class Observations(NamedTuple):
  frames: np.ndarray  # uint8 [F, H, W, 3] at the model's size; zeros where not observed
  observed: np.ndarray  # bool [F]
  source: np.ndarray  # int64 [F]: index in the source (video frame, folder image, --frames entry); -1: generated
  notes: tuple[str, ...]  # what was read and how it was fitted, for a person


def fit(images: Sequence[np.ndarray], hw: tuple[int, int]) -> tuple[np.ndarray, str]:
  """uint8 images [H_i, W_i, 3] of any sizes -> (frames [F, *hw, 3], a note per source size): cover-resize then
  centre crop (`pointmaps.cover_size`, as training and launch.predict fit frames)."""
  notes, out = [], np.zeros((len(images), *hw, 3), np.uint8)
  for size in sorted({im.shape[:2] for im in images}):
    pick = [i for i, im in enumerate(images) if im.shape[:2] == size]
    resized = pm.cover_size(size, hw)
    top, left = pm.center_crop_offsets(resized, hw)
    out[pick] = pm.resize_crop_frames(np.stack([images[i] for i in pick]), resized, top, left, hw)
    which = "" if len(pick) == len(images) else f" ({len(pick)} of {len(images)} images)"
    if tuple(size) == tuple(hw):
      notes.append(f"size: {size[0]}x{size[1]} (HxW) is the model's size, used as is{which}")
    else:
      notes.append(f"size: {size[0]}x{size[1]} (HxW) cover-resized to {resized[0]}x{resized[1]} and centre-cropped "
                   f"to the model's {hw[0]}x{hw[1]} (rows {top}..{top + hw[0] - 1}, columns "
                   f"{left}..{left + hw[1] - 1}), as training saw frames{which}")
  return out, "; ".join(notes)


def _place(images: Sequence[np.ndarray], at: Sequence[int], num_frames: int, hw: tuple[int, int],
           source: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
  frames, note = fit(images, hw)
  out = np.zeros((num_frames, *hw, 3), np.uint8)
  observed = np.zeros(num_frames, bool)
  src = np.full(num_frames, -1, np.int64)
  out[list(at)], observed[list(at)], src[list(at)] = frames, True, source
  return out, observed, src, note


def _check_count(num_frames: int) -> None:
  if num_frames < 1:
    raise ValueError(f"--num_frames must be >= 1, got {num_frames}")


def from_image(path: str, num_frames: int, hw: tuple[int, int]) -> Observations:
  """Image-to-4D: the image is frame 0 of `num_frames`, the rest generated."""
  _check_count(num_frames)
  frames, observed, source, note = _place([media.read_image(path)], [0], num_frames, hw, [0])
  rest = f"; frames 1..{num_frames - 1} generated" if num_frames > 1 else ""
  return Observations(frames, observed, source, (f"input: image {path} as frame 0 of {num_frames}{rest}", note))


def from_frames(paths: Sequence[str], indices: Sequence[int], num_frames: int, hw: tuple[int, int]) -> Observations:
  """Sparse frames: image `paths[i]` observed at frame `indices[i]` (increasing, within `num_frames`)."""
  _check_count(num_frames)
  if not paths:
    raise ValueError("--frames needs at least one image file")
  if len(paths) != len(indices):
    raise ValueError(f"--frames gives {len(paths)} images but --indices {len(indices)} frame indices; give one index "
                     f"per image")
  if any(b <= a for a, b in zip(indices, indices[1:])):
    raise ValueError(f"--indices must be strictly increasing, got {list(indices)}")
  if indices[0] < 0 or indices[-1] >= num_frames:
    raise ValueError(f"--indices {list(indices)} must lie in 0..{num_frames - 1} (--num_frames is {num_frames})")
  images = [media.read_image(p) for p in paths]
  frames, observed, source, note = _place(images, indices, num_frames, hw, range(len(paths)))
  placed = ", ".join(f"{p} -> frame {i}" for p, i in zip(paths, indices))
  return Observations(frames, observed, source, (
      f"input: {len(paths)} observed frames of {num_frames}: {placed}; the other {num_frames - len(paths)} "
      f"generated", note))


def _span(indices: np.ndarray) -> str:
  """frames 0..80, or frames 0, 2, ..., 160 (every 2): the frames taken from a source, compactly."""
  step = indices[1] - indices[0] if len(indices) > 1 else 1
  if len(indices) <= 3:
    return "frame" + "s" * (len(indices) > 1) + " " + ", ".join(str(i) for i in indices)
  if step == 1:
    return f"frames {indices[0]}..{indices[-1]}"
  return f"frames {indices[0]}, {indices[1]}, ..., {indices[-1]} (every {step})"


def from_video(path: str, hw: tuple[int, int], num_frames: int = 0, start: int = 0, stride: int = 1,
               default_frames: int = 81) -> Observations:
  """Video-to-4D: frames start, start + stride, ... of a video file or of a folder of images (natural order), all
  observed: `num_frames` of them (it is an error if the source has fewer), or with 0 as many as it has up to
  `default_frames`."""
  if start < 0 or stride < 1:
    raise ValueError(f"--start must be >= 0 and --stride >= 1, got {start} and {stride}")
  if num_frames:
    _check_count(num_frames)
  want = np.arange(start, start + stride * (num_frames or default_frames), stride)
  if os.path.isdir(path):
    files = media.image_folder(path)
    total = f"{len(files)} images"
    want = want[want < len(files)]
    images = [media.read_image(files[i]) for i in want]
  elif os.path.exists(path):
    images, total = list(media.read_video(path, want)), "video"
    want = want[:len(images)]
  else:
    raise FileNotFoundError(f"--video {path} does not exist (a video file or a folder of images)")
  if not len(want):
    raise ValueError(f"--start={start} is past the end of {path} ({total})")
  if num_frames and len(want) < num_frames:
    raise ValueError(f"{path} ({total}) has only {len(want)} frames from --start={start} every --stride={stride}; "
                     f"--num_frames asks for {num_frames}")
  frames, observed, source, note = _place(images, range(len(want)), len(want), hw, want)
  return Observations(frames, observed, source, (
      f"input: {path}: {_span(want)} of its {total}, {len(want)} frames, all observed", note))


def from_text(num_frames: int, hw: tuple[int, int]) -> Observations:
  """Text-to-4D: nothing observed."""
  _check_count(num_frames)
  return Observations(np.zeros((num_frames, *hw, 3), np.uint8), np.zeros(num_frames, bool),
                      np.full(num_frames, -1, np.int64), (f"input: none (text-to-4D), {num_frames} frames generated",))


def demo_image(hw: tuple[int, int]) -> np.ndarray:
  """A synthesised scene, uint8 [H, W, 3]: a checkered floor receding to a horizon under a sky gradient (a pinhole
  camera 1.5 units above a ground plane, focal = width), so the quick start needs no file."""
  h, w = hw
  v, u = np.mgrid[0:h, 0:w].astype(np.float32)
  ray_y = (v - 0.4 * h) / w  # the horizon 40% down the frame
  below = ray_y > 1e-3
  depth = np.where(below, 1.5 / np.maximum(ray_y, 1e-3), 0.0)  # where the ray meets the floor
  x, z = (u - w / 2) / w * depth, depth
  checker = (np.floor(x) + np.floor(z)) % 2
  fog = 1.0 - np.exp(-z / 30)[..., None]  # the floor fades into the horizon's haze
  floor = np.where(checker[..., None] > 0, [200, 170, 120], [90, 60, 40]) * (1 - fog) + [160, 180, 210] * fog
  sky = np.stack([np.full_like(v, 110), 150 + 60 * v / h, np.full_like(v, 235)], -1)
  return np.clip(np.where(below[..., None], floor, sky), 0, 255).astype(np.uint8)


def from_demo(num_frames: int, hw: tuple[int, int]) -> Observations:
  """The quick start's input: `demo_image` as frame 0 of an image-to-4D clip."""
  _check_count(num_frames)
  frames, observed, source, _ = _place([demo_image(hw)], [0], num_frames, hw, [0])
  return Observations(frames, observed, source, (
      f"input: a synthesised image (a checkered floor under a sky) as frame 0 of {num_frames}; the model's weights "
      f"are random, so its outputs are noise: this shows every stage and output of the pipeline, not a trained model",))


def length_note(num_frames: int, max_frames: int, overlap: int | None = None) -> str:
  """How `one4d_jax.pipeline.sample_clip` handles a frame count (`geometry.windows`), for a person."""
  spans = windows.frame_windows(num_frames, max_frames, overlap)
  if len(spans) > 1:
    return (f"frames: {num_frames} is more than the model's window of {max_frames}: sampled in {len(spans)} "
            f"overlapping windows joined into frame 0's camera")
  padded = windows.padded_length(num_frames)
  if padded == num_frames:
    return f"frames: {num_frames} = 1 + 4k, one window"
  return (f"frames: {num_frames} is not 1 + 4k: padded to {padded} with {padded - num_frames} copies of the last "
          f"frame, which are sampled and then dropped")
