"""A person's own pictures and footage in, videos a person can play out.

Image files and folders of them through Pillow; video files (anything the bundled ffmpeg decodes: mp4, mov, webm,
...) through imageio-ffmpeg, whose wheel ships an ffmpeg binary, so `pip install -r requirements.txt` is all it
takes. Frames are uint8 RGB arrays [F, H, W, 3] everywhere. Every reader names the file it could not read.
"""

import contextlib
import os
import re
import warnings

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@contextlib.contextmanager
def _ffmpeg():
  """imageio-ffmpeg starts ffmpeg as a subprocess; JAX warns on every fork of its multithreaded process, but a fork
  that at once execs another program cannot deadlock, so that one warning is silenced here."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    yield


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file (any mode Pillow opens, converted to RGB)."""
  from PIL import Image, UnidentifiedImageError

  if not os.path.isfile(path):
    raise FileNotFoundError(f"image {path} does not exist")
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"{path} is not a readable image: {e}") from None


def _natural_key(name: str) -> list:
  """frame_2.png before frame_10.png: digit runs compare as numbers."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def image_folder(path: str) -> list[str]:
  """The image files directly in a folder, in natural order (how a person numbers frames, padded or not)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"folder {path} does not exist")
  names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")),
                 key=_natural_key)
  if not names:
    raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) directly inside it")
  return [os.path.join(path, n) for n in names]


def read_video(path: str, indices) -> np.ndarray:
  """uint8 [len(indices), H, W, 3]: the frames of a video file at increasing `indices` (0 = its first frame);
  decoding stops after the last one wanted. Indices past the end are simply not returned, so the caller learns the
  video's length only as far as it needs it (no second pass over a long file to count frames)."""
  import imageio_ffmpeg

  if not os.path.isfile(path):
    raise FileNotFoundError(f"video {path} does not exist")
  wanted = list(indices)
  if any(b <= a for a, b in zip(wanted, wanted[1:])) or (wanted and wanted[0] < 0):
    raise ValueError(f"video frame indices must be increasing and >= 0, got {wanted[:8]}")
  frames = []
  reader = imageio_ffmpeg.read_frames(path)
  try:
    with _ffmpeg():
      width, height = next(reader)["size"]
    for i, data in enumerate(reader):
      if len(frames) == len(wanted):
        break
      if i == wanted[len(frames)]:
        frames.append(np.frombuffer(data, np.uint8).reshape(height, width, 3).copy())
  except (OSError, RuntimeError, StopIteration) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"{path} is not a readable video: {first}") from None
  finally:
    reader.close()
  return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)


def write_mp4(path: str, frames: np.ndarray, fps: float = 16.0) -> None:
  """uint8 frames [F, H, W, 3] -> an H.264 MP4 (yuv420p, what every browser and player shows) at `fps` (16: Wan's
  frame rate). Sizes must be even (4:2:0 chroma); frames are never rescaled behind the caller's back."""
  import imageio_ffmpeg

  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"write_mp4 needs uint8 frames [F>0, H, W, 3], got {frames.dtype} {frames.shape}")
  height, width = frames.shape[1:3]
  if height % 2 or width % 2:
    raise ValueError(f"H.264 needs an even frame size, got {height}x{width}")
  writer = imageio_ffmpeg.write_frames(path, (width, height), fps=fps, quality=8, macro_block_size=1,
                                       ffmpeg_log_level="error")
  with _ffmpeg():
    writer.send(None)  # start ffmpeg
  try:
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
  finally:
    writer.close()
