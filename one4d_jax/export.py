"""A generated 4D scene as files a person can open without this library: colour videos of the frames, the pointmaps
and the depth, the coloured point cloud and the camera path as PLY (MeshLab, Blender, Open3D, CloudCompare), the
cameras as JSON.

Conventions (those of `one4d_jax.geometry.pointmaps`): OpenCV cameras (x right, y down, z forward), K in pixels with
pixel centres at integer coordinates, poses camera-to-world with world = frame 0's camera. Lengths are in pointmap
units: the model generates each scene normalised into the [-1, 1] cube, so the metric scale is unknown. Every
function is a small pure function of arrays; `write_*` only add the file.
"""

import json
import os
import zipfile
from typing import NamedTuple

import numpy as np

from one4d_jax import media
from one4d_jax.geometry import pointmaps as pm

# viridis (matplotlib's), as a degree-6 polynomial per channel (Matt Zucker's fit, within 0.02 of the table): a
# colour map whose lightness rises monotonically, so bright reads as near in a depth video, and colour-blind safe.
_VIRIDIS = np.array([
    (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
    (0.1050930431085774, 1.404613529898575, 1.384590162594685),
    (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
    (-4.634230498983486, -5.799100973351585, -19.33244095627987),
    (6.228269936347081, 14.17993336680509, 56.69055260068105),
    (4.776384997670288, -13.74514537774601, -65.35303263337234),
    (-5.435455855934631, 4.645852612178535, 26.3124352495832)])


def viridis(t: np.ndarray) -> np.ndarray:
  """t [...] in [0, 1] (clipped) -> uint8 RGB [..., 3]."""
  t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)[..., None]
  rgb = sum(c * t ** k for k, c in enumerate(_VIRIDIS))
  return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def depth_colours(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """depth [F, H, W], valid [F, H, W] -> uint8 [F, H, W, 3]: inverse depth through viridis, near bright, invalid
  black. One range for the whole clip (the 2nd..98th percentile of the valid pixels' inverse depth), so a colour
  means the same distance in every frame and one far outlier does not wash out the rest."""
  valid = np.asarray(valid, bool) & np.isfinite(depth) & (depth > 0)
  inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
  lo, hi = np.percentile(inverse[valid], [2, 98]) if valid.any() else (0.0, 1.0)
  colours = viridis((inverse - lo) / max(hi - lo, 1e-12))
  colours[~valid] = 0
  return colours


def xyz_colours(pointmaps: np.ndarray) -> np.ndarray:
  """Pointmaps [..., 3] in [-1, 1] -> uint8 colours (xyz + 1) / 2: x red, y green, z blue, as the model sees them
  (it generates pointmaps as an RGB-like video); non-finite points black."""
  xyz = np.nan_to_num(np.asarray(pointmaps, np.float32), nan=-1.0, posinf=-1.0, neginf=-1.0)
  return np.clip(np.round((xyz + 1.0) * 127.5), 0, 255).astype(np.uint8)


def world_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
  """depth [F, H, W], K [F, 3, 3], c2w [F, 4, 4] -> every pixel's point in the world [F, H, W, 3] float32 (the
  post-optimisation's reading of the scene: one pinhole camera per frame and a depth per pixel)."""
  return pm.transform_points(c2w, pm.unproject(np.asarray(depth, np.float32), K)).astype(np.float32)


def point_residual(pointmaps: np.ndarray, valid: np.ndarray, depth: np.ndarray, K: np.ndarray,
                   c2w: np.ndarray) -> float:
  """Mean distance (pointmap units) between the sampled points and the post-optimised cameras' reading of them
  (`world_points`) over the valid pixels: how well one pinhole camera per frame explains what the model generated.
  `c2w` in the pointmaps' frame (as the post-optimisation returns it)."""
  valid = np.asarray(valid, bool)
  gap = np.linalg.norm(world_points(depth, K, c2w)[valid] - np.asarray(pointmaps)[valid], axis=-1)
  return float(gap.mean()) if gap.size else float("nan")


def scene_points(frames: np.ndarray, depth: np.ndarray, valid: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                 frame_stride: int = 1, max_points: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
  """(xyz [N, 3] float32 in the world, rgb [N, 3] uint8) of the valid pixels of every `frame_stride`-th frame (a
  dense clip repeats the static scene in every frame), at most `max_points` of them (an even random subset, seeded,
  so a viewer opens the file quickly and the same run gives the same file)."""
  pick = slice(None, None, frame_stride)
  keep = np.asarray(valid, bool)[pick]
  xyz, rgb = world_points(depth[pick], K[pick], c2w[pick])[keep], np.asarray(frames)[pick][keep]
  if len(xyz) > max_points:
    chosen = np.sort(np.random.default_rng(0).choice(len(xyz), max_points, replace=False))
    xyz, rgb = xyz[chosen], rgb[chosen]
  return xyz, rgb


def cameras_json(K: np.ndarray, c2w: np.ndarray, hw: tuple[int, int], source: np.ndarray,
                 observed: np.ndarray) -> dict:
  """The cameras as a JSON-ready dict: conventions and units spelled out in the file itself, then per frame K 3x3,
  camera-to-world 4x4, whether it was observed and its index in the source (-1: generated). The `frames` / `K` /
  `c2w` layout is the clip folder's (`one4d_jax.data.readers.read_clipfolder`)."""
  return {
      "convention": "OpenCV camera: x right, y down, z forward; c2w maps camera to world coordinates; world = frame "
                    "0's camera (its c2w is the identity); K in pixels, pixel centres at integer coordinates",
      "units": "pointmap units: the scene as generated, normalised into the [-1, 1] cube (metric scale unknown)",
      "height": int(hw[0]), "width": int(hw[1]),
      "frames": [{"frame": i, "source_index": int(s), "observed": bool(o), "K": np.asarray(k, float).tolist(),
                  "c2w": np.asarray(t, float).tolist()}
                 for i, (k, t, s, o) in enumerate(zip(K, c2w, source, observed))],
  }


def ply_bytes(vertex: np.ndarray, triangles: np.ndarray | None = None, edge: np.ndarray | None = None) -> bytes:
  """A binary little-endian PLY: `vertex` and `edge` are structured arrays of little-endian scalar fields (vertex: x,
  y, z float32, red, green, blue uint8; edge: vertex1, vertex2 int32 and a colour: line sets, as Open3D and MeshLab
  read them), `triangles` [M, 3] vertex indices (faces, as every mesh viewer reads them)."""
  kinds = {"f4": "float", "f8": "double", "u1": "uchar", "i4": "int", "u4": "uint"}
  lines = ["ply", "format binary_little_endian 1.0", "comment written by one4d_jax.export"]
  data = []
  for name, array in (("vertex", vertex), ("face", triangles), ("edge", edge)):
    if array is None:
      continue
    lines.append(f"element {name} {len(array)}")
    if name == "face":
      lines.append("property list uchar int vertex_indices")
      array = np.rec.fromarrays([np.full(len(array), 3, np.uint8), np.asarray(array, "<i4")],
                                dtype=[("count", "u1"), ("vertex_indices", "<i4", (3,))])
    else:
      lines += [f"property {kinds[array.dtype[f].str[1:]]} {f}" for f in array.dtype.names]
    data.append(array.tobytes())
  return ("\n".join(lines + ["end_header"]) + "\n").encode("ascii") + b"".join(data)


def _coloured_vertices(xyz: np.ndarray, rgb: np.ndarray) -> np.ndarray:
  vertex = np.empty(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                               ("blue", "u1")])
  for i, axis in enumerate("xyz"):
    vertex[axis] = xyz[:, i]
  for i, channel in enumerate(("red", "green", "blue")):
    vertex[channel] = rgb[:, i]
  return vertex


def write_ply_points(path: str, xyz: np.ndarray, rgb: np.ndarray) -> None:
  """A coloured point cloud (xyz [N, 3], rgb uint8 [N, 3]) as binary PLY: every point viewer opens it."""
  xyz = np.asarray(xyz, np.float32)
  if xyz.ndim != 2 or xyz.shape[1] != 3 or np.asarray(rgb).shape != xyz.shape or not np.isfinite(xyz).all():
    raise ValueError(f"write_ply_points needs finite xyz [N, 3] and rgb [N, 3], got {xyz.shape} and "
                     f"{np.asarray(rgb).shape}")
  with open(path, "wb") as f:
    f.write(ply_bytes(_coloured_vertices(xyz, np.asarray(rgb, np.uint8))))


def camera_frusta(K: np.ndarray, c2w: np.ndarray, hw: tuple[int, int], size: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One pyramid per camera: (vertices [5F, 3] = each camera's centre then its image corners at depth `size`,
  triangles [4F, 3] = the four sides, edges [8F, 2] = the four rays and the image rectangle), in the world."""
  h, w = hw
  corners = np.array([[-0.5, -0.5, 1.0], [w - 0.5, -0.5, 1.0], [w - 0.5, h - 0.5, 1.0], [-0.5, h - 0.5, 1.0]])
  rays = np.einsum("fij,cj->fci", np.linalg.inv(np.asarray(K, np.float64)), corners)  # [F, 4, 3] at z = 1
  local = np.concatenate([np.zeros((len(rays), 1, 3)), size * rays], axis=1)  # [F, 5, 3] in each camera
  c2w = np.asarray(c2w, np.float64)
  vertices = np.einsum("fij,fvj->fvi", c2w[:, :3, :3], local) + c2w[:, None, :3, 3]
  base = 5 * np.arange(len(c2w))[:, None, None]
  sides = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
  lines = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]])
  return vertices.reshape(-1, 3), (base + sides).reshape(-1, 3), (base + lines).reshape(-1, 2)


def write_ply_cameras(path: str, K: np.ndarray, c2w: np.ndarray, hw: tuple[int, int], size: float) -> None:
  """The camera path as coloured frusta (`camera_frusta`), viridis from the first frame (dark) to the last
  (bright), as one PLY holding both triangles (mesh viewers) and edges (line-set viewers)."""
  vertices, triangles, lines = camera_frusta(K, c2w, hw, size)
  if not np.isfinite(vertices).all():
    raise ValueError("write_ply_cameras: non-finite camera")
  colour = viridis(np.linspace(0.0, 1.0, len(c2w)) if len(c2w) > 1 else np.zeros(1))  # [F, 3]
  vertex = _coloured_vertices(vertices.astype(np.float32), np.repeat(colour, 5, axis=0))
  edge = np.empty(len(lines), [("vertex1", "<i4"), ("vertex2", "<i4"), ("red", "u1"), ("green", "u1"),
                               ("blue", "u1")])
  edge["vertex1"], edge["vertex2"] = lines[:, 0], lines[:, 1]
  for i, channel in enumerate(("red", "green", "blue")):
    edge[channel] = np.repeat(colour[:, i], 8)
  with open(path, "wb") as f:
    f.write(ply_bytes(vertex, triangles, edge))


class Scene(NamedTuple):
  """A generated 4D clip as it is written (`write_scene`): world = frame 0's camera, pointmap units."""
  frames: np.ndarray  # uint8 [F, H, W, 3]
  pointmaps: np.ndarray  # float32 [F, H, W, 3] as sampled: frame 0's camera as the model generated it
  valid: np.ndarray  # bool [F, H, W]: the plausible sampled points, which the post-optimisation fitted
  depth: np.ndarray  # float32 [F, H, W] along each camera's z
  depth_valid: np.ndarray  # bool [F, H, W]: valid points with finite, positive depth
  K: np.ndarray  # float64 [F, 3, 3]
  c2w: np.ndarray  # float64 [F, 4, 4] camera-to-world, c2w[0] the identity
  observed: np.ndarray  # bool [F]
  source: np.ndarray  # int64 [F]: index in the input (-1: generated)


def make_scene(frames, pointmaps, valid, depth, K, c2w, observed, source) -> Scene:
  """A sample and its post-optimised cameras (whose world is the pointmaps' frame) -> a Scene whose world is exactly
  frame 0's camera (`pointmaps.relative_poses`), depth kept where it is a finite, positive reading of a valid point."""
  depth = np.asarray(depth, np.float32)
  depth_valid = np.asarray(valid, bool) & np.isfinite(depth) & (depth > 0)
  return Scene(np.asarray(frames, np.uint8), np.asarray(pointmaps, np.float32), np.asarray(valid, bool), depth,
               depth_valid, np.asarray(K, np.float64), pm.relative_poses(c2w), np.asarray(observed, bool),
               np.asarray(source, np.int64))


# Plausible focal lengths, in image widths: a horizontal field of view between 1.1 and 169 degrees. Outside it the
# post-optimisation has failed (a focal of 0.0012 px once came out of pointmaps that were noise).
FOCAL_WIDTHS = (0.05, 50.0)


def check_focal(K: np.ndarray, width: int) -> None:
  """Focal lengths [F, 3, 3] outside FOCAL_WIDTHS (NaN included) are an error, not an output."""
  focal = np.asarray(K)[:, 0, 0] / width
  if not (FOCAL_WIDTHS[0] <= focal.min() and focal.max() <= FOCAL_WIDTHS[1]):
    raise FloatingPointError(f"implausible focal length {focal.min():.4g}..{focal.max():.4g} image "
                             f"widths (plausible: {FOCAL_WIDTHS[0]}..{FOCAL_WIDTHS[1]}, a field of view of 1-169 "
                             f"degrees); the post-optimisation failed on these pointmaps")


def check_scene(scene: Scene) -> None:
  """Nothing is written over garbage, nor shown: a scene whose arrays disagree in shape, without a single valid
  depth, with non-finite cameras, valid points or depth, or with a focal length outside FOCAL_WIDTHS, is an error
  naming what is wrong."""
  if scene.depth.ndim != 3:
    raise ValueError(f"depth must be [F, H, W], got {scene.depth.shape}")
  f, h, w = scene.depth.shape
  if scene.frames.shape != (f, h, w, 3) or scene.pointmaps.shape != (f, h, w, 3) or scene.K.shape != (f, 3, 3) \
      or scene.c2w.shape != (f, 4, 4) or scene.observed.shape != (f,) or scene.source.shape != (f,) \
      or scene.valid.shape != (f, h, w) or scene.depth_valid.shape != (f, h, w):
    raise ValueError(f"scene arrays disagree: frames {scene.frames.shape}, pointmaps {scene.pointmaps.shape}, valid "
                     f"{scene.valid.shape}, depth {scene.depth.shape}, depth valid {scene.depth_valid.shape}, K "
                     f"{scene.K.shape}, c2w {scene.c2w.shape}, observed {scene.observed.shape}, source "
                     f"{scene.source.shape}")
  bad = [name for name, x in (("K", scene.K), ("c2w", scene.c2w), ("valid points", scene.pointmaps[scene.valid]),
                              ("valid depth", scene.depth[scene.depth_valid])) if not np.isfinite(x).all()]
  if bad:
    raise FloatingPointError(f"non-finite {', '.join(bad)}")
  check_focal(scene.K, w)
  if not scene.depth_valid.any():
    raise ValueError("no pixel has a valid depth (the sampled pointmaps hold no point a camera explains); try "
                     "another seed, more --steps or other inputs")


def frustum_size(scene: Scene) -> float:
  """How deep to draw the camera frusta: a tenth of the typical (median valid) depth, visible beside the points
  without hiding them."""
  return 0.1 * float(np.median(scene.depth[scene.depth_valid]))


FILES = {
    "rgb.mp4": "the generated frames (observed ones as the model reproduced them)",
    "xyz.mp4": "the pointmaps as colours (xyz + 1) / 2: x red, y green, z blue",
    "depth.mp4": "depth as colour (viridis of inverse depth over one range for the clip: near bright, invalid black)",
    "pointmaps.npz": "pointmaps [F, H, W, 3] float32 as sampled (frame 0's camera, [-1, 1]), valid [F, H, W], "
                     "frames [F, H, W, 3] uint8",
    "depth.npz": "depth [F, H, W] float32 (z in each camera), valid [F, H, W], K [F, 3, 3], c2w [F, 4, 4] "
                 "(camera-to-world, world = frame 0's camera), observed [F], source_index [F] (-1: generated)",
    "cameras.json": "per frame K 3x3 and camera-to-world 4x4 (OpenCV axes, world = frame 0's camera, pointmap "
                    "units)",
    "scene.ply": "{points} coloured points (binary PLY) in the world: the valid depth of frames 0, {stride}, "
                 "{stride2}, ...",
    "cameras.ply": "one frustum per camera (triangles and edges), dark (first frame) to bright (last)",
    "summary.txt": "this file",
}


def write_scene(folder: str, scene: Scene, summary: list[str], fps: float = 16.0,
                max_points: int = 2_000_000) -> list[str]:
  """Every file of a generated scene (`FILES`) into an existing folder, after `check_scene`; `summary` lines open
  summary.txt, which then lists the files. scene.ply takes every k-th frame (at most 16 frames: a clip repeats
  the static scene in every frame). Returns the file names."""
  check_scene(scene)
  f, h, w = scene.depth.shape
  path = lambda name: os.path.join(folder, name)
  media.write_mp4(path("rgb.mp4"), scene.frames, fps)
  media.write_mp4(path("xyz.mp4"), np.where(scene.valid[..., None], xyz_colours(scene.pointmaps), 0), fps)
  media.write_mp4(path("depth.mp4"), depth_colours(scene.depth, scene.depth_valid), fps)
  np.savez(path("pointmaps.npz"), pointmaps=scene.pointmaps, valid=scene.valid, frames=scene.frames)
  np.savez(path("depth.npz"), depth=np.where(scene.depth_valid, scene.depth, 0), valid=scene.depth_valid,
           K=scene.K, c2w=scene.c2w, observed=scene.observed, source_index=scene.source)
  with open(path("cameras.json"), "w") as file:
    json.dump(cameras_json(scene.K, scene.c2w, (h, w), scene.source, scene.observed), file, indent=1)
  stride = -(-f // 16)
  xyz, rgb = scene_points(scene.frames, scene.depth, scene.depth_valid, scene.K, scene.c2w, stride, max_points)
  write_ply_points(path("scene.ply"), xyz, rgb)
  write_ply_cameras(path("cameras.ply"), scene.K, scene.c2w, (h, w), frustum_size(scene))
  lines = list(summary) + ["", "files:"]
  for name, what in FILES.items():
    lines.append(f"  {name:14s} {what.format(stride=stride, stride2=2 * stride, points=f'{len(xyz):,}')}")
  with open(path("summary.txt"), "w") as file:
    file.write("\n".join(lines) + "\n")
  return list(FILES)


# What read_scene takes from each file (the names write_scene gives the arrays).
_ARRAYS = {"pointmaps.npz": ("frames", "pointmaps", "valid"),
           "depth.npz": ("depth", "valid", "K", "c2w", "observed", "source_index")}


def read_scene(out: str) -> Scene:
  """The Scene a `write_scene` folder (launch.generate's OUT) holds, from pointmaps.npz and depth.npz, checked
  (`check_scene`): a missing folder, file or array, an unreadable file or arrays that disagree is an error naming
  it."""
  if not os.path.isdir(out):
    raise FileNotFoundError(f"{out} does not exist or is not a folder (expected a launch.generate --out folder)")
  arrays = {}
  for name, keys in _ARRAYS.items():
    path = os.path.join(out, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing: {out} is not a launch.generate output")
    try:
      with np.load(path) as npz:
        arrays[name] = {k: npz[k] for k in keys}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f"{path} is not as launch.generate writes it ({', '.join(keys)}): {e}") from None
  p, d = arrays["pointmaps.npz"], arrays["depth.npz"]
  scene = Scene(p["frames"], p["pointmaps"], p["valid"], d["depth"], d["valid"], d["K"], d["c2w"], d["observed"],
                d["source_index"])
  try:
    check_scene(scene)
  except (ValueError, FloatingPointError) as e:
    raise ValueError(f"{out} is not a usable launch.generate output: {e}") from None
  return scene
