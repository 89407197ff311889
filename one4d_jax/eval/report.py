"""An evaluation's outputs: results.json (metres, degrees), a markdown table shaped like One4D's Tables 3-5 and plots
per sequence, written together into one folder that appears whole or not at all."""

import json
import os

import numpy as np

from one4d_jax.eval import camera
from one4d_jax.eval.protocol import Results, SequenceResult
from one4d_jax.files import atomic_directory


def title(results: Results) -> str:
  """What was evaluated, and truthfully which frames were scored: all of the selection's, or the observed ones."""
  s, rows = results.settings, list(results.sequences.values())
  scored, selected = sum(r.frames for r in rows), sum(r.selected_frames for r in rows)
  which = (f"all {selected} selected frames scored" if scored == selected
           else f"observed frames scored: {scored} of {selected} selected")
  return (f"{s.format} ({'oracle' if s.oracle else 'predictions'}, protocol {s.protocol}, frames {s.frames}, "
          f"sparsity {s.sparsity}; {which}, {len(rows)} sequence{'s' if len(rows) != 1 else ''})")


def markdown_table(results: Results) -> str:
  """One row for the dataset then one per sequence: depth then camera columns. ATE and RPE-T in millimetres with two
  decimals (an oracle's 0.2 mm would print as 0.00 in centimetres); results.json keeps metres."""
  fmt = lambda v, scale=1.0, digits=3: "-" if v is None else f"{scale * v:.{digits}f}"
  header = "| Setting | Abs Rel ↓ | δ<1.25 (%) ↑ | ATE (mm) ↓ | RPE-T (mm) ↓ | RPE-R (°) ↓ |"
  lines = [f"### {title(results)}", "", header, "|---|---|---|---|---|---|"]
  rows = [("**overall**", results.overall)] + sorted((n, r.metrics) for n, r in results.sequences.items())
  for name, m in rows:
    lines.append(f"| {name} | {fmt(m['abs_rel'])} | {fmt(m['delta_1.25'], 100, 1)} | {fmt(m['ate'], 1000, 2)} | "
                 f"{fmt(m['rpe_t'], 1000, 2)} | {fmt(m['rpe_r'])} |")
  return "\n".join(lines) + "\n"


def save_plots(out_dir: str, name: str, r: SequenceResult) -> None:
  """<name>_depth_error.png (GT, aligned prediction and Abs Rel error of the middle scored frame) and, with 3 frames
  or more, <name>_trajectory.png (x-z positions, the estimate Sim(3)-aligned to GT)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(out_dir, exist_ok=True)
  gt, pred = r.mid_gt, r.mid_aligned
  err = np.where(gt > 0, np.abs(pred - gt) / np.where(gt > 0, gt, 1), np.nan)
  mid = r.frames // 2
  fig, ax = plt.subplots(1, 3, figsize=(12, 3))
  for a, img, label, cmap in zip(ax, (gt, pred, err), ("GT depth", "aligned prediction", "Abs Rel error"),
                                 ("magma", "magma", "viridis")):
    im = a.imshow(img, cmap=cmap)
    a.set_title(f"{label} (scored frame {mid})")
    a.axis("off")
    fig.colorbar(im, ax=a, fraction=0.046)
  fig.savefig(os.path.join(out_dir, f"{name}_depth_error.png"), dpi=80, bbox_inches="tight")
  plt.close(fig)
  if len(r.gt_c2w) >= 3:
    aligned_c2w = camera.align_trajectory(np.asarray(r.pred_c2w, np.float64), np.asarray(r.gt_c2w, np.float64))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(r.gt_c2w[:, 0, 3], r.gt_c2w[:, 2, 3], "k-", label="GT")
    ax.plot(aligned_c2w[:, 0, 3], aligned_c2w[:, 2, 3], "r--", label="estimate (Sim(3)-aligned)")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("z [m]")
    ax.axis("equal")
    ax.legend()
    fig.savefig(os.path.join(out_dir, f"{name}_trajectory.png"), dpi=80, bbox_inches="tight")
    plt.close(fig)


def write(out: str, results: Results, overwrite: bool = False) -> str:
  """OUT/results.json, OUT/table.md and OUT/plots/<sequence>_{depth_error,trajectory}.png, all at once (an existing
  OUT is an error unless `overwrite`, and is replaced only once the new one is complete). Returns the table."""
  table = markdown_table(results)
  with atomic_directory(out, overwrite=overwrite) as tmp:
    for name, r in results.sequences.items():
      save_plots(os.path.join(tmp, "plots"), name, r)
    with open(os.path.join(tmp, "results.json"), "w") as f:
      json.dump(results.to_json(), f, indent=1, ensure_ascii=False)
    with open(os.path.join(tmp, "table.md"), "w") as f:
      f.write(table)
  return table
