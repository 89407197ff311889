"""The evaluation protocol: which frames are used (the published selections, the sparse setting's observed frames), how
one sequence is scored (depth under a named protocol, cameras with evo's metrics) and how sequences make a dataset
number. `launch.predict` and `launch.evaluate` both read it here, so a prediction covers exactly the frames its
evaluation scores.

Results speak one vocabulary, METRICS (results.json's names); `depth` keeps each reference's own names, which its
fixture tests compare against, and they are translated once, here.
"""

import dataclasses
import math
import os
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from one4d_jax import umc
from one4d_jax.data.readers import READERS, open_clips
from one4d_jax.eval import camera, depth
from one4d_jax.geometry import postopt
from one4d_jax.geometry.pointmaps import pointmaps_from_depth, resize_nearest

DEPTH_METRICS = ("abs_rel", "delta_1.25")
CAMERA_METRICS = ("ate", "rpe_t", "rpe_r")
METRICS = DEPTH_METRICS + CAMERA_METRICS  # abs_rel, delta_1.25 (fraction); ate, rpe_t (GT units: metres); rpe_r (deg)
FROM_MONST3R = {"Abs Rel": "abs_rel", "δ < 1.25": "delta_1.25"}  # depth.depth_evaluation's names
FROM_DEPTHCRAFTER = {"abs_relative_difference": "abs_rel", "delta1_acc": "delta_1.25"}  # depth.depthcrafter_evaluation

PROTOCOL_NAMES = tuple(sorted(depth.PROTOCOLS)) + ("depthcrafter",)
DEPTHCRAFTER_MAX_DEPTH = {"sintel": 70.0, "bonn": 10.0, "kitti": 80.0, "scannet": 10.0, "nyu": 10.0}  # eval.sh
SCORES = ("all", "observed")

# Published frame selections (eval_protocol.md section 4), by (protocol family, reader format).
FRAME_CUTS = {("monst3r", "bonn"): slice(30, 140), ("monst3r", "tum"): slice(0, 270, 3),
              ("depthcrafter", "bonn"): slice(30, 140), ("depthcrafter", "sintel"): slice(0, 50)}


def default_protocol(fmt: str) -> str:
  """MonST3R's protocol for its datasets: Sintel's (depth post-clipped at 70 m), else Bonn's (no post-clip)."""
  return "monst3r_sintel" if fmt == "sintel" else "monst3r_bonn"


def frame_cut(spec: str, protocol: str, fmt: str) -> slice:
  """The frame slice: 'auto' = the published one for (protocol family, format) or all; 'all'; 'START:STOP[:STEP]'."""
  if spec == "auto":
    family = "depthcrafter" if protocol == "depthcrafter" else "monst3r"
    return FRAME_CUTS.get((family, fmt), slice(None))
  if spec == "all":
    return slice(None)
  try:
    parts = [int(x) if x.strip() else None for x in spec.split(":")]
    if not 2 <= len(parts) <= 3:
      raise ValueError
  except ValueError:
    raise ValueError(f"--frames {spec!r}: expected 'auto', 'all' or START:STOP[:STEP] (Python slice syntax)") from None
  return slice(*parts)


def selected_frames(num_frames: int, spec: str, protocol: str, fmt: str) -> np.ndarray:
  """Indices into a sequence of num_frames frames that the evaluation uses (an empty selection is an error)."""
  frames = np.arange(num_frames)[frame_cut(spec, protocol, fmt)]
  if len(frames) == 0:
    raise ValueError(f"--frames {spec} selects none of the sequence's {num_frames} frames")
  return frames


def sparse_indices(n_frames: int, sparsity: float) -> np.ndarray:
  """The frames UMC's sparse task observes (first and last, the rest uniform; round(sparsity * F), at least 2)."""
  return np.flatnonzero(umc.observed_frames("sparse", n_frames, sparsity))


@dataclasses.dataclass(frozen=True)
class Settings:
  """One evaluation, checked whole on construction (each bad field is a ValueError naming its flag).

  The source is `predictions` (a folder of <sequence>.npz) or `oracle` (pointmaps built from the GT with `noise`
  sigma * |z| per coordinate and an `outliers` fraction of points scaled by U(0.3, 3)). `protocol` '' = the format's
  default; `score` '' = 'all' for predictions (the model generates the unobserved frames) and 'observed' for the
  oracle, which builds the observed frames only; `max_depth` overrides the protocol's depth cap (metres).
  """
  format: str
  predictions: str = ""
  oracle: bool = False
  noise: float = 0.0
  outliers: float = 0.0
  protocol: str = ""
  max_depth: float | None = None
  frames: str = "auto"
  sparsity: float = 1.0
  score: str = ""
  stride: int = 1
  iters: int = 300
  seed: int = 0

  def __post_init__(self):
    fix = lambda name, value: object.__setattr__(self, name, value)
    if self.format not in READERS:
      raise ValueError(f"--format {self.format!r}: expected one of {sorted(READERS)}")
    fix("protocol", self.protocol or default_protocol(self.format))
    if self.protocol not in PROTOCOL_NAMES:
      raise ValueError(f"--protocol {self.protocol!r}: expected one of {list(PROTOCOL_NAMES)}")
    if bool(self.predictions) == self.oracle:
      raise ValueError("give either --predictions PRED or --oracle (the source of the depth and cameras scored)")
    if not self.oracle and (self.noise or self.outliers):
      raise ValueError("--noise and --outliers perturb the oracle's pointmaps: they need --oracle")
    if not (self.noise >= 0 and math.isfinite(self.noise)) or not 0 <= self.outliers <= 1:
      raise ValueError(f"--noise must be >= 0 and --outliers a fraction in [0, 1], got {self.noise}, {self.outliers}")
    if not 0.0 < self.sparsity <= 1.0:
      raise ValueError(f"--sparsity must be in (0, 1], got {self.sparsity}")
    fix("score", self.score or ("observed" if self.oracle else "all"))
    if self.score not in SCORES:
      raise ValueError(f"--score {self.score!r}: expected one of {list(SCORES)}")
    if self.oracle and self.score == "all" and self.sparsity < 1:
      raise ValueError("--oracle builds pointmaps for the observed frames only, so it scores those: --score observed")
    if self.max_depth is not None and not (0 < self.max_depth < math.inf):
      raise ValueError(f"--max_depth must be a positive number of metres, got {self.max_depth}")
    if self.protocol == "depthcrafter" and self.max_depth is None and self.format not in DEPTHCRAFTER_MAX_DEPTH:
      raise ValueError(f"--protocol depthcrafter has no published depth cap for {self.format!r}; pass --max_depth")
    if self.stride < 1 or self.iters < 1:
      raise ValueError(f"--stride and --iters must be >= 1, got {self.stride}, {self.iters}")
    frame_cut(self.frames, self.protocol, self.format)  # a malformed --frames fails before any work

  @property
  def max_depth_used(self) -> float | None:
    """The depth cap the protocol scores under: the override, else DepthCrafter's per dataset or the protocol's."""
    if self.max_depth is not None:
      return self.max_depth
    if self.protocol == "depthcrafter":
      return DEPTHCRAFTER_MAX_DEPTH[self.format]
    return depth.PROTOCOLS[self.protocol]["max_depth"]


class Prediction(NamedTuple):
  """What is scored for one sequence, at its scored frames: depth [F, h, w] (any resolution), c2w [F, 4, 4] and
  optionally the pixels it covers, valid [F, h, w] (the rest is not scored)."""
  depth: np.ndarray
  c2w: np.ndarray
  valid: np.ndarray | None = None


class DepthScore(NamedTuple):
  metrics: dict[str, float]  # DEPTH_METRICS
  valid_pixels: int
  aligned: np.ndarray  # the aligned prediction [F, H, W]


class SequenceResult(NamedTuple):
  """One sequence's row; `mid_gt`, `mid_aligned` (the middle scored frame) and the trajectories are kept for plots."""
  metrics: dict[str, float | None]  # METRICS; the camera ones None when camera_skipped says why
  valid_pixels: int
  frames: int  # frames scored
  selected_frames: int  # frames of the selection (--frames)
  observed_frames: list[int]  # clip frame indices observed (by the model, or built by the oracle)
  camera_skipped: str
  mid_gt: np.ndarray
  mid_aligned: np.ndarray
  pred_c2w: np.ndarray
  gt_c2w: np.ndarray

  def to_json(self) -> dict:
    out = {**self.metrics, "valid_pixels": self.valid_pixels, "frames": self.frames,
           "selected_frames": self.selected_frames, "observed_frames": self.observed_frames}
    return {**out, "camera_skipped": self.camera_skipped} if self.camera_skipped else out


class Results(NamedTuple):
  data: str
  settings: Settings
  sequences: dict[str, SequenceResult]
  overall: dict[str, float | None]  # METRICS, aggregated as the protocol defines the dataset number

  def to_json(self) -> dict:
    return {"overall": self.overall, "sequences": {n: r.to_json() for n, r in self.sequences.items()},
            "settings": {"data": self.data, **dataclasses.asdict(self.settings)}}


def resize_bicubic(pred_fhw: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Per-frame bicubic resize to GT resolution (Pillow's cubic kernel; MonST3R uses OpenCV's, slightly different)."""
  from PIL import Image
  if pred_fhw.shape[1:] == tuple(hw):
    return pred_fhw.astype(np.float32)
  return np.stack([np.asarray(Image.fromarray(p.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.BICUBIC))
                   for p in pred_fhw])


def score_depth(pred_depth: np.ndarray, gt: np.ndarray, s: Settings) -> DepthScore:
  """Depth metrics of one sequence under s.protocol (pred at GT resolution; GT <= 0 invalid), in METRICS' names."""
  cap = s.max_depth_used
  if s.protocol == "depthcrafter":
    m, aligned = depth.depthcrafter_evaluation(1.0 / np.maximum(pred_depth, 1e-6), gt, cap, return_aligned=True)
    return DepthScore({FROM_DEPTHCRAFTER[k]: m[k] for k in FROM_DEPTHCRAFTER}, int(((gt > 1e-3) & (gt < cap)).sum()),
                      aligned)
  m, aligned = depth.depth_evaluation(pred_depth, gt, **{**depth.PROTOCOLS[s.protocol], "max_depth": cap})
  return DepthScore({FROM_MONST3R[k]: m[k] for k in FROM_MONST3R}, m["valid_pixels"], aligned)


def oracle_pointmaps(gt_depth, K, c2w, valid, noise: float, outliers: float, rng: np.random.Generator):
  """Pointmaps in frame 0's camera from GT depth, K and poses, perturbed: (xyz [F, H, W, 3], valid [F, H, W])."""
  xyz, ok = pointmaps_from_depth(gt_depth, K, c2w, valid)
  if noise > 0:
    xyz = xyz + noise * np.abs(xyz[..., 2:3]) * rng.normal(size=xyz.shape).astype(np.float32)
  if outliers > 0:
    hit = rng.random(ok.shape) < outliers
    xyz = np.where(hit[..., None], xyz * rng.uniform(0.3, 3.0, ok.shape)[..., None], xyz).astype(np.float32)
  return xyz, ok


def load_prediction(path: str, frames: np.ndarray, scored: np.ndarray, iters: int = 300) -> Prediction:
  """A saved prediction at the scored frames. The npz holds either every selected frame or exactly the scored ones,
  as `xyz` [F, H, W, 3] pointmaps in frame 0's camera (+ optional `valid`, `conf`; post-optimised here for `iters`)
  or `depth` [F, H, W] + `c2w` [F, 4, 4] (+ optional `valid`, `frame_index`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"missing prediction {path}: expected <sequence>.npz with `xyz` or `depth` + `c2w`")
  z = np.load(path)
  at = np.searchsorted(frames, scored)

  def pick(name, x):
    if x.shape[0] == len(frames):
      return x[at]
    if x.shape[0] == len(scored):
      return x
    raise ValueError(f"{path}: `{name}` has {x.shape[0]} frames; expected {len(frames)} (every frame of the selection "
                     f"{frames[0]}..{frames[-1]}) or {len(scored)} (the scored frames)")
  pred = {k: pick(k, z[k]) for k in z.files}
  if "frame_index" in pred and not np.array_equal(pred["frame_index"], scored):
    raise ValueError(f"{path} was predicted for other frames than this evaluation scores (its frames "
                     f"{pred['frame_index'][0]}..{pred['frame_index'][-1]}, here {scored[0]}..{scored[-1]}): use "
                     "the same --frames and --protocol in launch.predict and launch.evaluate")
  if "xyz" in pred:
    out = postopt.post_optimize(pred["xyz"], pred.get("valid"), pred.get("conf"),
                                cfg=postopt.PostOptConfig(iters=iters))
    return Prediction(np.asarray(out.depth), np.asarray(out.c2w))
  if "depth" in pred and "c2w" in pred:  # `valid`: the pixels it covers (launch.predict: the model's crop)
    return Prediction(pred["depth"], pred["c2w"], pred["valid"].astype(bool) if "valid" in pred else None)
  raise ValueError(f"{path} holds {sorted(pred)}; expected `xyz` or `depth` + `c2w`")


def score_sequence(pred: Prediction, gt_depth: np.ndarray, gt_valid: np.ndarray, gt_c2w: np.ndarray,
                   selected: np.ndarray, observed: np.ndarray, s: Settings) -> SequenceResult:
  """Scores a prediction against the GT of its scored frames (depth resized bicubically to GT resolution; only the
  pixels valid in both are scored). Cameras a sequence cannot be scored on (fewer than 3 frames, degenerate GT
  positions) are None, with the reason in camera_skipped."""
  hw = gt_depth.shape[1:]
  valid = gt_valid if pred.valid is None else gt_valid & resize_nearest(pred.valid, hw)
  gt = np.where(valid, gt_depth, 0.0)
  d = score_depth(resize_bicubic(np.asarray(pred.depth), hw), gt, s)
  try:
    cams, skipped = camera.camera_metrics(pred.c2w, gt_c2w), ""
  except ValueError as e:
    cams, skipped = dict.fromkeys(CAMERA_METRICS), str(e)
  mid = len(gt) // 2
  return SequenceResult({**d.metrics, **cams}, d.valid_pixels, len(gt), len(selected), [int(i) for i in observed],
                        skipped, gt[mid], d.aligned[mid], np.asarray(pred.c2w), np.asarray(gt_c2w))


def evaluate_sequence(name: str, clip, s: Settings, rng: np.random.Generator | None = None) -> SequenceResult:
  """One sequence of a reader (`open_clips`): its frames selected, its prediction loaded from s.predictions (or the
  oracle's built with `rng`, default from s.seed), GT subsampled by s.stride, scored."""
  rng = np.random.default_rng(s.seed) if rng is None else rng
  try:
    frames = selected_frames(clip.num_frames, s.frames, s.protocol, s.format)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
  observed = frames[sparse_indices(len(frames), s.sparsity)]
  scored = observed if s.score == "observed" else frames
  rec = clip.load(scored)
  gt, valid, k = rec.depth[:, ::s.stride, ::s.stride], rec.valid[:, ::s.stride, ::s.stride], rec.K.copy()
  k[:, :2] /= s.stride
  if s.oracle:
    xyz, ok = oracle_pointmaps(gt, k, rec.c2w, valid, s.noise, s.outliers, rng)
    out = postopt.post_optimize(xyz, ok, cfg=postopt.PostOptConfig(iters=s.iters), pp=k[0, :2, 2])
    pred = Prediction(np.asarray(out.depth), np.asarray(out.c2w))
  else:
    pred = load_prediction(os.path.join(s.predictions, f"{name}.npz"), frames, scored, s.iters)
  return score_sequence(pred, gt, valid, rec.c2w, frames, observed, s)


def aggregate(rows: list[SequenceResult], protocol: str) -> dict[str, float | None]:
  """The dataset number: depth as the protocol aggregates (MonST3R / Geo4D: valid-pixel-weighted; DepthCrafter: the
  unweighted mean over sequences), cameras as the unweighted mean over the sequences that have them (MonST3R's)."""
  if protocol == "depthcrafter":
    out = {k: float(np.mean([r.metrics[k] for r in rows])) for k in DEPTH_METRICS}
  else:
    out = depth.pixel_weighted_average([{**r.metrics, "valid_pixels": r.valid_pixels} for r in rows], DEPTH_METRICS)
  cams = [{k: r.metrics[k] for k in CAMERA_METRICS} for r in rows if not r.camera_skipped]
  return {**out, **(camera.mean_over_sequences(cams) if cams else dict.fromkeys(CAMERA_METRICS))}


def evaluate(data: str, s: Settings, progress: bool = True) -> Results:
  """Every sequence under `data` (one sequence if the reader opens it, else each sub-folder it opens; Sintel: the
  `training` folder) scored under s, and the dataset number."""
  if s.predictions and not os.path.isdir(s.predictions):
    raise FileNotFoundError(f"--predictions {s.predictions} is not a folder (of <sequence>.npz, as launch.predict "
                            "writes)")
  rng = np.random.default_rng(s.seed)
  rows = {name: evaluate_sequence(name, clip, s, rng)
          for name, clip in tqdm(open_clips(s.format, data), desc="sequences", disable=not progress)}
  return Results(data, s, rows, aggregate(list(rows.values()), s.protocol))
