"""Generate or reconstruct a 4D clip: RGB frames, XYZ pointmaps, then cameras and depth by post-optimisation.

  python -m launch.sample --config=configs/one4d.py:variant=14b --workdir=runs/one4d --out=out/kitchen \\
      --config.model.checkpoint=ckpt/dit --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 \\
      --config.encoders.tokenizer=umt5-xxl-tokenizer --config.encoders.clip=ckpt/clip \\
      --input=data/kitchen --format=clipfolder --task=sparse --sparsity=0.1 --prompt="a kitchen counter"

Tasks (UMC): `single_image` (image-to-4D: frame 0 of --input, or an image file), `sparse` (first, last and uniform
frames, --sparsity), `full_video` (video-to-4D reconstruction), `text` (no --input). The trained LoRA branches and
links come from the newest checkpoint of --workdir (launch.train). The sampler is config.sample: the paper's 50 Euler
steps, CFG 6 on both modalities, shift 5 (e.g. `--config.sample.steps=20 --config.sample.guidance=4`). Frames:
--num_frames (default config.data.num_frames, 81), or every frame of a shorter --input; a count other than 1 + 4k is
padded with copies of the last frame, and more than the model's window are sampled in windows overlapping by
--overlap frames whose pointmaps are joined into frame 0's camera before the post-optimisation
(one4d_jax.geometry.windows). OUT (written whole or not at all) holds `sample.npz`: `frames`
[F, H, W, 3] uint8, `pointmaps` [F, H, W, 3] in [-1, 1] (frame 0's camera), `valid` [F, H, W] (the plausible points
the post-optimisation used), `depth` [F, H, W], `K` [F, 3, 3], `c2w` [F, 4, 4] (in pointmap units), `observed` [F]
bool; plus `frames/NNNNN.png`.
"""

import os

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from launch import cli
from one4d_jax import pipeline, umc
from one4d_jax import sample as sample_lib
from one4d_jax.data.readers import open_clip
from one4d_jax.files import atomic_directory


def frame_count(path: str, fmt: str, num_frames: int) -> int:
  """Frames to generate: num_frames (--num_frames, else config.data.num_frames), or all of a shorter clip (padded
  to 1 + 4k inside, see one4d_jax.geometry.windows); more than the model's window are sampled in overlapping
  windows."""
  if not path or os.path.isfile(path):
    return num_frames
  clip = open_clip(fmt, path)
  if clip.num_frames < 1:
    raise ValueError(f"{path} has no frames")
  return min(num_frames, clip.num_frames)


def input_frames(path: str, fmt: str, num_frames: int, hw: tuple[int, int]) -> np.ndarray:
  """uint8 [F, H, W, 3] at the model's resolution (cover-resize, centre crop): the first F frames of a clip, or one
  image file repeated (only its frame 0 is observed by single_image)."""
  if os.path.isfile(path):
    from PIL import Image
    frames = np.asarray(Image.open(path).convert("RGB"))[None]
  else:
    frames = open_clip(fmt, path).load(np.arange(num_frames)).frames
  frames = pipeline.fit_frames(frames, hw)
  return np.broadcast_to(frames, (num_frames, *frames.shape[1:])) if len(frames) == 1 else frames


def generate(c, workdir: str, task: str, input_path: str = "", fmt: str = "clipfolder", sparsity: float = 0.1,
             prompt: str = "", negative_prompt: str = "", sc: sample_lib.SamplerConfig | None = None, seed: int = 0,
             postopt_iters: int = 300, num_frames: int = 0, overlap: int | None = None, progress: bool = True) -> dict:
  """The whole path as a function (the command line wraps it): returns the arrays written to sample.npz. `sc`:
  config.sample unless given. Inputs are checked before any model loads."""
  if task != "text" and not input_path:
    raise ValueError(f"--task={task} needs --input (a clip or an image file)")
  if prompt and not c.encoders.t5:
    raise ValueError("a prompt needs a text encoder: set config.encoders.t5 and config.encoders.tokenizer")
  sc = sc or pipeline.sampler_config(c)
  f = frame_count(input_path, fmt, num_frames or c.data.num_frames)
  pipeline.check_workdir(workdir)
  observed = umc.observed_frames(task, f, sparsity if task == "sparse" else None)
  hw = (c.data.height, c.data.width)
  frames = input_frames(input_path, fmt, f, hw) if input_path else np.zeros((f, *hw, 3), np.uint8)
  if progress and input_path and not os.path.isfile(input_path):
    print(f"input: frames 0..{f - 1} of {input_path}, {int(observed.sum())} observed ({task})", flush=True)
  model = pipeline.load(c, workdir)
  sample = pipeline.sample_clip(model, frames, observed, prompt, negative_prompt, sc, seed, overlap, progress)
  cams = pipeline.cameras(sample, postopt_iters)
  return {"frames": sample.frames, "pointmaps": sample.pointmaps, "valid": sample.valid,
          "depth": np.asarray(cams.depth), "K": np.asarray(cams.K), "c2w": np.asarray(cams.c2w), "observed": observed}


def write(out: str, result: dict, overwrite: bool = False) -> None:
  from PIL import Image
  with atomic_directory(out, overwrite=overwrite) as tmp:
    np.savez(os.path.join(tmp, "sample.npz"), **result)
    os.makedirs(os.path.join(tmp, "frames"))
    for i, frame in enumerate(result["frames"]):
      Image.fromarray(frame).save(os.path.join(tmp, "frames", f"{i:05d}.png"))


def define_flags():
  """Command-line flags, defined only when run as a program (so launch modules can import each other)."""
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_string("workdir", "", "training run whose newest checkpoint holds the LoRA and links "
                      "('' = freshly initialised: the base model on RGB, links zero)")
  flags.DEFINE_string("out", None, "output folder (must not exist unless --overwrite)")
  flags.DEFINE_string("input", "", "a clip readable by --format, or an image file (single_image)")
  flags.DEFINE_string("format", "clipfolder", "reader format of --input (one4d_jax.data.READERS)")
  flags.DEFINE_enum("task", "single_image", list(umc.TASKS), "UMC task")
  flags.DEFINE_float("sparsity", 0.1, "observed fraction of frames for --task=sparse")
  flags.DEFINE_string("prompt", "", "text prompt (needs config.encoders.t5)")
  flags.DEFINE_string("negative_prompt", "", "negative prompt for CFG ('' encodes to zeros)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_integer("postopt_iters", 300, "post-optimisation iterations")
  flags.DEFINE_integer("num_frames", 0, "frames to generate (0: config.data.num_frames; a shorter --input clip: all "
                       "its frames); longer than the model's window: overlapping windows joined in post-optimisation")
  flags.DEFINE_integer("overlap", None, "frames shared by consecutive windows (default: a quarter of the window, "
                       "20 of 81)")
  flags.DEFINE_bool("overwrite", False, "replace an existing --out")
  cli.define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.out:
    raise app.UsageError("--out is required")
  if os.path.exists(f.out) and not f.overwrite:
    raise app.UsageError(f"{f.out} exists; pass --overwrite to replace it")
  sc = pipeline.sampler_config(f.config)
  cli.start_runtime(f)
  result = generate(f.config, f.workdir, f.task, f.input, f.format, f.sparsity, f.prompt, f.negative_prompt, sc,
                    f.seed, f.postopt_iters, f.num_frames, f.overlap, progress=jax.process_index() == 0)
  if jax.process_index() == 0:  # every process holds the same result
    write(f.out, result, f.overwrite)
    print(f"wrote {f.out}: {len(result['frames'])} frames, pointmaps, cameras")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
