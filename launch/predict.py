"""Run One4D over an evaluation set and write the predictions `launch.evaluate --predictions` scores.

  python -m launch.predict --config=configs/one4d.py:variant=14b --workdir=runs/one4d --data=DATA/bonn \\
      --format=bonn --protocol=monst3r_bonn --task=full_video --out=PRED --config.model.checkpoint=ckpt/dit ...
  python -m launch.evaluate --data=DATA/bonn --format=bonn --protocol=monst3r_bonn --predictions=PRED --out=EVAL

The LoRA and links come from the newest checkpoint of --workdir, or from an adapter file of launch.export_lora
(--lora=FILE instead of --workdir).

Sequences are found as launch.evaluate finds them, and each uses the frames its evaluation selects (--frames and
--protocol mean what they mean there: one4d_jax.eval.protocol). The frames are cover-resized and centre-cropped to the
model's size as in training; the task observes all of them (`full_video`) or round(r F), first and last included
(`sparse`, --sparsity r, as launch.evaluate --sparsity r); clips of other lengths than the model's window are padded
or sampled in overlapping windows (one4d_jax.geometry.windows) and post-optimised into one trajectory, sampled as
config.sample says (--sampler picks the solver: euler, unipc or dpmpp; --config.sample.steps, ...). Predictions
are then mapped back to the dataset's pixels: depth by the inverse resize-and-crop (bilinear), `valid` marking the
pixels inside the model's crop (the rest has no prediction and is not scored), K in the dataset's pixels.

PRED (written whole or not at all): `<sequence>.npz` with depth [F, H, W] float32, valid [F, H, W] bool, c2w
[F, 4, 4] (frame 0's camera, pointmap units), K [F, 3, 3], frame_index [F] (into the sequence), observed [F] bool;
`predict.json` with the settings and per-sequence windows.
"""

import contextlib
import json
import os

import jax
import numpy as np
from absl import flags
from tqdm import tqdm

from launch import cli
from one4d_jax import pipeline, umc
from one4d_jax import sample as sample_lib
from one4d_jax.data.readers import READERS, open_clips
from one4d_jax.eval import protocol
from one4d_jax.files import atomic_directory
from one4d_jax.geometry import pointmaps as pm


def predict_sequence(model: pipeline.Model, clip, frames: np.ndarray, task: str, sparsity: float,
                     sc: sample_lib.SamplerConfig, seed: int, postopt_iters: int, overlap: int | None,
                     progress: bool) -> tuple[dict, list]:
  """The prediction arrays of one sequence's selected `frames`, at the dataset's resolution, and its windows."""
  observed = umc.observed_frames(task, len(frames), sparsity if task == "sparse" else None)
  images = clip.load(frames).frames
  src_hw = images.shape[1:3]
  resized = pm.cover_size(src_hw, model.hw)
  top, left = pm.center_crop_offsets(resized, model.hw)
  sample = pipeline.sample_clip(model, pm.resize_crop_frames(images, resized, top, left, model.hw), observed,
                                sc=sc, seed=seed, overlap=overlap, progress=progress)
  cams = pipeline.cameras(sample, postopt_iters, progress)
  pred_depth, covered = pm.uncrop_depth(np.asarray(cams.depth), src_hw, resized, top, left)
  return {"depth": pred_depth, "valid": covered, "c2w": np.asarray(cams.c2w, np.float32),
          "K": pm.uncrop_intrinsics(np.asarray(cams.K), src_hw, resized, top, left).astype(np.float32),
          "frame_index": frames.astype(np.int64), "observed": observed}, sample.windows


def predict(c, workdir: str, data: str, fmt: str, out: str, task: str = "full_video", sparsity: float = 1.0,
            frames: str = "auto", protocol_name: str = "",
            sc: sample_lib.SamplerConfig | None = None, seed: int = 0, postopt_iters: int = 300,
            overlap: int | None = None, overwrite: bool = False, progress: bool = True, lora: str = "") -> dict:
  """Predictions for every sequence of `data` into `out` (see the module docstring), sampled with `sc` (config.sample
  unless given); inputs are checked before any model loads. Returns {sequence: windows sampled}."""
  sc = sc or pipeline.sampler_config(c)
  if task not in ("full_video", "sparse"):
    raise ValueError(f"--task must be full_video or sparse (the evaluated settings), got {task!r}")
  if not 0.0 < sparsity <= 1.0:
    raise ValueError(f"--sparsity must be in (0, 1], got {sparsity}")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  protocol_name = protocol_name or protocol.default_protocol(fmt)
  sequences = open_clips(fmt, data)
  selections = {name: protocol.selected_frames(clip.num_frames, frames, protocol_name, fmt) for name, clip in sequences}
  pipeline.check_workdir(workdir)
  pipeline.check_lora(c, lora)
  model = pipeline.load(c, workdir, lora)
  report = {}
  writer = atomic_directory(out, overwrite=overwrite) if jax.process_index() == 0 else contextlib.nullcontext()
  with writer as tmp:  # every process samples alike; process 0 writes
    for name, clip in tqdm(sequences, desc="sequences", disable=not progress):
      arrays, spans = predict_sequence(model, clip, selections[name], task, sparsity, sc, seed, postopt_iters,
                                       overlap, progress)
      if tmp:
        np.savez(os.path.join(tmp, f"{name}.npz"), **arrays)
      report[name] = {"frames": len(arrays["frame_index"]), "windows": [list(w) for w in spans],
                      "observed": int(arrays["observed"].sum()),
                      "covered": float(arrays["valid"].mean())}
    settings = {"workdir": workdir, "lora": lora, "data": data, "format": fmt, "task": task, "sparsity": sparsity,
                "frames": frames, "protocol": protocol_name, "sampler": sc.sampler, "steps": sc.steps,
                "guidance": sc.guidance,
                "shift": sc.shift, "seed": seed, "postopt_iters": postopt_iters, "overlap": overlap,
                "model_hw": list(model.hw), "max_frames": model.max_frames}
    if tmp:
      with open(os.path.join(tmp, "predict.json"), "w") as f:
        json.dump({"settings": settings, "sequences": report}, f, indent=1)
  return report


def define_flags():
  cli.define_model_flags()
  flags.DEFINE_string("data", None, "the evaluation set: one sequence, or a folder of them (as launch.evaluate)")
  flags.DEFINE_enum("format", None, sorted(READERS), "reader format of --data")
  flags.DEFINE_string("out", None, "predictions folder (must not exist unless --overwrite)")
  flags.DEFINE_enum("task", "full_video", ["full_video", "sparse"], "UMC task: every frame observed, or --sparsity")
  flags.DEFINE_float("sparsity", 1.0, "observed fraction of frames for --task=sparse (as launch.evaluate)")
  flags.DEFINE_string("frames", "auto", "auto (the protocol's published selection), all, or START:STOP[:STEP]")
  flags.DEFINE_enum("protocol", None, list(protocol.PROTOCOL_NAMES),
                    "the evaluation protocol whose frame selection to predict (default: as launch.evaluate's)")
  flags.DEFINE_string("sampler", None, "euler (the paper's), unipc (Wan2.1's default) or dpmpp (DPM++ 2M) "
                      "(default config.sample.sampler)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_integer("postopt_iters", 300, "post-optimisation iterations")
  flags.DEFINE_integer("overlap", None, "frames shared by consecutive windows (default: a quarter of the window)")
  flags.DEFINE_bool("overwrite", False, "replace an existing --out (only once the new one is complete)")
  cli.define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  for name in ("data", "format", "out"):
    if not f[name].value:
      raise ValueError(f"--{name} is required")
  cli.start_runtime(f)
  report = predict(f.config, f.workdir, f.data, f.format, f.out, f.task, f.sparsity, f.frames, f.protocol or "",
                   pipeline.sampler_config(f.config, sampler=f.sampler), f.seed, f.postopt_iters, f.overlap,
                   f.overwrite, progress=jax.process_index() == 0, lora=f.lora)
  frames = sum(r["frames"] for r in report.values())
  print(f"wrote {f.out}: {len(report)} sequences, {frames} frames of depth and cameras (finite)")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
