"""The one clip record every reader yields, and the lazy on-disk clip it is loaded from.

A reader parses a dataset's layout once (file lists, intrinsics, poses: small) into `ClipFiles`; images and depth are
decoded only for the frames a training window asks for (`ClipFiles.load`). Both are plain picklable data, so Grain
worker processes can carry them. Conventions: frames uint8 RGB, depth float32 metres along the optical axis with a
validity mask, K [F, 3, 3] in pixels (OpenCV, pixel centres at integers), c2w [F, 4, 4] camera-to-world with OpenCV
camera axes (x right, y down, z forward), any world frame.
"""

import dataclasses
import os
import struct

import numpy as np

SINTEL_TAG = 202021.25  # first float of Sintel .dpt and .cam files


@dataclasses.dataclass(frozen=True, eq=False)
class ClipRecord:
  """F decoded frames of one clip: frames [F, H, W, 3] uint8, depth [F, H, W] float32 metres (0 where invalid),
  valid [F, H, W] bool, K [F, 3, 3], c2w [F, 4, 4] camera-to-world, caption, source (format name), name."""
  frames: np.ndarray
  depth: np.ndarray
  valid: np.ndarray
  K: np.ndarray
  c2w: np.ndarray
  caption: str
  source: str
  name: str

  def __post_init__(self):
    f, h, w = self.depth.shape if self.depth.ndim == 3 else (None, None, None)
    expected = {"frames": ((f, h, w, 3), np.uint8), "depth": ((f, h, w), np.float32), "valid": ((f, h, w), np.bool_),
                "K": ((f, 3, 3), None), "c2w": ((f, 4, 4), None)}
    for field, (shape, dtype) in expected.items():
      x = getattr(self, field)
      if x.shape != shape or (dtype is not None and x.dtype != dtype):
        raise ValueError(f"clip {self.name!r} ({self.source}): {field} must be {shape} {dtype or 'float'} "
                         f"(frames, depth, valid, K, c2w must agree), found {x.shape} {x.dtype}")
    if not (np.isfinite(self.K).all() and np.isfinite(self.c2w).all()):
      raise ValueError(f"clip {self.name!r} ({self.source}): K or c2w has non-finite entries")


@dataclasses.dataclass(frozen=True)
class DepthSpec:
  """How a depth file decodes to metres: kind 'png' (16-bit), 'npy' or 'dpt' (Sintel); metres = stored * scale;
  stored values in `invalid` (and 0, and non-finite ones) are invalid."""
  kind: str
  scale: float = 1.0
  invalid: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class ClipFiles:
  """A clip on disk: per-frame image and depth paths, cameras in memory. `load(indices)` decodes a window."""
  name: str
  source: str
  frame_paths: tuple[str, ...]
  depth_paths: tuple[str, ...]
  depth_spec: DepthSpec
  K: np.ndarray
  c2w: np.ndarray
  caption: str = ""

  def __post_init__(self):
    n = len(self.frame_paths)
    where = f"clip {self.name!r} ({self.source})"
    if n == 0:
      raise ValueError(f"{where}: no frames found")
    if len(self.depth_paths) != n:
      raise ValueError(f"{where}: {n} frames but {len(self.depth_paths)} depth maps")
    for name, x, shape in (("K", self.K, (n, 3, 3)), ("c2w", self.c2w, (n, 4, 4))):
      if np.shape(x) != shape:
        raise ValueError(f"{where}: {name} must be {shape} (one per frame), found {np.shape(x)}")
      if not np.isfinite(x).all():
        raise ValueError(f"{where}: {name} has non-finite entries")
    bottom = np.asarray(self.c2w)[:, 3]
    if not np.allclose(bottom, [0, 0, 0, 1], atol=1e-6):
      raise ValueError(f"{where}: camera-to-world matrices must end in the row [0, 0, 0, 1]")
    missing = [p for p in (*self.frame_paths, *self.depth_paths) if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"{where}: {len(missing)} listed files are missing, e.g. {missing[0]}")

  @property
  def num_frames(self) -> int:
    return len(self.frame_paths)

  def frame_depth(self, i: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(depth in metres, validity) of frame i, whose image is `shape` (H, W); readers of other depth codecs
    override this."""
    return read_depth(self.depth_paths[i], self.depth_spec)

  def load(self, indices=None) -> ClipRecord:
    """Decode the frames at `indices` (default all) into a ClipRecord."""
    indices = range(self.num_frames) if indices is None else [int(i) for i in indices]
    frames, depths, valids = [], [], []
    for i in indices:
      frame = read_rgb(self.frame_paths[i])
      depth, valid = self.frame_depth(i, frame.shape[:2])
      if depth.shape != frame.shape[:2]:
        raise ValueError(f"clip {self.name!r} ({self.source}) frame {i}: depth {self.depth_paths[i]} is "
                         f"{depth.shape} but the image {self.frame_paths[i]} is {frame.shape[:2]}; they must be "
                         f"registered on the same pixel grid")
      frames.append(frame)
      depths.append(depth)
      valids.append(valid)
    if len({f.shape for f in frames}) > 1:
      raise ValueError(f"clip {self.name!r} ({self.source}): frames differ in size {sorted({f.shape for f in frames})}")
    idx = list(indices)
    return ClipRecord(np.stack(frames), np.stack(depths), np.stack(valids), np.asarray(self.K, np.float64)[idx],
                      np.asarray(self.c2w, np.float64)[idx], self.caption, self.source, self.name)


def read_rgb(path: str) -> np.ndarray:
  """An image file -> uint8 [H, W, 3]."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, SyntaxError) as e:
    raise ValueError(f"cannot decode image {path}: {e}") from e


def read_depth(path: str, spec: DepthSpec) -> tuple[np.ndarray, np.ndarray]:
  """A depth file -> (depth float32 [H, W] metres, 0 where invalid; valid bool [H, W])."""
  if spec.kind == "png":
    from PIL import Image
    try:
      with Image.open(path) as im:
        raw = np.asarray(im)
    except (OSError, SyntaxError) as e:
      raise ValueError(f"cannot decode depth image {path}: {e}") from e
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint8):
      raise ValueError(f"depth PNG {path}: expected a single-channel 16-bit image, found {raw.dtype} {raw.shape}")
  elif spec.kind == "npy":
    try:
      raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read depth array {path}: {e}") from e
    raw = raw.squeeze(-1) if raw.ndim == 3 and raw.shape[-1] == 1 else raw
    if raw.ndim != 2:
      raise ValueError(f"depth array {path}: expected [H, W], found shape {raw.shape}")
  elif spec.kind == "dpt":
    raw = read_sintel_dpt(path)
  else:
    raise ValueError(f"unknown depth kind {spec.kind!r}; expected png, npy or dpt")
  raw = raw.astype(np.float64)
  valid = np.isfinite(raw) & (raw > 0)
  for bad in spec.invalid:
    valid &= raw != bad
  return np.where(valid, raw * spec.scale, 0.0).astype(np.float32), valid


def read_sintel_dpt(path: str) -> np.ndarray:
  """Sintel .dpt: float32 tag 202021.25, int32 width, int32 height, then H*W float32 depths (row-major)."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 12:
    raise ValueError(f"{path}: too short for a Sintel .dpt header ({len(data)} bytes)")
  tag, width, height = struct.unpack("<fii", data[:12])
  if tag != np.float32(SINTEL_TAG):
    raise ValueError(f"{path}: not a Sintel .dpt file (tag {tag}, expected {SINTEL_TAG})")
  if width <= 0 or height <= 0 or len(data) != 12 + 4 * width * height:
    raise ValueError(f"{path}: header says {width}x{height} but the file has {len(data) - 12} bytes of data "
                     f"(expected {4 * max(width * height, 0)})")
  return np.frombuffer(data, "<f4", offset=12).reshape(height, width)


def write_sintel_dpt(path: str, depth: np.ndarray) -> None:
  """Write a Sintel .dpt file (used by tests and by users converting data)."""
  depth = np.asarray(depth, "<f4")
  with open(path, "wb") as f:
    f.write(struct.pack("<fii", SINTEL_TAG, depth.shape[1], depth.shape[0]) + depth.tobytes())


def read_sintel_cam(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Sintel .cam: float32 tag, then K 3x3 and world-to-camera 3x4, float64 row-major -> (K [3, 3], c2w [4, 4])."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) != 4 + 8 * 21:
    raise ValueError(f"{path}: a Sintel .cam file has {4 + 8 * 21} bytes, found {len(data)}")
  if struct.unpack("<f", data[:4])[0] != np.float32(SINTEL_TAG):
    raise ValueError(f"{path}: not a Sintel .cam file (wrong tag)")
  values = np.frombuffer(data, "<f8", offset=4)
  w2c = np.eye(4)
  w2c[:3] = values[9:].reshape(3, 4)
  return values[:9].reshape(3, 3).copy(), np.linalg.inv(w2c)


def write_sintel_cam(path: str, K: np.ndarray, c2w: np.ndarray) -> None:
  """Write a Sintel .cam file from K and a camera-to-world pose."""
  w2c = np.linalg.inv(np.asarray(c2w, np.float64))[:3]
  with open(path, "wb") as f:
    f.write(struct.pack("<f", SINTEL_TAG) + np.asarray(K, "<f8").tobytes() + np.asarray(w2c, "<f8").tobytes())
