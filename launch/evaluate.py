"""Evaluate video depth and cameras over a dataset, from saved predictions or from oracle (GT-built) pointmaps.

  PYTHONPATH=. python -m launch.evaluate --data ../shared/data/sevenscenes_redkitchen_60f --format sevenscenes \
      --out /tmp/eval_oracle --oracle --noise 0.02 --stride 8
  PYTHONPATH=. python -m launch.evaluate --data DATA/bonn --format bonn --out OUT --predictions PRED \
      --protocol monst3r_bonn

Datasets: DIR is one sequence if the reader opens it, otherwise every sub-folder the reader opens is a sequence (Sintel:
DIR is the `training` folder and sequences are the folders of DIR/depth). Predictions: PRED/<sequence>.npz holding
either `xyz` [F, H, W, 3] pointmaps in frame 0's camera (+ optional `valid`, `conf`), which go through
post-optimisation, or `depth` [F, H, W] + `c2w` [F, 4, 4]. Depth is resized bicubically to GT resolution (Pillow's
cubic kernel; MonST3R uses OpenCV's, which differs slightly) and scored per sequence with the chosen protocol; the
dataset number as the protocol defines it (below).
Frames: by default the published selection of the protocol family (eval_protocol.md section 4): MonST3R / Geo4D
Bonn [30:140], TUM-dynamics [::3][:90] (our reader associates RGB, depth and GT, prepare_tum.py only RGB and GT, so
the 90 frames can differ by an association), DepthCrafter Sintel [:50] and Bonn [30:140]; `--frames all` or
`--frames START:STOP[:STEP]` overrides it. Sparse-frame setting (--sparsity r < 1): round(r F) frames observed (at
least 2: first and last, the rest uniform). `--score all` (default) scores every frame of the selection: the model is
given the observed frames and generates the rest, so its prediction holds all F frames; `--score observed` scores the
observed frames only (a prediction of F frames is subsampled, one of the observed count is taken as is). Oracle
mode builds pointmaps for the observed frames only and scores those.
Protocols: the MonST3R / Geo4D settings of `one4d_jax.eval.depth.PROTOCOLS` (per-sequence alignment, dataset number =
valid-pixel-weighted mean), or `depthcrafter` (disparity-space least squares of 1/depth, per-frame metrics, unweighted
mean over sequences, depth cap by dataset: Sintel 70, Bonn 10, KITTI 80, ScanNet / NYU 10, else --max_depth).
Cameras: evo ATE / RPE-T / RPE-R (Sim(3)-aligned), unweighted mean over sequences.
Oracle: pointmaps from GT depth, K and poses (`pointmaps_from_depth`), Gaussian noise sigma * |z| per coordinate and a
fraction of outlier points scaled by U(0.3, 3); the principal point is taken from the GT K.
Outputs: OUT/results.json (overall + per sequence: abs_rel, delta_1.25, ate, rpe_t, rpe_r; metres, degrees),
OUT/table.md and OUT/plots/<sequence>_{depth_error,trajectory}.png, written together (atomically): an existing OUT
is an error unless --overwrite.
"""

import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from launch import cli
from one4d_jax.data.readers import open_clips
from one4d_jax.eval import camera, depth, protocol
from one4d_jax.files import atomic_directory
from one4d_jax.geometry import postopt
from one4d_jax.geometry.pointmaps import pointmaps_from_depth, resize_nearest

KEYS = ("abs_rel", "delta_1.25", "ate", "rpe_t", "rpe_r")
PROTOCOL_NAMES = sorted(depth.PROTOCOLS) + ["depthcrafter"]
DEPTHCRAFTER_MAX_DEPTH = {"sintel": 70.0, "bonn": 10.0, "kitti": 80.0, "scannet": 10.0, "nyu": 10.0}


def resize_bicubic(pred_fhw, hw):
  from PIL import Image
  if pred_fhw.shape[1:] == tuple(hw):
    return pred_fhw.astype(np.float32)
  return np.stack([np.asarray(Image.fromarray(p.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.BICUBIC))
                   for p in pred_fhw])


def oracle_pointmaps(rec, noise, outliers, rng):
  xyz, ok = pointmaps_from_depth(rec.depth, rec.K, rec.c2w, rec.valid)
  if noise > 0:
    xyz = xyz + noise * np.abs(xyz[..., 2:3]) * rng.normal(size=xyz.shape).astype(np.float32)
  if outliers > 0:
    hit = rng.random(ok.shape) < outliers
    xyz = np.where(hit[..., None], xyz * rng.uniform(0.3, 3.0, ok.shape)[..., None], xyz).astype(np.float32)
  return xyz, ok


def load_prediction(path, frames, scored):
  """The prediction's arrays at the scored frames: it holds either every selected frame or exactly the scored ones."""
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
  return {k: pick(k, z[k]) for k in z.files}


def score_depth(pred_depth, gt, args):
  """(row fields, aligned prediction) under the chosen protocol."""
  if args.protocol == "depthcrafter":
    cap = args.max_depth or DEPTHCRAFTER_MAX_DEPTH.get(args.format)
    if cap is None:
      raise ValueError(f"--protocol depthcrafter has no published depth cap for {args.format!r}; pass --max_depth")
    disparity = 1.0 / np.maximum(pred_depth, 1e-6)
    m, aligned = depth.depthcrafter_evaluation(disparity, gt, cap, return_aligned=True)
    return {"abs_rel": m["abs_relative_difference"], "delta_1.25": m["delta1_acc"],
            "valid_pixels": int(((gt > 1e-3) & (gt < cap)).sum())}, aligned
  kwargs = dict(depth.PROTOCOLS[args.protocol])
  if args.max_depth:
    kwargs["max_depth"] = args.max_depth
  m, aligned = depth.depth_evaluation(pred_depth, gt, **kwargs)
  return {"abs_rel": m["Abs Rel"], "delta_1.25": m["δ < 1.25"], "valid_pixels": m["valid_pixels"]}, aligned


def evaluate_sequence(name, clip, args, rng):
  try:
    frames = protocol.selected_frames(clip.num_frames, args.frames, args.protocol, args.format)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
  observed = frames[protocol.sparse_indices(len(frames), args.sparsity)]
  scored = observed if args.oracle or args.score == "observed" else frames
  rec = clip.load(scored)
  s = args.stride
  gt, valid, k = rec.depth[:, ::s, ::s], rec.valid[:, ::s, ::s], rec.K.copy()
  k[:, :2] /= s
  if args.oracle:
    rec = type(rec)(rec.frames[:, ::s, ::s], gt, valid, k, rec.c2w, rec.caption, rec.source, rec.name)
    xyz, ok = oracle_pointmaps(rec, args.noise, args.outliers, rng)
    out = postopt.post_optimize(xyz, ok, cfg=postopt.PostOptConfig(iters=args.iters), pp=k[0, :2, 2])
    pred_depth, pred_c2w = np.asarray(out.depth), np.asarray(out.c2w)
  else:
    pred = load_prediction(os.path.join(args.predictions, f"{name}.npz"), frames, scored)
    if "xyz" in pred:
      out = postopt.post_optimize(pred["xyz"], pred.get("valid"), pred.get("conf"),
                                  cfg=postopt.PostOptConfig(iters=args.iters))
      pred_depth, pred_c2w = np.asarray(out.depth), np.asarray(out.c2w)
    elif "depth" in pred and "c2w" in pred:
      pred_depth, pred_c2w = pred["depth"], pred["c2w"]
      if "valid" in pred:  # the pixels the prediction covers (launch.predict: the model's crop of each frame)
        valid = valid & resize_nearest(pred["valid"].astype(bool), gt.shape[1:])
    else:
      raise ValueError(f"{name}.npz holds {sorted(pred)}; expected `xyz` or `depth` + `c2w`")
    if "frame_index" in pred and not np.array_equal(pred["frame_index"], scored):
      raise ValueError(f"{name}.npz was predicted for other frames than this evaluation scores (its frames "
                       f"{pred['frame_index'][0]}..{pred['frame_index'][-1]}, here {scored[0]}..{scored[-1]}): use "
                       "the same --frames and --protocol in launch.predict and launch.evaluate")
    pred_depth = resize_bicubic(pred_depth, gt.shape[1:])
  gt_eval = np.where(valid, gt, 0.0)
  row, aligned = score_depth(pred_depth, gt_eval, args)
  row.update(frames=int(len(scored)), observed_frames=[int(i) for i in observed])
  try:
    row.update(camera.camera_metrics(pred_c2w, rec.c2w))
  except ValueError as e:
    row.update(ate=None, rpe_t=None, rpe_r=None, camera_skipped=str(e))
  return row, aligned, gt_eval, pred_c2w, rec.c2w


def save_plots(out_dir, name, aligned, gt, pred_c2w, gt_c2w):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(out_dir, exist_ok=True)
  mid = len(gt) // 2
  err = np.where(gt[mid] > 0, np.abs(aligned[mid] - gt[mid]) / np.where(gt[mid] > 0, gt[mid], 1), np.nan)
  fig, ax = plt.subplots(1, 3, figsize=(12, 3))
  for a, img, title in zip(ax, (gt[mid], aligned[mid], err), ("GT depth", "aligned prediction", "Abs Rel error")):
    im = a.imshow(img, cmap="magma" if title != "Abs Rel error" else "viridis")
    a.set_title(f"{title} (frame {mid})")
    a.axis("off")
    fig.colorbar(im, ax=a, fraction=0.046)
  fig.savefig(os.path.join(out_dir, f"{name}_depth_error.png"), dpi=80, bbox_inches="tight")
  plt.close(fig)
  if len(gt_c2w) >= 3:
    aligned_c2w = camera.align_trajectory(np.asarray(pred_c2w, np.float64), np.asarray(gt_c2w, np.float64))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(gt_c2w[:, 0, 3], gt_c2w[:, 2, 3], "k-", label="GT")
    ax.plot(aligned_c2w[:, 0, 3], aligned_c2w[:, 2, 3], "r--", label="estimate (Sim(3)-aligned)")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("z [m]")
    ax.axis("equal")
    ax.legend()
    fig.savefig(os.path.join(out_dir, f"{name}_trajectory.png"), dpi=80, bbox_inches="tight")
    plt.close(fig)


def overall(rows, protocol):
  """Dataset numbers: depth as the protocol aggregates (pixel-weighted, or DepthCrafter's mean over sequences),
  cameras as the unweighted mean over the sequences that have them."""
  if protocol == "depthcrafter":
    res = {k: float(np.mean([r[k] for r in rows])) for k in ("abs_rel", "delta_1.25")}
  else:
    per = [{"Abs Rel": r["abs_rel"], "δ < 1.25": r["delta_1.25"], "valid_pixels": r["valid_pixels"],
            **{k: 0.0 for k in depth.METRIC_KEYS if k not in ("Abs Rel", "δ < 1.25")}} for r in rows]
    agg = depth.pixel_weighted_average(per)
    res = {"abs_rel": agg["Abs Rel"], "delta_1.25": agg["δ < 1.25"]}
  cams = [{k: r[k] for k in ("ate", "rpe_t", "rpe_r")} for r in rows if r["ate"] is not None]
  res.update(camera.mean_over_sequences(cams) if cams else {"ate": None, "rpe_t": None, "rpe_r": None})
  return res


def markdown_table(results, title):
  """Shaped like One4D Tables 3-5: one row per method/setting, depth then camera columns; ATE and RPE-T in
  centimetres with two decimals (metres to three decimals print good results as 0.000); results.json keeps metres."""
  fmt = lambda v, scale=1.0, digits=3: "-" if v is None else f"{scale * v:.{digits}f}"
  lines = [f"### {title}", "", "| Setting | Abs Rel ↓ | δ<1.25 (%) ↑ | ATE (cm) ↓ | RPE-T (cm) ↓ | RPE-R (°) ↓ |",
           "|---|---|---|---|---|---|"]
  for name, r in [("**overall**", results["overall"])] + sorted(results["sequences"].items()):
    lines.append(f"| {name} | {fmt(r['abs_rel'])} | {fmt(r['delta_1.25'], 100, 1)} | {fmt(r['ate'], 100, 2)} | "
                 f"{fmt(r['rpe_t'], 100, 2)} | {fmt(r['rpe_r'], 1, 3)} |")
  return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    """A bad flag is one line and exit status 2, as in the absl launchers (launch.cli)."""
    print(f"error: {message} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
  p = _Parser(description=__doc__.split("\n")[0])
  p.add_argument("--data", required=True)
  p.add_argument("--format", required=True, help="reader format name (one4d_jax.data.readers.READERS)")
  p.add_argument("--out", required=True)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--predictions")
  src.add_argument("--oracle", action="store_true")
  p.add_argument("--noise", type=float, default=0.0)
  p.add_argument("--outliers", type=float, default=0.0)
  p.add_argument("--protocol", default=None, choices=PROTOCOL_NAMES,
                 help="default: monst3r_sintel for sintel, monst3r_bonn otherwise")
  p.add_argument("--max_depth", type=float, default=None, help="override the protocol's depth cap (metres)")
  p.add_argument("--frames", default="auto", help="auto (published selection), all, or START:STOP[:STEP]")
  p.add_argument("--sparsity", type=float, default=1.0, help="1.0 = full video; 0.5 ... 0.03 = sparse frames")
  p.add_argument("--score", choices=("all", "observed"), default="all",
                 help="sparse setting: score every frame of the selection or only the observed ones")
  p.add_argument("--stride", type=int, default=1, help="pixel subsampling of GT (oracle mode: keeps CPU runs small)")
  p.add_argument("--iters", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (only once the new one is complete)")
  args = p.parse_args(argv)
  args.protocol = args.protocol or protocol.default_protocol(args.format)
  if not 0.0 < args.sparsity <= 1.0:
    p.error(f"--sparsity must be in (0, 1], got {args.sparsity}")
  protocol.frame_cut(args.frames, args.protocol, args.format)  # a malformed --frames fails before any work
  if os.path.exists(args.out) and not args.overwrite:
    p.error(f"{args.out} exists; pass --overwrite to replace it")
  rng = np.random.default_rng(args.seed)
  seqs = open_clips(args.format, args.data)
  mode = "oracle" if args.oracle else "predictions"
  scored = "observed" if args.oracle else args.score  # oracle runs score the frames they observe
  title = f"{args.format} ({mode}, protocol {args.protocol}, sparsity {args.sparsity}, score {scored})"
  with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
    rows = {}
    for name, clip in tqdm(seqs, desc="sequences"):
      row, aligned, gt, pred_c2w, gt_c2w = evaluate_sequence(name, clip, args, rng)
      rows[name] = row
      save_plots(os.path.join(tmp, "plots"), name, aligned, gt, pred_c2w, gt_c2w)
    results = {"overall": overall(list(rows.values()), args.protocol), "sequences": rows, "settings": vars(args)}
    with open(os.path.join(tmp, "results.json"), "w") as f:
      json.dump(results, f, indent=1, ensure_ascii=False)
    with open(os.path.join(tmp, "table.md"), "w") as f:
      f.write(markdown_table(results, title))
  print(markdown_table(results, title))
  return results


if __name__ == "__main__":
  try:
    main()
  except cli.USER_ERRORS as e:  # a bad path, format or prediction: one line (ONE4D_TRACEBACK=1 shows the traceback)
    if os.environ.get("ONE4D_TRACEBACK"):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
