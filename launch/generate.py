"""From an image, some frames, a video or a folder of frames, or a prompt alone, to a 4D scene a person can look at.

  python -m launch.generate --config=configs/one4d.py:variant=14b --workdir=runs/one4d --out=out/kitchen \\
      --config.model.checkpoint=ckpt/dit --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 \\
      --config.encoders.tokenizer=umt5-xxl-tokenizer --config.encoders.clip=ckpt/clip \\
      --image=kitchen.jpg --prompt="a kitchen counter, the camera moving left"

Quick start, no weights or files: python -m launch.generate --config=configs/one4d.py:variant=tiny --demo --out=out/demo
(a synthesised image through the tiny variant's random weights: noise, but every stage and output).

Input, at most one (UMC task in brackets): --image=FILE (image-to-4D: it is frame 0); --frames=A.png,B.png,C.png
--indices=0,40,80 (sparse: those images observed at those frame indices); --video=FILE.mp4 or --video=FOLDER (a
video file, or a folder of images in natural order: video-to-4D reconstruction of your own footage, every frame
observed, no depth or cameras needed; --start and --stride pick the frames); none (text-to-4D, --prompt). Frames:
--num_frames (default config.data.num_frames, 81; a video: as many as it has, up to that); the frames are
cover-resized and centre-cropped to --height x --width (default config.data's) as training saw them; a count other
than 1 + 4k is padded with copies of the last frame, which are dropped again; more than the model's window are
sampled in overlapping windows (--overlap) joined into frame 0's camera. The trained LoRA branches and links come
from the newest checkpoint of --workdir (launch.train) or from an adapter file, --lora (launch.export_lora); without
either the LoRA is fresh (the base model on RGB, links zero). Sampler: config.sample (the paper's 50 Euler steps, CFG
6 on both modalities, shift 5), or --sampler (euler, unipc: Wan2.1's default, dpmpp: DPM++ 2M), --steps, --guidance.
The pointmaps are then post-optimised into per-frame cameras and depth.

OUT (written whole or not at all; inputs are checked before any model loads, and non-finite cameras or an
all-invalid depth are an error, not an output): rgb.mp4, xyz.mp4 (pointmaps as colours), depth.mp4 (near bright),
pointmaps.npz, depth.npz (depth, valid, K, c2w), cameras.json (per frame K and camera-to-world; OpenCV axes, world =
frame 0's camera, pointmap units), scene.ply (coloured points), cameras.ply (frusta), summary.txt. Open the PLY files
in MeshLab, Blender or Open3D (README, Generate), or in the browser: --view serves OUT once written (launch.view).
"""

import datetime
import os
import shlex
import sys

import jax
import numpy as np
from absl import flags

from launch import cli
from one4d_jax import export, observations, pipeline
from one4d_jax.files import atomic_directory


def _indices(text) -> list[int]:
  try:
    return [int(i) for i in text]
  except ValueError:
    raise ValueError(f"--indices must be whole numbers separated by commas, got {','.join(text)}") from None


def check_request(c, out: str, image: str, frames, indices, video: str, start: int | None, stride: int | None,
                  height: int, width: int, workdir: str, lora: str, prompt: str, overwrite: bool, demo: bool = False):
  """The flag combinations and the config the inputs need, checked before anything is read; returns the config at
  the requested size."""
  if not out:
    raise ValueError("--out is required (a folder that does not exist yet, or --overwrite)")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
  given = [name for name, value in (("--image", image), ("--frames", frames), ("--video", video), ("--demo", demo))
           if value]
  if len(given) > 1:
    raise ValueError(f"give one input, found {' and '.join(given)}")
  if demo and (c.variant != "tiny" or c.model.checkpoint):
    raise ValueError("--demo runs the tiny variant on random weights: --config=configs/one4d.py:variant=tiny")
  if bool(frames) != bool(indices):
    raise ValueError("--frames and --indices go together: one frame index per image (e.g. --frames=a.png,b.png "
                     "--indices=0,40)")
  if (start is not None or stride is not None) and not video:
    raise ValueError("--start and --stride pick frames of --video; there is no --video")
  if workdir and lora:
    raise ValueError("give either --workdir (a training run) or --lora (an exported LoRA file), not both")
  c = c.copy_and_resolve_references()
  c.data.height, c.data.width = height or c.data.height, width or c.data.width
  if c.data.height % 16 or c.data.width % 16 or min(c.data.height, c.data.width) < 16:
    raise ValueError(f"--height and --width must be multiples of 16 (the VAE's 8x and the DiT's 2x2 patches), got "
                     f"{c.data.height}x{c.data.width}")
  if prompt and not c.encoders.t5:
    raise ValueError("a prompt needs a text encoder: set config.encoders.t5 and config.encoders.tokenizer")
  pipeline.require_weights(c)
  return c


def generate(c, out: str, *, image: str = "", frames=(), indices=(), video: str = "", start: int | None = None,
             stride: int | None = None, num_frames: int = 0, height: int = 0, width: int = 0, prompt: str = "",
             negative_prompt: str = "", sampler: str | None = None, steps: int | None = None,
             guidance: float | None = None, seed: int = 0,
             postopt_iters: int = 300, overlap: int | None = None, workdir: str = "", lora: str = "",
             overwrite: bool = False, fps: float = 16.0, command: str = "", progress: bool = True,
             demo: bool = False) -> export.Scene:
  """The whole command as a function (the command line wraps it; see the module docstring): every input checked,
  the model loaded, the clip sampled and post-optimised, OUT written (by process 0). Returns the scene written."""
  say = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
  c = check_request(c, out, image, frames, indices, video, start, stride, height, width, workdir, lora, prompt,
                    overwrite, demo)
  sc = pipeline.sampler_config(c, sampler=sampler, steps=steps, guidance=guidance)
  hw, count = (c.data.height, c.data.width), num_frames or c.data.num_frames
  if demo:
    obs = observations.from_demo(count, hw)
  elif image:
    obs = observations.from_image(image, count, hw)
  elif frames:
    obs = observations.from_frames(list(frames), _indices(indices), count, hw)
  elif video:
    obs = observations.from_video(video, hw, num_frames, start or 0, 1 if stride is None else stride,
                                  c.data.num_frames)
  else:
    obs = observations.from_text(count, hw)
  pipeline.check_workdir(workdir)
  pipeline.check_lora(c, lora)
  notes = [*obs.notes, observations.length_note(len(obs.frames), c.data.num_frames, overlap)]
  for line in notes:
    say(line)

  weights = c.model.checkpoint or "random (variant tiny)"
  lora_from = (f"the newest checkpoint of {workdir}" if workdir else f"the adapter file {lora}" if lora
               else "fresh (the base model on RGB, links zero)")
  say(f"loading: variant {c.variant}, DiT {weights}, LoRA and links {lora_from}")
  model = pipeline.load(c, workdir, lora)
  sample = pipeline.sample_clip(model, obs.frames, obs.observed, prompt, negative_prompt, sc, seed, overlap, progress)
  say(f"post-optimisation: {postopt_iters} iterations on {int(sample.valid.sum()):,} plausible points "
      f"({sample.valid.mean():.1%} of pixels)")
  cams = pipeline.cameras(sample, postopt_iters, progress)
  losses = np.asarray(cams.losses)
  residual = export.point_residual(sample.pointmaps, sample.valid, np.asarray(cams.depth), np.asarray(cams.K),
                                   np.asarray(cams.c2w))
  fitted = (f"post-optimisation: objective {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} iterations; "
            f"mean point residual {residual:.4f} (pointmap units; the scene spans [-1, 1])")
  say(fitted)
  scene = export.make_scene(sample.frames, sample.pointmaps, sample.valid, cams.depth, cams.K, cams.c2w,
                            obs.observed, obs.source)
  export.check_scene(scene)
  d = scene.depth[scene.depth_valid]
  summary = [
      f"One4D generate, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
      *([f"command: {command}"] if command else []),
      f"model: variant {c.variant}, {hw[0]}x{hw[1]} (HxW), window {c.data.num_frames} frames; DiT {weights}; LoRA "
      f"and links {lora_from}",
      *notes,
      f"observed frames: {np.flatnonzero(obs.observed).tolist()}",
      f"windows sampled (first frame, frames): {sample.windows}",
      f"prompt: {prompt!r}; negative prompt: {negative_prompt!r}",
      f"sampler: {sc.describe()}, seed {seed} (guidance on both modalities)",
      fitted,
      f"depth: {scene.depth_valid.mean():.1%} of pixels valid; {d.min():.4f}..{d.max():.4f}, median "
      f"{np.median(d):.4f} (pointmap units)",
  ]
  if jax.process_index() == 0:  # every process holds the same result
    say(f"writing: {out}")
    with atomic_directory(out, overwrite=overwrite) as tmp:
      names = export.write_scene(tmp, scene, summary, fps)
    say(f"wrote {out}: {len(scene.frames)} frames, cameras and depth (finite), "
        + ", ".join(f"{n} ({os.path.getsize(os.path.join(out, n)) / 1024:.0f} KiB)" for n in names))
  return scene


def define_flags():
  """Command-line flags, defined only when run as a program."""
  cli.define_model_flags()
  flags.DEFINE_string("out", None, "output folder (must not exist unless --overwrite)")
  flags.DEFINE_bool("overwrite", False, "replace an existing --out (only once the new one is complete)")
  flags.DEFINE_bool("demo", False, "the quick start: a synthesised image as frame 0, on the tiny variant's random "
                    "weights (outputs are noise; every stage and file of the pipeline runs)")
  flags.DEFINE_string("image", "", "image-to-4D: an image file, frame 0")
  flags.DEFINE_list("frames", [], "sparse frames: image files, observed at --indices")
  flags.DEFINE_list("indices", [], "the frame index of each --frames image, increasing, below --num_frames")
  flags.DEFINE_string("video", "", "video-to-4D: a video file (mp4, mov, ...) or a folder of images")
  flags.DEFINE_integer("start", None, "first frame of --video taken (default 0)")
  flags.DEFINE_integer("stride", None, "take every stride-th frame of --video (default 1)")
  flags.DEFINE_integer("num_frames", 0, "frames to generate (0: config.data.num_frames; --video: as many as it has, "
                       "up to that)")
  flags.DEFINE_integer("height", 0, "frame height, a multiple of 16 (0: config.data.height)")
  flags.DEFINE_integer("width", 0, "frame width, a multiple of 16 (0: config.data.width)")
  flags.DEFINE_string("prompt", "", "text prompt (needs config.encoders.t5)")
  flags.DEFINE_string("negative_prompt", "", "negative prompt for CFG ('' encodes to zeros)")
  flags.DEFINE_string("sampler", None, "euler (the paper's), unipc (Wan2.1's default) or dpmpp (DPM++ 2M) "
                      "(default config.sample.sampler)")
  flags.DEFINE_integer("steps", None, "sampling steps (default config.sample.steps)")
  flags.DEFINE_float("guidance", None, "CFG scale on both modalities (default config.sample.guidance; 1 = none)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_integer("postopt_iters", 300, "post-optimisation iterations")
  flags.DEFINE_integer("overlap", None, "frames shared by consecutive windows (default: a quarter of the window)")
  flags.DEFINE_float("fps", 16.0, "frame rate of the written videos (Wan's is 16)")
  flags.DEFINE_bool("view", False, "then serve OUT in the browser as launch.view does (port 8080; Ctrl-C stops)")
  cli.define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  cli.start_runtime(f)
  generate(f.config, f.out, image=f.image, frames=f.frames, indices=f.indices, video=f.video, start=f.start,
           stride=f.stride, num_frames=f.num_frames, height=f.height, width=f.width, prompt=f.prompt,
           negative_prompt=f.negative_prompt, sampler=f.sampler, steps=f.steps, guidance=f.guidance, seed=f.seed,
           postopt_iters=f.postopt_iters, overlap=f.overlap, workdir=f.workdir, lora=f.lora, overwrite=f.overwrite,
           fps=f.fps, command=shlex.join(["python", "-m", "launch.generate", *sys.argv[1:]]),
           progress=jax.process_index() == 0, demo=f.demo)
  if f.view and jax.process_index() == 0:
    from one4d_jax import viewer  # viser, only when asked for
    viewer.serve(export.read_scene(f.out))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
