"""Dataset readers, one per layout, all returning `ClipFiles`, registered under the format names command lines accept.

`open_clip(format, path, **options)` is the entry point; `READERS` lists the formats. Every reader checks what it
parses (files present, matrices parsable and shaped right, counts agreeing) and raises an error naming the file and
the problem rather than yielding a clip that would train on garbage.
"""

import glob
import json
import os
import re
from typing import Callable

import numpy as np

from one4d_jax.data.clips import ClipFiles, DepthSpec, read_sintel_cam
from one4d_jax.files import atomic_directory
from one4d_jax.geometry.rotations import ned_to_opencv_c2w, orthonormalize, pose_matrix, quat_to_matrix

# Intrinsics of the evaluation sensors (not stored with the data): TUM fr3 (TUM-dynamics) and Bonn RGB-D Dynamic.
TUM_FR3_K = ((535.4, 0.0, 320.1), (0.0, 539.2, 247.6), (0.0, 0.0, 1.0))
BONN_K = ((542.822841, 0.0, 315.593520), (0.0, 542.576870, 237.756098), (0.0, 0.0, 1.0))
TARTANAIR_K = ((320.0, 0.0, 320.0), (0.0, 320.0, 240.0), (0.0, 0.0, 1.0))
TUM_DEPTH_SCALE = 1 / 5000  # TUM and Bonn 16-bit depth PNGs store 5000 units per metre


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


def read_sevenscenes(path: str, intrinsics: str | None = None) -> ClipFiles:
  """7-Scenes / 3DMatch / tsdf-fusion folder: frame-N.color.jpg|png, frame-N.depth.png (mm; 0 and 65535 invalid),
  frame-N.pose.txt (camera-to-world), K from camera-intrinsics.txt or per-frame frame-N.K.txt (numbers may skip)."""
  colors = _numbered(os.path.join(path, "frame-*.color.*"), r"^frame-(\d+)\.color\.(jpg|png)$")
  if not colors:
    raise FileNotFoundError(f"{path}: no frame-NNNNNN.color.jpg|png files")
  shared_K = intrinsics or os.path.join(path, "camera-intrinsics.txt")
  Ks, c2ws, depths = [], [], []
  for i, color in colors:
    stem = os.path.join(path, f"frame-{i:06d}")
    per_frame_K = stem + ".K.txt"
    if os.path.exists(per_frame_K):
      Ks.append(_load_matrix(per_frame_K, (3, 3)))
    elif os.path.exists(shared_K):
      Ks.append(_load_matrix(shared_K, (3, 3)))
    else:
      raise FileNotFoundError(f"{path}: no intrinsics: expected {shared_K} or {per_frame_K}")
    c2ws.append(_c2w_rigid(_load_matrix(_require(stem + ".pose.txt", "pose"), (4, 4)), stem + ".pose.txt"))
    depths.append(_require(stem + ".depth.png", "depth"))
  return ClipFiles(os.path.basename(os.path.normpath(path)), "sevenscenes", tuple(p for _, p in colors),
                   tuple(depths), DepthSpec("png", 1e-3, (65535,)), np.stack(Ks), np.stack(c2ws))


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


def read_tum(path: str, intrinsics=TUM_FR3_K, max_dt: float = 0.02, start: int = 0, stop: int | None = None,
             step: int = 1, source: str = "tum") -> ClipFiles:
  """TUM RGB-D / Bonn: rgb.txt, depth.txt, groundtruth.txt (timestamp tx ty tz qx qy qz qw, camera-to-world);
  each RGB frame takes the nearest depth and pose within max_dt seconds (frames without both are dropped), then
  [start:stop:step] (TUM-dynamics eval: step 3, 90 frames; Bonn: 30:140). Depth PNG 5000 per metre."""
  rgb_t, rgb_rows = _read_timestamped(os.path.join(path, "rgb.txt"), 2)
  depth_t, depth_rows = _read_timestamped(os.path.join(path, "depth.txt"), 2)
  gt_t, gt_rows = _read_timestamped(os.path.join(path, "groundtruth.txt"), 8)
  if not (len(rgb_t) and len(depth_t) and len(gt_t)):
    raise ValueError(f"{path}: rgb.txt, depth.txt and groundtruth.txt must each list at least one entry")
  try:
    gt = np.asarray(gt_rows, np.float64)
  except ValueError as e:
    raise ValueError(f"{path}/groundtruth.txt: unparsable pose values: {e}") from e
  d_idx, g_idx = _nearest(rgb_t, depth_t, max_dt), _nearest(rgb_t, gt_t, max_dt)
  keep = np.flatnonzero((d_idx >= 0) & (g_idx >= 0))[start:stop:step]
  if keep.size == 0:
    raise ValueError(f"{path}: no RGB frame has both a depth map and a pose within {max_dt} s")
  poses = gt[g_idx[keep]]
  c2w = pose_matrix(quat_to_matrix(poses[:, 3:]), poses[:, :3])
  K = np.broadcast_to(np.asarray(intrinsics, np.float64), (keep.size, 3, 3)).copy()
  return ClipFiles(os.path.basename(os.path.normpath(path)), source,
                   tuple(os.path.join(path, rgb_rows[i][0]) for i in keep),
                   tuple(os.path.join(path, depth_rows[d_idx[i]][0]) for i in keep),
                   DepthSpec("png", TUM_DEPTH_SCALE), K, c2w)


def read_bonn(path: str, intrinsics=BONN_K, start: int = 0, stop: int | None = None, step: int = 1) -> ClipFiles:
  """Bonn RGB-D Dynamic: the TUM layout with Bonn's intrinsics (eval protocol: start=30, stop=140)."""
  return read_tum(path, intrinsics, start=start, stop=stop, step=step, source="bonn")


def read_sintel(path: str, sequence: str, render_pass: str = "final") -> ClipFiles:
  """MPI Sintel training set: {path}/{final|clean}/{seq}/frame_NNNN.png, depth/{seq}/*.dpt, camdata_left/{seq}/*.cam
  (path is the `training` folder). Sintel depth is in the renderer's units (treated as metres)."""
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


READERS: dict[str, Callable[..., ClipFiles]] = {
    "clipfolder": read_clipfolder, "tum": read_tum, "bonn": read_bonn, "sevenscenes": read_sevenscenes,
    "align3d": read_align3d, "sintel": read_sintel, "pointodyssey": read_pointodyssey, "tartanair": read_tartanair,
}


def open_clip(fmt: str, path: str, **options) -> ClipFiles:
  """The reader registered under `fmt` (as given on a command line) applied to `path`."""
  if fmt not in READERS:
    raise ValueError(f"unknown clip format {fmt!r}; choose from {sorted(READERS)}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{fmt} clip: {path} is not a directory")
  return READERS[fmt](path, **options)


def open_clips(fmt: str, path: str) -> list[tuple[str, ClipFiles]]:
  """[(name, clip)] under `path`: the folder itself if the reader opens it, else each sub-folder it opens (Sintel:
  `path` is the `training` folder and every folder of path/depth is a sequence). Nothing readable is an error."""
  if fmt == "sintel":
    names = sorted(os.listdir(os.path.join(path, "depth")))
    return [(n, open_clip(fmt, path, sequence=n)) for n in names]
  try:
    clip = open_clip(fmt, path)
    return [(clip.name, clip)]
  except (FileNotFoundError, ValueError) as top_error:
    out = []
    for sub in sorted(os.listdir(path)) if os.path.isdir(path) else []:
      try:
        out.append((sub, open_clip(fmt, os.path.join(path, sub))))
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
