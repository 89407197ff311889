"""Generate or reconstruct a 4D clip: RGB frames, XYZ pointmaps, then cameras and depth by post-optimisation.

  python -m launch.sample --config=configs/one4d.py:variant=14b --workdir=runs/one4d --out=out/kitchen \\
      --config.model.checkpoint=ckpt/dit --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 \\
      --config.encoders.tokenizer=umt5-xxl-tokenizer --config.encoders.clip=ckpt/clip \\
      --input=data/kitchen --format=clipfolder --task=sparse --sparsity=0.1 --prompt="a kitchen counter"

Tasks (UMC): `single_image` (image-to-4D: frame 0 of --input, or an image file), `sparse` (first, last and uniform
frames, --sparsity), `full_video` (video-to-4D reconstruction), `text` (no --input). The trained LoRA branches and
links come from the newest checkpoint of --workdir (launch.train). Defaults follow the paper: 50 Euler steps, CFG 6
on both modalities, shift 5. OUT (written whole or not at all) holds `sample.npz`: `frames` [F, H, W, 3] uint8,
`pointmaps` [F, H, W, 3] in [-1, 1] (frame 0's camera), `depth` [F, H, W], `K` [F, 3, 3], `c2w` [F, 4, 4] (in
pointmap units), `observed` [F] bool; plus `frames/NNNNN.png`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from jax.experimental import multihost_utils
from ml_collections import config_flags

from configs import one4d as one4d_config_lib
from launch import cli
from launch.train import define_distributed_flags, frozen_params, start_runtime
from one4d_jax import sample as sample_lib
from one4d_jax import sharding, umc
from one4d_jax.data import pipeline
from one4d_jax.data.readers import open_clip
from one4d_jax.files import atomic_directory
from one4d_jax.geometry import pointmaps as pm
from one4d_jax.geometry import postopt
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.models.wan import vae as vae_lib
from one4d_jax.train import inputs
from one4d_jax.train import step as train_lib


def load_trainable(cfg: one4d.One4DConfig, workdir: str, seed: int, mesh) -> dict:
  """The trainable tree of the newest checkpoint in `workdir` (restored onto `mesh`, whatever mesh and process count
  wrote it), or a fresh one (LoRA B and links zero)."""
  tx = train_lib.make_optimizer(train_lib.TrainConfig())  # the state's structure; the values come from the file
  shardings = train_lib.state_shardings(cfg, tx, mesh)
  init = jax.jit(lambda: one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), jax.random.key(seed)),
                 out_shardings=shardings.trainable)
  if not workdir:
    return init()
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints (written by launch.train)")
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        train_lib.abstract_state(cfg, tx), shardings)
  try:
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError) as e:
    raise ValueError(f"{workdir}: the checkpoint's trainable tree does not match the config (coupling, LoRA targets, "
                     f"links, rank): {str(e).splitlines()[0]}") from None
  return state["state"].trainable


def replicated(mesh, tree):
  """Arrays every process computed alike -> global arrays replicated over the mesh."""
  target = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: None if x is None else jax.make_array_from_process_local_data(target, np.asarray(x)),
                      tree)


def frame_count(path: str, fmt: str, num_frames: int) -> int:
  """Frames to generate for an input: num_frames (config.data.num_frames), or for a clip shorter than that the
  longest 1 + 4k it holds, as training windows are cut (a 50-frame clip gives 49)."""
  if not path or os.path.isfile(path):
    return num_frames
  clip = open_clip(fmt, path)
  count = pipeline.window_length(clip.num_frames, num_frames, 1)
  if count < 1:
    raise ValueError(f"{path} has no frames")
  return count


def input_frames(path: str, fmt: str, num_frames: int, hw: tuple[int, int]) -> np.ndarray:
  """uint8 [F, H, W, 3] at the model's resolution (cover-resize, centre crop): the first F frames of a clip, or one
  image file repeated (only its frame 0 is observed by single_image)."""
  if os.path.isfile(path):
    from PIL import Image
    frames = np.asarray(Image.open(path).convert("RGB"))[None]
  else:
    clip = open_clip(fmt, path)
    if clip.num_frames < num_frames:
      raise ValueError(f"{path} has {clip.num_frames} frames, fewer than the {num_frames} asked for")
    frames = clip.load(np.arange(num_frames)).frames
  resized = pm.cover_size(frames.shape[1:3], hw)
  top, left = pm.center_crop_offsets(resized, hw)
  frames = pm.resize_crop_frames(frames, resized, top, left, hw)
  return np.broadcast_to(frames, (num_frames, *frames.shape[1:])) if len(frames) == 1 else frames


def generate(c, workdir: str, task: str, input_path: str = "", fmt: str = "clipfolder", sparsity: float = 0.1,
             prompt: str = "", negative_prompt: str = "", sc: sample_lib.SamplerConfig = sample_lib.SamplerConfig(),
             seed: int = 0, postopt_iters: int = 300, progress: bool = True) -> dict:
  """The whole path as a function (the command line wraps it): returns the arrays written to sample.npz."""
  cfg = one4d_config_lib.one4d_config(c)
  cfg = cfg.replace(dit=cfg.dit.replace(lora_mode="auto"))
  hw = (c.data.height, c.data.width)
  if task != "text" and not input_path:
    raise ValueError(f"--task={task} needs --input (a clip or an image file)")
  f = frame_count(input_path, fmt, c.data.num_frames)
  if prompt and not c.encoders.t5:
    raise ValueError("a prompt needs a text encoder: set config.encoders.t5 and config.encoders.tokenizer")
  mesh = sharding.make_mesh(**c.mesh)
  frozen = frozen_params(c, cfg, mesh)
  trainable = load_trainable(cfg, workdir, c.seed, mesh)
  enc = inputs.load_encoders(c.encoders.vae, c.encoders.t5, c.encoders.tokenizer, c.encoders.clip,
                             text_dim=cfg.dit.text_dim, image_dim=cfg.dit.image_dim or 1280,
                             random_tiny=c.variant == "tiny", rng=jax.random.key(c.seed + 2))

  observed = umc.observed_frames(task, f, sparsity if task == "sparse" else None)
  frames = input_frames(input_path, fmt, f, hw) if input_path else np.zeros((f, *hw, 3), np.uint8)
  video = frames.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5 - 1.0
  batch = inputs.conditions(enc, video, observed[None], [prompt])
  negative = None
  if sc.guidance != 1.0:
    negative = (inputs.encode_text(enc, [negative_prompt]) if negative_prompt
                else jnp.zeros((1, 1, cfg.dit.text_dim), jnp.float32))
  # the same inputs on every process, replicated over the mesh; the guided batch is split over its data axes
  batch, negative, rng = replicated(mesh, (batch, negative, jax.random.key_data(jax.random.key(seed))))
  with jax.set_mesh(mesh):
    rgb_lat, xyz_lat = sample_lib.sample(frozen, trainable, cfg, jax.random.wrap_key_data(rng), batch["cond"],
                                         batch["text"], negative, batch["clip"], sc, progress=progress)
  rgb_lat, xyz_lat = (multihost_utils.process_allgather(z, tiled=True) for z in (rgb_lat, xyz_lat))
  decode = jax.jit(lambda z: vae_lib.decode(enc.vae, enc.vae_cfg, z))  # on this process's first device
  rgb = np.asarray(decode(rgb_lat))[0].transpose(1, 2, 3, 0)  # [F, H, W, 3] in [-1, 1]
  xyz = np.asarray(decode(xyz_lat))[0].transpose(1, 2, 3, 0)
  cams = postopt.post_optimize(xyz, cfg=postopt.PostOptConfig(iters=postopt_iters))
  return {"frames": np.clip(np.round((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8), "pointmaps": xyz,
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
  flags.DEFINE_integer("steps", 50, "Euler steps")
  flags.DEFINE_float("guidance", 6.0, "classifier-free guidance scale (1 = off)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_integer("postopt_iters", 300, "post-optimisation iterations")
  flags.DEFINE_bool("overwrite", False, "replace an existing --out")
  define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.out:
    raise app.UsageError("--out is required")
  if os.path.exists(f.out) and not f.overwrite:
    raise app.UsageError(f"{f.out} exists; pass --overwrite to replace it")
  sc = sample_lib.SamplerConfig(steps=f.steps, guidance=f.guidance)
  start_runtime(f)
  result = generate(f.config, f.workdir, f.task, f.input, f.format, f.sparsity, f.prompt, f.negative_prompt, sc,
                    f.seed, f.postopt_iters, progress=jax.process_index() == 0)
  if jax.process_index() == 0:  # every process holds the same result
    write(f.out, result, f.overwrite)
    print(f"wrote {f.out}: {len(result['frames'])} frames, pointmaps, cameras")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
