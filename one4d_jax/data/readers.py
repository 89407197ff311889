"""Dataset readers, one per layout, all returning `ClipFiles`, registered under the format names command lines accept.

`open_clip(format, path, **options)` is the entry point; `READERS` lists the formats. Every reader checks what it
parses (files present, matrices parsable and shaped right, counts agreeing) and raises an error naming the file and
the problem rather than yielding a clip that would train on garbage.
"""

import csv
import dataclasses
import glob
import json
import os
import re
import struct
import zipfile
import zlib
from typing import Callable

import numpy as np

from one4d_jax.data.clips import (
  ClipFiles,
  DepthSpec,
  read_sintel_cam,
)
from one4d_jax.files import atomic_directory
from one4d_jax.geometry import pointmaps as pm
from one4d_jax.geometry.rotations import (
  ned_to_opencv_c2w,
  orthonormalize,
  pose_matrix,
  quat_to_matrix,
)

# Intrinsics of the evaluation sensors (not stored with the data): TUM fr3 (TUM-dynamics) and Bonn RGB-D Dynamic.
TUM_FR3_K = ((535.4, 0.0, 320.1), (0.0, 539.2, 247.6), (0.0, 0.0, 1.0))
BONN_K = ((542.822841, 0.0, 315.593520), (0.0, 542.576870, 237.756098), (0.0, 0.0, 1.0))
TARTANAIR_K = ((320.0, 0.0, 320.0), (0.0, 320.0, 240.0), (0.0, 0.0, 1.0))
TUM_DEPTH_SCALE = 1 / 5000  # TUM and Bonn 16-bit depth PNGs store 5000 units per metre
# TUM RGB-D's three Kinects (TUM "File Formats" page; ORB_SLAM2 Examples/RGB-D/TUM1.yaml, TUM2.yaml to more digits)
TUM_CAMERAS = {"freiburg1": ((517.3, 0.0, 318.6), (0.0, 516.5, 255.3), (0.0, 0.0, 1.0)),
               "freiburg2": ((520.9, 0.0, 325.1), (0.0, 521.0, 249.7), (0.0, 0.0, 1.0)), "freiburg3": TUM_FR3_K}
TUM_LISTS = ("rgb.txt", "depth.txt", "groundtruth.txt")


def _require(path: str, what: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: expected {path}")
  return path


def _load_matrix(path: str, shape: tuple[int, int]) -> np.ndarray:
  """A whitespace-separated text matrix of the given shape (extra trailing rows like '0 0 0 1' are allowed)."""
  try:
    values = np.array(open(_require(path, "matrix file")).read().split(), np.float64)
  except ValueError as e:
    raise ValueError(f"{path}: cannot parse a {shape[0]}x{shape[1]} matrix: {e}") from e
  n = shape[0] * shape[1]
  if values.size < n or not np.isfinite(values[:n]).all():
    raise ValueError(f"{path}: expected a {shape[0]}x{shape[1]} matrix ({n} finite numbers), found {values.size}")
  return values[:n].reshape(shape)


def _c2w_rigid(c2w: np.ndarray, where: str) -> np.ndarray:
  """Snap the rotation block to SO(3) (sensor-tracking drift); reject blocks that are not near a rotation."""
  R = c2w[:3, :3]
  if abs(np.linalg.det(R) - 1) > 0.05 or not np.allclose(R @ R.T, np.eye(3), atol=0.05):
    raise ValueError(f"{where}: the rotation block is not a rotation (det {np.linalg.det(R):.3f}); "
                     f"expected a camera-to-world rigid transform")
  return pose_matrix(orthonormalize(R), c2w[:3, 3])


def _numbered(pattern: str, regex: str) -> list[tuple[int, str]]:
  """Files matching a glob, sorted by the integer the regex's group captures."""
  out = []
  for p in glob.glob(pattern):
    m = re.search(regex, os.path.basename(p))
    if m:
      out.append((int(m.group(1)), p))
  return sorted(out)


def read_clipfolder(path: str) -> ClipFiles:
  """Our clip folder (README): frames/NNNNNN.png|jpg, depth/NNNNNN.npy|png, cameras.json, optional caption.txt."""
  cams_path = _require(os.path.join(path, "cameras.json"), "cameras.json")
  try:
    cams = json.load(open(cams_path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{cams_path}: not valid JSON: {e}") from e
  frames = _numbered(os.path.join(path, "frames", "*"), r"^(\d+)\.(png|jpg|jpeg)$")
  depths = _numbered(os.path.join(path, "depth", "*"), r"^(\d+)\.(npy|png)$")
  if not frames:
    raise FileNotFoundError(f"{path}: no frames/NNNNNN.png|jpg images found")
  if [i for i, _ in frames] != [i for i, _ in depths]:
    raise ValueError(f"{path}: frames/ and depth/ must hold the same frame numbers; frames "
                     f"{[i for i, _ in frames][:5]}..., depth {[i for i, _ in depths][:5]}...")
  kinds = {os.path.splitext(p)[1] for _, p in depths}
  if len(kinds) != 1:
    raise ValueError(f"{path}/depth: mix of {sorted(kinds)} files; use one kind")
  if "depth_scale" not in cams:
    raise ValueError(f"{cams_path}: missing 'depth_scale' (metres per stored depth unit: 1.0 for metres, 0.001 for "
                     f"millimetres)")
  per_frame = cams.get("frames")
  if not isinstance(per_frame, list) or len(per_frame) != len(frames):
    raise ValueError(f"{cams_path}: 'frames' must be a list with one entry per image ({len(frames)}), found "
                     f"{len(per_frame) if isinstance(per_frame, list) else type(per_frame).__name__}")
  Ks, c2ws = [], []
  for n, entry in enumerate(per_frame):
    where = f"{cams_path} frames[{n}]"
    try:
      K = np.asarray(entry.get("K", cams.get("K")), np.float64)
      c2w = np.asarray(entry["c2w"], np.float64)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise ValueError(f"{where}: needs 'K' (3x3, or a top-level 'K') and 'c2w' (4x4 numbers): {e!r}") from e
    if K.shape != (3, 3) or c2w.shape != (4, 4):
      raise ValueError(f"{where}: expected K 3x3 and c2w 4x4, found K {K.shape} and c2w {c2w.shape}")
    Ks.append(K)
    c2ws.append(_c2w_rigid(c2w, where))
  caption_path = os.path.join(path, "caption.txt")
  caption = open(caption_path).read().strip() if os.path.exists(caption_path) else ""
  spec = DepthSpec(kinds.pop()[1:], float(cams["depth_scale"]), tuple(cams.get("depth_invalid", ())))
  return ClipFiles(os.path.basename(os.path.normpath(path)), "clipfolder", tuple(p for _, p in frames),
                   tuple(p for _, p in depths), spec, np.stack(Ks), np.stack(c2ws), caption)


# Where 7-Scenes-style folders keep the intrinsics, tried in this order after a per-frame frame-N.K.txt (README
# "Data" table: the source of each). A seq-NN folder of a 7-Scenes scene (TrainSplit.txt / TestSplit.txt beside it)
# has none: the 7-Scenes page gives focal 585 and principal point (320, 240), the depth camera's (its RGB is not
# registered to the depth; nianticlabs/ace datasets/setup_7scenes.py maps depth onto a 525-focal RGB camera). Like
# tsdf-fusion and 3DMatch, the frames are read as registered with that K.
SEVENSCENES_K_FILES = ("camera-intrinsics.txt", "intrinsics.K.txt", os.path.join("..", "camera-intrinsics.txt"))
SEVENSCENES_K = ((585.0, 0.0, 320.0), (0.0, 585.0, 240.0), (0.0, 0.0, 1.0))
SEVENSCENES_SPLITS = ("TrainSplit.txt", "TestSplit.txt")
SEVENSCENES_SEQUENCE = r"^seq-\d+$"


def _sevenscenes_shared_K(path: str, intrinsics) -> np.ndarray | None:
  """The folder-wide K of a 7-Scenes-style folder (`intrinsics`: a file or a 3x3 matrix overriding the search), or
  None when no candidate matches."""
  if isinstance(intrinsics, str):
    return _load_matrix(intrinsics, (3, 3))
  if intrinsics is not None:
    K = np.asarray(intrinsics, np.float64)
    if K.shape != (3, 3):
      raise ValueError(f"intrinsics: expected a 3x3 matrix or a file, found shape {K.shape}")
    return K
  for name in SEVENSCENES_K_FILES:
    candidate = os.path.normpath(os.path.join(path, name))
    if os.path.exists(candidate):
      return _load_matrix(candidate, (3, 3))
  folder = os.path.normpath(path)
  if re.match(SEVENSCENES_SEQUENCE, os.path.basename(folder)) and any(
      os.path.exists(os.path.join(os.path.dirname(folder), s)) for s in SEVENSCENES_SPLITS):
    return np.asarray(SEVENSCENES_K)
  return None


def read_sevenscenes(path: str, intrinsics=None) -> ClipFiles:
  """7-Scenes / 3DMatch / tsdf-fusion folder: frame-N.color.jpg|png, frame-N.depth.png (mm; 0 and 65535 invalid),
  frame-N.pose.txt (camera-to-world); K per frame from frame-N.K.txt, else the first of SEVENSCENES_K_FILES present
  (3DMatch and tsdf-fusion keep camera-intrinsics.txt beside or above the frames), else 7-Scenes' K for a seq-NN
  folder of a 7-Scenes scene. Frame numbers may skip. A seq-NN clip is named <scene>_seq-NN."""
  colors = _numbered(os.path.join(path, "frame-*.color.*"), r"^frame-(\d+)\.color\.(jpg|png)$")
  if not colors:
    raise FileNotFoundError(f"{path}: no frame-NNNNNN.color.jpg|png files")
  shared_K = _sevenscenes_shared_K(path, intrinsics)
  Ks, c2ws, depths = [], [], []
  for _, color in colors:
    stem = color[:color.rindex(".color.")]
    if os.path.exists(stem + ".K.txt"):
      Ks.append(_load_matrix(stem + ".K.txt", (3, 3)))
    elif shared_K is not None:
      Ks.append(shared_K)
    else:
      looked = [os.path.basename(stem) + ".K.txt"] + [os.path.normpath(os.path.join(path, n))
                                                       for n in SEVENSCENES_K_FILES]
      raise FileNotFoundError(f"{path}: no intrinsics: looked for {', '.join(looked)}, and for a 7-Scenes sequence "
                              f"(a seq-NN folder beside {' or '.join(SEVENSCENES_SPLITS)}: focal 585); pass "
                              f"intrinsics= (a file or a 3x3 matrix) otherwise")
    c2ws.append(_c2w_rigid(_load_matrix(_require(stem + ".pose.txt", "pose"), (4, 4)), stem + ".pose.txt"))
    depths.append(_require(stem + ".depth.png", "depth"))
  folder = os.path.normpath(path)
  name = os.path.basename(folder)
  if re.match(SEVENSCENES_SEQUENCE, name):
    name = f"{os.path.basename(os.path.dirname(folder))}_{name}"
  return ClipFiles(name, "sevenscenes", tuple(p for _, p in colors), tuple(depths), DepthSpec("png", 1e-3, (65535,)),
                   np.stack(Ks), np.stack(c2ws))


def read_align3d(path: str) -> ClipFiles:
  """The frames.json layout of align3d samples: {"root": [{rgb_image, depth_image, info: {kcam.matrix, depth_scale,
  rt_cam.matrix (camera-to-world)}}]}."""
  fpath = _require(os.path.join(path, "frames.json"), "frames.json")
  try:
    entries = json.load(open(fpath))["root"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{fpath}: expected JSON {{'root': [frames...]}}: {e!r}") from e
  frames, depths, Ks, c2ws, scales = [], [], [], [], set()
  for n, e in enumerate(entries):
    where = f"{fpath} root[{n}]"
    try:
      K = np.asarray(e["info"]["kcam"]["matrix"], np.float64)
      c2w = np.asarray(e["info"]["rt_cam"]["matrix"], np.float64)
      scales.add(float(e["info"]["depth_scale"]))
      frames.append(os.path.join(path, e["rgb_image"]))
      depths.append(os.path.join(path, e["depth_image"]))
    except (KeyError, TypeError, ValueError) as err:
      raise ValueError(f"{where}: needs rgb_image, depth_image, info.kcam.matrix, info.rt_cam.matrix, "
                       f"info.depth_scale: {err!r}") from err
    if K.shape != (3, 3) or c2w.shape != (4, 4):
      raise ValueError(f"{where}: expected K 3x3 and rt_cam 4x4, found {K.shape} and {c2w.shape}")
    Ks.append(K)
    c2ws.append(_c2w_rigid(c2w, where))
  if len(scales) > 1:
    raise ValueError(f"{fpath}: frames use different depth_scale values {sorted(scales)}")
  return ClipFiles(os.path.basename(os.path.normpath(path)), "align3d", tuple(frames), tuple(depths),
                   DepthSpec("png", scales.pop() if scales else 1e-3), np.stack(Ks) if Ks else np.zeros((0, 3, 3)),
                   np.stack(c2ws) if c2ws else np.zeros((0, 4, 4)))


def _read_timestamped(path: str, columns: int) -> tuple[np.ndarray, list[list[str]]]:
  """TUM-style list: '# comment' lines, then 'timestamp value...' rows -> (timestamps [N], the other fields)."""
  stamps, rows = [], []
  for n, line in enumerate(open(_require(path, "TUM list")), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    fields = line.split()
    if len(fields) != columns:
      raise ValueError(f"{path} line {n}: expected {columns} fields, found {len(fields)}: {line!r}")
    try:
      stamps.append(float(fields[0]))
    except ValueError as e:
      raise ValueError(f"{path} line {n}: unparsable timestamp {fields[0]!r}") from e
    rows.append(fields[1:])
  return np.asarray(stamps), rows


def _nearest(query: np.ndarray, stamps: np.ndarray, max_dt: float) -> np.ndarray:
  """Index of the nearest stamp for each query time, -1 where none is within max_dt."""
  order = np.argsort(stamps)
  s = stamps[order]
  pos = np.clip(np.searchsorted(s, query), 1, len(s) - 1) if len(s) > 1 else np.zeros(len(query), int)
  left = np.maximum(pos - 1, 0)
  pick = np.where(np.abs(s[left] - query) <= np.abs(s[pos] - query), left, pos)
  return np.where(np.abs(s[pick] - query) <= max_dt, order[pick], -1)


def _tum_c2w(rows: list[list[str]], where: str) -> np.ndarray:
  """'tx ty tz qx qy qz qw' rows (camera-to-world) -> [N, 4, 4]."""
  try:
    gt = np.asarray(rows, np.float64)
  except ValueError as e:
    raise ValueError(f"{where}: unparsable pose values: {e}") from e
  return pose_matrix(quat_to_matrix(gt[:, 3:]), gt[:, :3])


def _tum_associated(path: str, max_dt: float) -> tuple[list[str], list[str], np.ndarray]:
  """TUM RGB-D lists: each RGB frame takes the nearest depth and pose within max_dt seconds (frames without both are
  dropped) -> (frames, depths, c2w)."""
  rgb_t, rgb_rows = _read_timestamped(os.path.join(path, "rgb.txt"), 2)
  depth_t, depth_rows = _read_timestamped(os.path.join(path, "depth.txt"), 2)
  gt_t, gt_rows = _read_timestamped(os.path.join(path, "groundtruth.txt"), 8)
  if not (len(rgb_t) and len(depth_t) and len(gt_t)):
    raise ValueError(f"{path}: rgb.txt, depth.txt and groundtruth.txt must each list at least one entry")
  c2w = _tum_c2w(gt_rows, os.path.join(path, "groundtruth.txt"))
  d_idx, g_idx = _nearest(rgb_t, depth_t, max_dt), _nearest(rgb_t, gt_t, max_dt)
  keep = np.flatnonzero((d_idx >= 0) & (g_idx >= 0))
  if keep.size == 0:
    raise ValueError(f"{path}: no RGB frame has both a depth map and a pose within {max_dt} s")
  return ([os.path.join(path, rgb_rows[i][0]) for i in keep],
          [os.path.join(path, depth_rows[d_idx[i]][0]) for i in keep], c2w[g_idx[keep]])


def tum_camera(path: str) -> tuple[tuple[float, ...], ...]:
  """The TUM Kinect a sequence folder names (rgbd_dataset_freiburg<N>_...), fr3 when it names none."""
  m = re.search(r"freiburg[123]", os.path.basename(os.path.normpath(path)))
  return TUM_CAMERAS[m.group(0)] if m else TUM_FR3_K


def read_tum(path: str, intrinsics=None, max_dt: float = 0.02, start: int = 0, stop: int | None = None,
             step: int = 1, source: str = "tum") -> ClipFiles:
  """TUM RGB-D / Bonn: rgb.txt, depth.txt, groundtruth.txt (timestamp tx ty tz qx qy qz qw, camera-to-world),
  associated by `_tum_associated`, then [start:stop:step] (TUM-dynamics eval: step 3, 90 frames; Bonn: 30:140).
  Depth PNG 5000 per metre. K: `intrinsics`, else the Kinect the folder names (`tum_camera`; the fr1 and fr2 RGB
  images also carry lens distortion, not undone here)."""
  if not any(os.path.exists(os.path.join(path, n)) for n in TUM_LISTS):
    raise FileNotFoundError(f"{path}: not a TUM RGB-D / Bonn sequence: looked for {', '.join(TUM_LISTS)}")
  frames, depths, c2w = _tum_associated(path, max_dt)
  keep = np.arange(len(frames))[start:stop:step]
  if keep.size == 0:
    raise ValueError(f"{path}: [{start}:{stop}:{step}] selects none of the {len(frames)} frames")
  K = np.asarray(tum_camera(path) if intrinsics is None else intrinsics, np.float64)
  return ClipFiles(os.path.basename(os.path.normpath(path)), source, tuple(frames[i] for i in keep),
                   tuple(depths[i] for i in keep), DepthSpec("png", TUM_DEPTH_SCALE),
                   np.broadcast_to(K, (keep.size, 3, 3)).copy(), c2w[keep])


def read_bonn(path: str, intrinsics=BONN_K, start: int = 0, stop: int | None = None, step: int = 1) -> ClipFiles:
  """Bonn RGB-D Dynamic: the TUM layout with Bonn's intrinsics (eval protocol: start=30, stop=140)."""
  return read_tum(path, intrinsics, start=start, stop=stop, step=step, source="bonn")


SINTEL_PARTS = ("camdata_left", "depth")  # what MPI-Sintel-depth-training-20150305.zip unpacks into training/


def sintel_training(path: str) -> str:
  """The Sintel `training` folder: `path` itself, or path/training (the unpacked MPI-Sintel zips' root)."""
  for folder in (path, os.path.join(path, "training")):
    if all(os.path.isdir(os.path.join(folder, part)) for part in SINTEL_PARTS):
      return folder
  raise FileNotFoundError(f"{path}: not a Sintel training folder: looked for {' and '.join(SINTEL_PARTS)}/ in {path} "
                          f"and in {os.path.join(path, 'training')} (the depth/camera zip unpacks them there)")


def read_sintel(path: str, sequence: str, render_pass: str = "final") -> ClipFiles:
  """MPI Sintel training set: {training}/{final|clean|albedo}/{seq}/frame_NNNN.png, depth/{seq}/*.dpt,
  camdata_left/{seq}/*.cam, where `path` is the `training` folder or the folder holding it (`sintel_training`).
  Sintel depth is in the renderer's units (treated as metres)."""
  path = sintel_training(path)
  images = _numbered(os.path.join(path, render_pass, sequence, "frame_*.png"), r"^frame_(\d+)\.png$")
  if not images:
    raise FileNotFoundError(f"{path}: no {render_pass}/{sequence}/frame_NNNN.png images")
  Ks, c2ws, depths = [], [], []
  for i, _ in images:
    cam = _require(os.path.join(path, "camdata_left", sequence, f"frame_{i:04d}.cam"), "Sintel camera")
    K, c2w = read_sintel_cam(cam)
    Ks.append(K)
    c2ws.append(_c2w_rigid(c2w, cam))
    depths.append(_require(os.path.join(path, "depth", sequence, f"frame_{i:04d}.dpt"), "Sintel depth"))
  return ClipFiles(sequence, "sintel", tuple(p for _, p in images), tuple(depths), DepthSpec("dpt"), np.stack(Ks),
                   np.stack(c2ws))


def read_pointodyssey(path: str) -> ClipFiles:
  """PointOdyssey sequence: rgbs/rgb_NNNNN.jpg, depths/depth_NNNNN.png (16-bit, metres = v / 65535 * 1000),
  anno.npz with 'intrinsics' [N, 3, 3] and 'extrinsics' [N, 4, 4] world-to-camera."""
  anno_path = _require(os.path.join(path, "anno.npz"), "PointOdyssey anno.npz")
  try:
    with np.load(anno_path, allow_pickle=False) as anno:
      K, w2c = np.asarray(anno["intrinsics"], np.float64), np.asarray(anno["extrinsics"], np.float64)
  except (KeyError, ValueError, OSError) as e:
    raise ValueError(f"{anno_path}: needs arrays 'intrinsics' [N, 3, 3] and 'extrinsics' [N, 4, 4]: {e!r}") from e
  images = _numbered(os.path.join(path, "rgbs", "rgb_*"), r"^rgb_(\d+)\.(jpg|png)$")
  if K.shape != (len(images), 3, 3) or w2c.shape != (len(images), 4, 4):
    raise ValueError(f"{anno_path}: expected intrinsics [{len(images)}, 3, 3] and extrinsics [{len(images)}, 4, 4] "
                     f"for {len(images)} images, found {K.shape} and {w2c.shape}")
  if not np.isfinite(w2c).all() or abs(np.linalg.det(w2c[:, :3, :3]) - 1).max(initial=0) > 0.05:
    raise ValueError(f"{anno_path}: extrinsics are not finite rigid transforms")
  depths = [_require(os.path.join(path, "depths", f"depth_{i:05d}.png"), "PointOdyssey depth") for i, _ in images]
  return ClipFiles(os.path.basename(os.path.normpath(path)), "pointodyssey", tuple(p for _, p in images),
                   tuple(depths), DepthSpec("png", 1000 / 65535), K, np.linalg.inv(w2c))


def read_tartanair(path: str, intrinsics=TARTANAIR_K) -> ClipFiles:
  """TartanAir trajectory: image_left/NNNNNN_left.png, depth_left/NNNNNN_left_depth.npy (metres), pose_left.txt
  (tx ty tz qx qy qz qw per line, camera-to-world with NED camera axes, converted here to OpenCV axes)."""
  images = _numbered(os.path.join(path, "image_left", "*_left.png"), r"^(\d+)_left\.png$")
  pose_path = _require(os.path.join(path, "pose_left.txt"), "TartanAir pose_left.txt")
  try:
    poses = np.loadtxt(pose_path, ndmin=2)
  except ValueError as e:
    raise ValueError(f"{pose_path}: unparsable poses: {e}") from e
  if poses.shape != (len(images), 7):
    raise ValueError(f"{pose_path}: expected {len(images)} lines of 7 numbers (one per image), found {poses.shape}")
  c2w = ned_to_opencv_c2w(pose_matrix(quat_to_matrix(poses[:, 3:]), poses[:, :3]))
  depths = [_require(os.path.join(path, "depth_left", f"{i:06d}_left_depth.npy"), "TartanAir depth")
            for i, _ in images]
  K = np.broadcast_to(np.asarray(intrinsics, np.float64), (len(images), 3, 3)).copy()
  return ClipFiles(os.path.basename(os.path.normpath(path)), "tartanair", tuple(p for _, p in images), tuple(depths),
                   DepthSpec("npy"), K, c2w)


# ---------------------------------------------------------------------------------- depth that needs its own decoder
EXR_MAGIC = 20000630
EXR_LINES_PER_CHUNK = {0: 1, 2: 1, 3: 16}  # NO_COMPRESSION, ZIPS_COMPRESSION, ZIP_COMPRESSION
EXR_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}  # UINT, HALF, FLOAT
OMNIWORLD_NEAR, OMNIWORLD_FAR = 1.0, 1000.0  # the reversed-Z planes of load_depth in OmniWorld's scripts/utils.py
SPATIALVID_DEPTH_RANGE = (1e-3, 1e2)  # metres: the clip in SpatialVID's utils/read_depth.py


def _exr_unzip(payload: bytes, size: int, where: str) -> bytes:
  """Undo OpenEXR's ZIP(S) chunk coding: zlib, then the byte-delta predictor, then the split-halves interleave."""
  try:
    t = np.frombuffer(zlib.decompress(payload), np.uint8).astype(np.int64)
  except zlib.error as e:
    raise ValueError(f"{where}: corrupt ZIP-compressed OpenEXR chunk: {e}") from e
  if t.size != size:
    raise ValueError(f"{where}: an OpenEXR chunk inflates to {t.size} bytes, expected {size}")
  t[1:] -= 128
  t = (np.cumsum(t) % 256).astype(np.uint8)
  out = np.empty_like(t)
  out[0::2], out[1::2] = t[:(size + 1) // 2], t[(size + 1) // 2:]
  return out.tobytes()


def read_exr_channel(data: bytes, channel: str, where: str) -> np.ndarray:
  """One channel of a single-part scanline OpenEXR image -> float32 [H, W], without an EXR library (none is
  installed here). Codings: none, ZIPS, ZIP (the default of OpenEXR's Python `Header()`, which BEDLAM's
  exr_save_depth_masks.py and SpatialVID's cvd_opt.py write with); layout per openexr.com "OpenEXR File Layout"."""
  if len(data) < 8 or struct.unpack_from("<i", data)[0] != EXR_MAGIC:
    raise ValueError(f"{where}: not an OpenEXR file")
  if struct.unpack_from("<I", data, 4)[0] & 0x1A00:
    raise ValueError(f"{where}: tiled, deep or multi-part OpenEXR files are not supported")
  try:
    attrs, pos = {}, 8
    while data[pos]:  # attributes: name\0 type\0 int32 size, value; an empty name ends the header
      name_end = data.index(b"\0", pos)
      type_end = data.index(b"\0", name_end + 1)
      size = struct.unpack_from("<i", data, type_end + 1)[0]
      attrs[data[pos:name_end].decode()] = data[type_end + 5:type_end + 5 + size]
      pos = type_end + 5 + size
    pos += 1
    chlist, channels, p = attrs["channels"], [], 0
    while chlist[p]:  # name\0 int32 pixel type, uint8 linear, 3 reserved, int32 x/y sampling
      end = chlist.index(b"\0", p)
      ptype, _, xs, ys = struct.unpack_from("<iB3xii", chlist, end + 1)
      channels.append((chlist[p:end].decode(), ptype, xs, ys))
      p = end + 17
    compression = attrs["compression"][0]
    x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"])
  except (KeyError, IndexError, ValueError, struct.error, UnicodeDecodeError) as e:
    raise ValueError(f"{where}: truncated or malformed OpenEXR header ({e!r})") from e
  names = [c[0] for c in channels]
  if channel not in names:
    raise ValueError(f"{where}: no OpenEXR channel {channel!r} (channels: {names})")
  if compression not in EXR_LINES_PER_CHUNK:
    raise ValueError(f"{where}: OpenEXR compression {compression} is not supported (only none, ZIPS and ZIP)")
  if any(c[1] not in EXR_PIXEL_DTYPES or (c[2], c[3]) != (1, 1) for c in channels):
    raise ValueError(f"{where}: unsupported OpenEXR pixel types or subsampling {channels}")
  width, height = x1 - x0 + 1, y1 - y0 + 1
  starts = np.cumsum([0] + [width * EXR_PIXEL_DTYPES[c[1]].itemsize for c in channels])
  line_bytes, lines_per_chunk = int(starts[-1]), EXR_LINES_PER_CHUNK[compression]
  image = bytearray(height * line_bytes)
  try:
    for offset in struct.unpack_from(f"<{-(-height // lines_per_chunk)}Q", data, pos):
      y, size = struct.unpack_from("<ii", data, offset)
      payload, rows = data[offset + 8:offset + 8 + size], min(lines_per_chunk, y1 - y + 1)
      if len(payload) != size:
        raise struct.error(f"the chunk at line {y} holds {len(payload)} of its {size} bytes")
      expected = rows * line_bytes
      raw = _exr_unzip(payload, expected, where) if compression and size < expected else payload
      if not y0 <= y <= y1 or len(raw) != expected:
        raise ValueError(f"{where}: OpenEXR chunk at line {y} has {len(raw)} bytes, expected {expected}")
      image[(y - y0) * line_bytes:(y - y0 + rows) * line_bytes] = raw
  except struct.error as e:
    raise ValueError(f"{where}: truncated OpenEXR file ({e})") from e
  k = names.index(channel)
  block = np.frombuffer(bytes(image), np.uint8).reshape(height, line_bytes)[:, starts[k]:starts[k + 1]]
  return np.ascontiguousarray(block).view(EXR_PIXEL_DTYPES[channels[k][1]]).reshape(height, width).astype(np.float32)


def omniworld_depth(raw: np.ndarray, metric_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """OmniWorld-Game 16-bit depth PNG values -> (depth float32, 0 where invalid; valid), exactly as load_depth in
  yangzhou24/OmniWorld scripts/utils.py: d = v / 65535 is a reversed-Z buffer (near 1, far 1000), depth =
  d / (far - d (far - near)) / 0.004 in the game's units; d < 0.0015 (too close) and d > 65500/65535 (sky) are
  invalid. metric_scale multiplies the result (the official reader has none: 1)."""
  d = np.asarray(raw, np.float64) / 65535.0
  valid = (d >= 0.0015) & (d <= 65500.0 / 65535.0)
  depth = d / (OMNIWORLD_FAR - d * (OMNIWORLD_FAR - OMNIWORLD_NEAR)) / 0.004 * metric_scale
  return np.where(valid, depth, 0.0).astype(np.float32), valid


def _read_png16(path: str) -> np.ndarray:
  """A single-channel 16-bit PNG's raw values [H, W]."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      raw = np.asarray(im)
  except (OSError, SyntaxError) as e:
    raise ValueError(f"cannot decode depth image {path}: {e}") from e
  if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32):
    raise ValueError(f"depth PNG {path}: expected a single-channel 16-bit image, found {raw.dtype} {raw.shape}")
  return raw


def _depth_omniworld_png(clip, i: int, shape) -> tuple[np.ndarray, np.ndarray]:
  """Frame i of an OmniWorld-Game clip: reversed-Z 16-bit PNG -> (metres, valid)."""
  return omniworld_depth(_read_png16(clip.depth_paths[i]), clip.depth_scale)


def _depth_bedlam_exr(clip, i: int, shape) -> tuple[np.ndarray, np.ndarray]:
  """Frame i of a BEDLAM clip: float32 'Depth' OpenEXR in cm (depth_scale 0.01) -> (metres, valid: > 0)."""
  path = clip.depth_paths[i]
  with open(path, "rb") as f:
    value = read_exr_channel(f.read(), "Depth", path)
  valid = np.isfinite(value) & (value > 0)
  return np.where(valid, value * clip.depth_scale, 0.0).astype(np.float32), valid


def _depth_spatialvid_zip_exr(clip, i: int, shape) -> tuple[np.ndarray, np.ndarray]:
  """Frame i of a SpatialVID clip: half 'Z' (inverse depth) OpenEXR member of the clip's zip -> metres
  clip(1 / Z, 1e-3, 100) where Z > 0, resampled (nearest) onto the frame grid `shape`."""
  where = f"{clip.depth_paths[i]}:{clip.depth_members[i]}"
  try:
    with zipfile.ZipFile(clip.depth_paths[i]) as z:
      data = z.read(clip.depth_members[i])
  except (zipfile.BadZipFile, KeyError, OSError) as e:
    raise ValueError(f"{where}: cannot read the depth archive member: {e}") from e
  inverse = read_exr_channel(data, "Z", where)
  valid = np.isfinite(inverse) & (inverse > 0)
  depth = np.where(valid, np.clip(1.0 / np.where(valid, inverse, 1.0), *SPATIALVID_DEPTH_RANGE), 0.0)
  if depth.shape != tuple(shape):  # MegaSaM depth is at its working resolution: resample onto the frame grid
    depth, valid = pm.resize_nearest(depth, shape), pm.resize_nearest(valid, shape)
  return (depth * clip.depth_scale).astype(np.float32), valid


DEPTH_CODECS = {"omniworld_png": _depth_omniworld_png, "bedlam_exr": _depth_bedlam_exr,
                "spatialvid_zip_exr": _depth_spatialvid_zip_exr}


@dataclasses.dataclass(frozen=True, eq=False)
class CodecClipFiles(ClipFiles):
  """ClipFiles whose depth needs a decoder `clips.read_depth` lacks (OmniWorld-Game's reversed-Z PNG, BEDLAM's
  OpenEXR, SpatialVID's zipped OpenEXR): `depth_codec` names it in DEPTH_CODECS, `depth_scale` takes its values to
  metres, `depth_members` name each frame's member when the depth paths are one zip archive. Its `depth_spec` only
  names the format: clips.read_depth cannot decode these files, `frame_depth` here does."""
  depth_codec: str = ""
  depth_scale: float = 1.0
  depth_members: tuple[str, ...] = ()

  def __post_init__(self):
    super().__post_init__()
    if self.depth_codec not in DEPTH_CODECS:
      raise ValueError(f"clip {self.name!r}: unknown depth codec {self.depth_codec!r}; "
                       f"choose from {sorted(DEPTH_CODECS)}")
    if self.depth_members and len(self.depth_members) != self.num_frames:
      raise ValueError(f"clip {self.name!r}: {len(self.depth_members)} depth members for {self.num_frames} frames")

  def frame_depth(self, i: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return DEPTH_CODECS[self.depth_codec](self, i, shape)


# -------------------------------------------------------------------------- shared bits of the training-set readers
def _image_size(path: str, what: str) -> tuple[int, int]:
  """(width, height) from an image header (nothing decoded)."""
  from PIL import Image

  _require(path, what)
  try:
    with Image.open(path) as im:
      return im.size
  except (OSError, SyntaxError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def _load_npy(path: str, what: str) -> np.ndarray:
  """A numeric .npy array as float64 (no pickles)."""
  _require(path, what)
  try:
    return np.asarray(np.load(path, allow_pickle=False), np.float64)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a numeric .npy array: {e}") from e


def _caption_txt(folder: str) -> str:
  """The optional caption.txt in `folder`, else ""."""
  path = os.path.join(folder, "caption.txt")
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return f.read().strip()


def _json_caption(path: str, keys: tuple[str, ...]) -> str:
  """The string at key path `keys` of a JSON caption file; a missing key is an error naming the keys present."""
  try:
    with open(path) as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e
  for key in keys:
    if not isinstance(value, dict) or key not in value:
      found = sorted(value) if isinstance(value, dict) else type(value).__name__
      raise ValueError(f"{path}: no caption at {'.'.join(keys)} ({key!r} missing; found {found})")
    value = value[key]
  if not isinstance(value, str):
    raise ValueError(f"{path}: the caption at {'.'.join(keys)} is a {type(value).__name__}, expected a string")
  return value.strip()


def _pixel_centre_K(fx, fy, cx, cy) -> np.ndarray:
  """[N, 3, 3] intrinsics from per-frame focal lengths and principal points, all in pixels."""
  K = np.zeros((len(fx), 3, 3))
  K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
  return K


# --------------------------------------------------------------------------------------------------- OmniWorld-Game
OMNIWORLD_CAPTION_KEYS = ("captions", "Video_Caption")


def omniworld_splits(path: str) -> list[list[int]]:
  """split_info.json of an OmniWorld-Game scene: {"split_num": S, "split": [[frame index, ...], ...]}."""
  info_path = _require(os.path.join(path, "split_info.json"), "OmniWorld-Game split_info.json")
  try:
    with open(info_path) as f:
      return [[int(i) for i in s] for s in json.load(f)["split"]]
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{info_path}: expected {{'split': [[frame indices], ...]}}: {e!r}") from e


def _omniworld_caption(path: str, frames: list[int], keys: tuple[str, ...]) -> str:
  """The first text/<start>_<end>.json caption whose start frame lies in the split; else caption.txt in the scene."""
  texts = [(int(m.group(1)), p) for p in glob.glob(os.path.join(path, "text", "*.json"))
           if (m := re.match(r"^(\d+)_(\d+)\.json$", os.path.basename(p)))]
  in_split = set(frames)
  inside = sorted((start, p) for start, p in texts if start in in_split)
  if keys and inside:
    return _json_caption(inside[0][1], keys)
  return _caption_txt(path)


def read_omniworld_game(path: str, split: int = 0, metric_scale: float = 1.0,
                        caption_keys: tuple[str, ...] = OMNIWORLD_CAPTION_KEYS) -> ClipFiles:
  """One split of an extracted OmniWorld-Game scene (layout: README "Data Structure" and scripts/visualize_pcd.py,
  scripts/utils.py of github.com/yangzhou24/OmniWorld; HF card huggingface.co/datasets/InternRobotics/OmniWorld):
  split_info.json {"split": [[frame index, ...], ...]}; color/NNNNNN.png RGB (1280x720); depth/NNNNNN.png 16-bit
  reversed-Z (decoded by `omniworld_depth`; game units, treated as metres, times metric_scale); camera/split_<s>.json
  {"focals": fx = fy per frame, "cx", "cy" (pixels, unprojected there at pixel centres u + 0.5, so shifted by -0.5
  here), "quats": [N, 4] (w, x, y, z), "trans": [N, 3]} giving world-to-camera OpenCV extrinsics, inverted here.
  Caption: text/<start>_<end>.json (81-frame segments) at caption_keys (("captions", "Video_Caption") as a
  third-party adapter read it; the official field list was not readable here; () skips it), else caption.txt."""
  splits = omniworld_splits(path)
  if not 0 <= split < len(splits):
    raise ValueError(f"{path}/split_info.json: split {split} requested but the scene has {len(splits)} splits")
  frames, n = splits[split], len(splits[split])
  cam_path = _require(os.path.join(path, "camera", f"split_{split}.json"), "OmniWorld-Game camera")
  try:
    with open(cam_path) as f:
      cam = json.load(f)
    quats, trans = np.asarray(cam["quats"], np.float64), np.asarray(cam["trans"], np.float64)
    focal, cx, cy = (np.broadcast_to(np.asarray(cam[k], np.float64), (n,)) for k in ("focals", "cx", "cy"))
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{cam_path}: needs 'focals', 'cx', 'cy' (a number or one per frame), 'quats' [N, 4] and "
                     f"'trans' [N, 3]: {e!r}") from e
  if quats.shape != (n, 4) or trans.shape != (n, 3):
    raise ValueError(f"{cam_path}: expected quats [{n}, 4] and trans [{n}, 3] for the {n} frames of split {split}, "
                     f"found {quats.shape} and {trans.shape}")
  if not (np.isfinite(quats).all() and np.isfinite(trans).all() and (np.linalg.norm(quats, axis=1) > 1e-8).all()):
    raise ValueError(f"{cam_path}: quats must be finite non-zero (w, x, y, z) quaternions and trans finite")
  if not (np.isfinite(focal).all() and (focal > 0).all() and np.isfinite(cx).all() and np.isfinite(cy).all()):
    raise ValueError(f"{cam_path}: focals must be finite and positive, cx and cy finite")
  w2c = pose_matrix(quat_to_matrix(quats[:, [1, 2, 3, 0]]), trans)
  depths = [_require(os.path.join(path, "depth", f"{i:06d}.png"), "OmniWorld-Game depth") for i in frames]
  return CodecClipFiles(f"{os.path.basename(os.path.normpath(path))}_split{split}", "omniworld_game",
                        tuple(os.path.join(path, "color", f"{i:06d}.png") for i in frames), tuple(depths),
                        DepthSpec("omniworld_png"), _pixel_centre_K(focal, focal, cx - 0.5, cy - 0.5),
                        np.linalg.inv(w2c), _omniworld_caption(path, frames, tuple(caption_keys)),
                        depth_codec="omniworld_png", depth_scale=float(metric_scale))


# ----------------------------------------------------------------------------------------------------------- BEDLAM
BEDLAM_SENSOR_MM = (36.0, 20.25)  # every BEDLAM sequence (bedlam_render unreal/render/unreal_coordinate_system.md)


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
  """Right-handed rotations by `angle` [N] radians about axis 0 (x), 1 (y) or 2 (z) -> [N, 3, 3]."""
  c, s = np.cos(angle), np.sin(angle)
  i, j = ((1, 2), (2, 0), (0, 1))[axis]
  R = np.zeros(np.shape(angle) + (3, 3))
  R[..., axis, axis] = 1.0
  R[..., i, i], R[..., j, j], R[..., i, j], R[..., j, i] = c, c, -s, s
  return R


def bedlam_c2w(xyz_cm: np.ndarray, yaw_pitch_roll_deg: np.ndarray) -> np.ndarray:
  """BEDLAM camera ground truth (Unreal: cm; X forward, Y right, Z up; yaw about world Z, then pitch about the new
  Y, then roll about the new X, degrees) -> camera-to-world [N, 4, 4] with OpenCV camera axes in metres. World axes
  (Y, -Z, X) / 100 as df_full_body.py's unreal2cv2; the rotation is the inverse of its world-to-camera
  get_cam_rotmat(-pitch, -yaw, -roll) = Rz(-roll) Rx(-pitch) Ry(-yaw)."""
  x, y, z = np.asarray(xyz_cm, np.float64).T
  yaw, pitch, roll = np.radians(np.asarray(yaw_pitch_roll_deg, np.float64)).T
  R = _axis_rotation(1, yaw) @ _axis_rotation(0, pitch) @ _axis_rotation(2, roll)
  return pose_matrix(R, np.stack([y, -z, x], -1) / 100.0)


def bedlam_sequences(path: str) -> list[str]:
  """Sequence names of a BEDLAM scene folder: the ground_truth/camera/<seq>_camera.csv files."""
  found = (re.match(r"^(.+)_camera\.csv$", os.path.basename(p))
           for p in glob.glob(os.path.join(path, "ground_truth", "camera", "*")))
  return sorted(m.group(1) for m in found if m)


def read_bedlam(path: str, sequence: str | None = None) -> ClipFiles:
  """One sequence of a BEDLAM scene folder (render job, e.g. 20221010_3_1000_batch01hand; layout from
  pixelite1201/BEDLAM data_processing/df_full_body.py and PerceivingSystems/bedlam_render
  tools/post_render_pipeline/exr_save_depth_masks.py + unreal/render/unreal_coordinate_system.md):
  png/<seq>/<seq>_NNNN.png RGB (1280x720, 30 fps); depth/<seq>/<seq>_NNNN_depth.exr (ZIP OpenEXR, float32 channel
  'Depth', Unreal scene depth in cm: bedlam_render issue #14 -> metres here); ground_truth/camera/<seq>_camera.csv
  (name,x,y,z,yaw,pitch,roll,focal_length,sensor_width,sensor_height,hfov, one row per image, converted by
  `bedlam_c2w`). K: fx = focal_length / sensor_width * W, fy = focal_length / sensor_height * H (mm), principal
  point at the image centre ((W - 1) / 2 with pixel centres at integers; df_full_body.py writes W / 2). "closeup"
  scenes are stored landscape: with the camera as logged they need no rotation (df_full_body.py rotates the image
  90 degrees clockwise and adds 90 degrees of roll instead, the same geometry). No text: optional
  png/<seq>/caption.txt. `sequence` may be omitted when the scene has just one."""
  if sequence is None:
    sequences = bedlam_sequences(path)
    if not sequences:
      raise FileNotFoundError(f"{path}: no BEDLAM ground_truth/camera/<sequence>_camera.csv files")
    if len(sequences) > 1:
      raise ValueError(f"{path}: the scene has {len(sequences)} sequences ({', '.join(sequences[:3])}, ...); "
                       f"name one with sequence=")
    sequence = sequences[0]
  cam_path = _require(os.path.join(path, "ground_truth", "camera", f"{sequence}_camera.csv"),
                      "BEDLAM camera ground truth")
  images = sorted(glob.glob(os.path.join(path, "png", sequence, "*.png")))
  if not images:
    raise FileNotFoundError(f"{path}: no png/{sequence}/*.png images")
  names = [os.path.basename(p) for p in images]
  try:
    with open(cam_path, newline="") as f:
      rows = {r["name"]: r for r in csv.DictReader(f)}
  except (csv.Error, KeyError) as e:
    raise ValueError(f"{cam_path}: expected a CSV with a 'name' column naming each image: {e!r}") from e
  missing = [n for n in names if n not in rows]
  if missing:
    raise ValueError(f"{cam_path}: no camera row for {len(missing)} of the {len(names)} images, e.g. {missing[0]}")
  keys = ("x", "y", "z", "yaw", "pitch", "roll", "focal_length")
  try:
    values = np.array([[float(rows[n][k]) for k in keys] for n in names])
    sensor = np.array([[float(rows[n].get(k) or d) for k, d in zip(("sensor_width", "sensor_height"),
                                                                    BEDLAM_SENSOR_MM)] for n in names])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{cam_path}: needs numeric columns {', '.join(keys)}: {e!r}") from e
  if not (np.isfinite(values).all() and np.isfinite(sensor).all() and (values[:, 6] > 0).all() and (sensor > 0).all()):
    raise ValueError(f"{cam_path}: camera values must be finite, focal_length and sensor sizes positive")
  width, height = _image_size(images[0], "BEDLAM image")
  fl = values[:, 6]
  K = _pixel_centre_K(fl / sensor[:, 0] * width, fl / sensor[:, 1] * height, np.full(len(fl), (width - 1) / 2),
                      np.full(len(fl), (height - 1) / 2))
  depths = [_require(os.path.join(path, "depth", sequence, n[:-4] + "_depth.exr"), "BEDLAM depth") for n in names]
  return CodecClipFiles(f"{os.path.basename(os.path.normpath(path))}_{sequence}", "bedlam", tuple(images),
                        tuple(depths), DepthSpec("exr"), K, bedlam_c2w(values[:, :3], values[:, 3:6]),
                        _caption_txt(os.path.join(path, "png", sequence)), depth_codec="bedlam_exr", depth_scale=0.01)


# ------------------------------------------------------------------------------------------------------- SpatialVID
def read_spatialvid(path: str, caption_key: str | None = "SceneDesc", frames_dir: str | None = None,
                    depth_zip: str | None = None) -> ClipFiles:
  """A SpatialVID / SpatialVID-HQ clip, `path` = DATA_PATH/annotations/group_NNNN/<clip id>/ (layout: HF card
  huggingface.co/datasets/SpatialVID/SpatialVID-HQ; formats from NJU-3DV/SpatialVID utils/pack_clip_assets.py,
  utils/read_depth.py, utils/normalize_intrinsics.py, utils/quat_to_mat.py, camera_pose_annotation/cvd_opt/cvd_opt.py,
  caption/utils/combine.py): poses.npy [N, 7] (tx ty tz qx qy qz qw, lietorch SE3, world-to-camera, OpenCV axes:
  MegaSaM), intrinsics.npy [N, 4] (fx / W, fy / H, cx / W, cy / H; the principal point normalised to 0.5, 0.5, i.e.
  the image centre, (W - 1) / 2 here), indexes.txt ("annotation index, video frame index" per line), caption.json
  (VQA/LLM fields CamMotion, SceneDesc, SceneSummary, ...; `caption_key`, None skips it, else caption.txt);
  depth DATA_PATH/depths/group_NNNN/<clip id>.zip holding NNNNN.exr per annotated frame (sorted), half-float channel
  'Z' = inverse depth, metres = clip(1 / Z, 1e-3, 100), at MegaSaM's resolution (resampled to the frames here).
  RGB ships only as DATA_PATH/videos/group_NNNN/<clip id>.mp4 and there is no video decoder here: extract it first
  with the official utils/extract_frames.py (every frame) into <path>/img/frame_NNNNNN.jpg (NNNNNN = video frame
  index, its naming), or pass frames_dir."""
  clip_id = os.path.basename(os.path.normpath(path))
  group = os.path.basename(os.path.dirname(os.path.normpath(path)))
  poses = _load_npy(os.path.join(path, "poses.npy"), "SpatialVID poses.npy")
  intr = _load_npy(os.path.join(path, "intrinsics.npy"), "SpatialVID intrinsics.npy")
  index_path = _require(os.path.join(path, "indexes.txt"), "SpatialVID indexes.txt")
  video_frames = []
  with open(index_path) as f:
    lines = f.readlines()
  for n, line in enumerate(lines, 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 2 or not all(f.isdigit() for f in fields):
      raise ValueError(f"{index_path} line {n}: expected 'annotation_index video_frame_index', found {line.strip()!r}")
    video_frames.append(int(fields[1]))
  count = len(video_frames)
  if not count:
    raise ValueError(f"{index_path}: lists no frames")
  if poses.shape != (count, 7) or intr.shape != (count, 4):
    raise ValueError(f"{path}: expected poses.npy [{count}, 7] and intrinsics.npy [{count}, 4] for the {count} lines "
                     f"of indexes.txt, found {poses.shape} and {intr.shape}")
  if not (np.isfinite(poses).all() and (np.linalg.norm(poses[:, 3:], axis=1) > 1e-8).all()):
    raise ValueError(f"{path}/poses.npy: poses must be finite with non-zero (qx, qy, qz, qw) quaternions")
  if not (np.isfinite(intr).all() and (intr > 0).all()):
    raise ValueError(f"{path}/intrinsics.npy: normalised intrinsics must be finite and positive")
  frames_dir = frames_dir or os.path.join(path, "img")
  frames = tuple(os.path.join(frames_dir, f"frame_{i:06d}.jpg") for i in video_frames)
  width, height = _image_size(frames[0], "SpatialVID frame (extract the clip's mp4 with utils/extract_frames.py)")
  depth_zip = depth_zip or os.path.normpath(os.path.join(path, "..", "..", "..", "depths", group, clip_id + ".zip"))
  try:
    with zipfile.ZipFile(_require(depth_zip, "SpatialVID depth archive")) as z:
      members = tuple(sorted(m for m in z.namelist() if m.endswith(".exr")))
  except zipfile.BadZipFile as e:
    raise ValueError(f"{depth_zip}: not a zip archive: {e}") from e
  if len(members) != count:
    raise ValueError(f"{depth_zip}: {len(members)} .exr depth maps for the {count} annotated frames")
  K = _pixel_centre_K(intr[:, 0] * width, intr[:, 1] * height, intr[:, 2] * width - 0.5, intr[:, 3] * height - 0.5)
  w2c = pose_matrix(quat_to_matrix(poses[:, 3:]), poses[:, :3])
  caption_path = os.path.join(path, "caption.json")
  caption = (_json_caption(caption_path, (caption_key,)) if caption_key and os.path.exists(caption_path)
             else _caption_txt(path))
  return CodecClipFiles(clip_id, "spatialvid", frames, (depth_zip,) * count, DepthSpec("exr"), K,
                        np.linalg.inv(w2c), caption, depth_codec="spatialvid_zip_exr", depth_members=members)


READERS: dict[str, Callable[..., ClipFiles]] = {
    "clipfolder": read_clipfolder, "tum": read_tum, "bonn": read_bonn, "sevenscenes": read_sevenscenes,
    "align3d": read_align3d, "sintel": read_sintel, "pointodyssey": read_pointodyssey, "tartanair": read_tartanair,
    "omniworld_game": read_omniworld_game, "bedlam": read_bedlam, "spatialvid": read_spatialvid,
}


def open_clip(fmt: str, path: str, **options) -> ClipFiles:
  """The reader registered under `fmt` (as given on a command line) applied to `path`."""
  if fmt not in READERS:
    raise ValueError(f"unknown clip format {fmt!r}; choose from {sorted(READERS)}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{fmt} clip: {path} is not a directory")
  return READERS[fmt](path, **options)


def _clips_of_scene(fmt: str, path: str) -> list[tuple[str, ClipFiles]] | None:
  """Every clip of a folder holding several (a BEDLAM scene: its sequences; an OmniWorld-Game scene: its splits; a
  7-Scenes or 3DMatch scene: its seq-NN folders), or None when `path` is no such folder."""
  if fmt == "bedlam" and os.path.isdir(os.path.join(path, "ground_truth", "camera")):
    clips = [open_clip(fmt, path, sequence=n) for n in bedlam_sequences(path)]
  elif fmt == "omniworld_game" and os.path.isfile(os.path.join(path, "split_info.json")):
    clips = [open_clip(fmt, path, split=s) for s in range(len(omniworld_splits(path)))]
  elif fmt == "sevenscenes" and (sequences := sorted(
      p for p in glob.glob(os.path.join(path, "seq-*")) if re.match(SEVENSCENES_SEQUENCE, os.path.basename(p)))):
    clips = [open_clip(fmt, p) for p in sequences]
  else:
    return None
  return [(c.name, c) for c in clips]


def open_clips(fmt: str, path: str) -> list[tuple[str, ClipFiles]]:
  """[(name, clip)] under `path`: the folder itself if the reader opens it, else each sub-folder it opens (Sintel:
  `path` is the `training` folder or its parent and every folder of training/depth is a sequence; a BEDLAM scene
  gives each sequence, an OmniWorld-Game scene each split, a 7-Scenes / 3DMatch scene each seq-NN, and a folder of
  such scenes all of them). Nothing readable is an error."""
  if fmt == "sintel":
    names = sorted(os.listdir(os.path.join(sintel_training(path), "depth")))
    return [(n, open_clip(fmt, path, sequence=n)) for n in names]
  scene = _clips_of_scene(fmt, path)
  if scene is not None:
    return scene
  try:
    clip = open_clip(fmt, path)
    return [(clip.name, clip)]
  except (FileNotFoundError, ValueError) as top_error:
    out = []
    for sub in sorted(os.listdir(path)) if os.path.isdir(path) else []:
      try:
        scene = _clips_of_scene(fmt, os.path.join(path, sub))
        out.extend(scene if scene is not None else [(sub, open_clip(fmt, os.path.join(path, sub)))])
      except (FileNotFoundError, ValueError):
        continue
    if not out:
      raise ValueError(f"{path} is neither a {fmt} clip nor a folder of them ({top_error})") from top_error
    return out


def write_clipfolder(path: str, record, depth_format: str = "npy", caption: str | None = None,
                     overwrite: bool = False) -> str:
  """Write a ClipRecord as a clip folder (depth as float32 metres .npy, or 16-bit millimetre .png), atomically."""
  from PIL import Image

  if depth_format not in ("npy", "png"):
    raise ValueError(f"depth_format must be 'npy' or 'png', got {depth_format!r}")
  with atomic_directory(path, overwrite=overwrite) as tmp:
    os.makedirs(os.path.join(tmp, "frames"))
    os.makedirs(os.path.join(tmp, "depth"))
    for n, (frame, depth, valid) in enumerate(zip(record.frames, record.depth, record.valid)):
      Image.fromarray(frame).save(os.path.join(tmp, "frames", f"{n:06d}.png"))
      if depth_format == "npy":
        np.save(os.path.join(tmp, "depth", f"{n:06d}.npy"), np.where(valid, depth, 0).astype(np.float32))
      else:
        mm = np.where(valid, np.round(depth * 1000), 0)
        Image.fromarray(np.clip(mm, 0, 65534).astype(np.uint16)).save(os.path.join(tmp, "depth", f"{n:06d}.png"))
    cams = {"depth_scale": 1.0 if depth_format == "npy" else 0.001,
            "frames": [{"K": K.tolist(), "c2w": c2w.tolist()} for K, c2w in zip(record.K, record.c2w)]}
    with open(os.path.join(tmp, "cameras.json"), "w") as f:
      json.dump(cams, f, indent=1)
    caption = record.caption if caption is None else caption
    if caption:
      with open(os.path.join(tmp, "caption.txt"), "w") as f:
        f.write(caption + "\n")
  return path
