"""Evaluate video depth and cameras over a dataset, from saved predictions or from oracle (GT-built) pointmaps.

  PYTHONPATH=. python -m launch.evaluate --data=../shared/data/sevenscenes_redkitchen_60f --format=sevenscenes \
      --out=/tmp/eval_oracle --oracle --noise=0.02 --stride=8
  PYTHONPATH=. python -m launch.evaluate --data=DATA/bonn --format=bonn --out=OUT --predictions=PRED \
      --protocol=monst3r_bonn

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
least 2: first and last, the rest uniform). `--score all` (the default for predictions) scores every frame of the
selection: the model is given the observed frames and generates the rest, so its prediction holds all F frames;
`--score observed` scores the observed frames only (a prediction of F frames is subsampled, one of the observed count
is taken as is). Oracle mode builds pointmaps for the observed frames only and scores those (its default --score).
Protocols: the MonST3R / Geo4D settings of `one4d_jax.eval.depth.PROTOCOLS` (per-sequence alignment, dataset number =
valid-pixel-weighted mean), or `depthcrafter` (disparity-space least squares of 1/depth, per-frame metrics, unweighted
mean over sequences, depth cap by dataset: Sintel 70, Bonn 10, KITTI 80, ScanNet / NYU 10, else --max_depth).
Cameras: evo ATE / RPE-T / RPE-R (Sim(3)-aligned), unweighted mean over sequences.
Oracle: pointmaps from GT depth, K and poses (`pointmaps_from_depth`), Gaussian noise sigma * |z| per coordinate and a
fraction of outlier points scaled by U(0.3, 3); the principal point is taken from the GT K.
Outputs: OUT/results.json (overall + per sequence: abs_rel, delta_1.25, ate, rpe_t, rpe_r; metres, degrees),
OUT/table.md (ATE and RPE-T in mm; the title says which frames were scored) and
OUT/plots/<sequence>_{depth_error,trajectory}.png, written together (atomically): an existing OUT
is an error unless --overwrite.
Library: one4d_jax.eval.protocol (settings, scoring, aggregation) and one4d_jax.eval.report (the outputs).
"""

import os

from absl import flags

from launch import cli
from one4d_jax.data.readers import READERS
from one4d_jax.eval import protocol, report


def define_flags():
  """Command-line flags, defined only when run as a program."""
  flags.DEFINE_string("data", None, "the dataset: one sequence, or a folder of them (Sintel: the `training` folder)")
  flags.DEFINE_enum("format", None, sorted(READERS), "reader format of --data")
  flags.DEFINE_string("out", None, "output folder: results.json, table.md, plots/ (must not exist unless --overwrite)")
  flags.DEFINE_string("predictions", "", "folder of <sequence>.npz predictions (launch.predict's --out)")
  flags.DEFINE_bool("oracle", False, "score pointmaps built from the GT instead of predictions")
  flags.DEFINE_float("noise", 0.0, "oracle: Gaussian noise sigma * |z| per coordinate")
  flags.DEFINE_float("outliers", 0.0, "oracle: fraction of points scaled by U(0.3, 3)")
  flags.DEFINE_enum("protocol", None, list(protocol.PROTOCOL_NAMES),
                    "depth protocol; none: monst3r_sintel for sintel, monst3r_bonn otherwise")
  flags.DEFINE_float("max_depth", None, "override the protocol's depth cap (metres)")
  flags.DEFINE_string("frames", "auto", "auto (the protocol's published selection), all, or START:STOP[:STEP]")
  flags.DEFINE_float("sparsity", 1.0, "observed fraction of frames: 1.0 = full video; 0.5 ... 0.03 = sparse")
  flags.DEFINE_enum("score", None, list(protocol.SCORES), "score every selected frame or the observed ones only; "
                    "none: all for predictions, observed for the oracle (it builds only those)")
  flags.DEFINE_integer("stride", 1, "pixel subsampling of GT (oracle mode: keeps CPU runs small)")
  flags.DEFINE_integer("iters", 300, "post-optimisation iterations (oracle, and `xyz` predictions)")
  flags.DEFINE_integer("seed", 0, "oracle noise seed")
  flags.DEFINE_bool("overwrite", False, "replace an existing --out (only once the new one is complete)")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every input is a flag (--help lists them)")
  f = flags.FLAGS
  for name in ("data", "format", "out"):
    if not f[name].value:
      raise ValueError(f"--{name} is required")
  settings = protocol.Settings(f.format, f.predictions, f.oracle, f.noise, f.outliers, f.protocol or "", f.max_depth,
                               f.frames, f.sparsity, f.score or "", f.stride, f.iters, f.seed)
  if os.path.exists(f.out) and not f.overwrite:
    raise FileExistsError(f"{f.out} exists; pass --overwrite to replace it")
  print(report.write(f.out, protocol.evaluate(f.data, settings), f.overwrite))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
