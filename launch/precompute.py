"""Encode the training windows once (VAE latents of frames and pointmaps, latent validity, umT5 caption embeddings,
frame-0 CLIP features, plus uint8 frames for the UMC condition) into ArrayRecord shards; then train from them with
`--config.data.precomputed=DIR` and the same config (umT5 and CLIP are not loaded; see one4d_jax.data.precomputed).

  python -m launch.precompute --config=configs/one4d.py:variant=14b --out=encoded/one4d \\
      --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 --config.encoders.tokenizer=umt5-xxl \\
      --config.encoders.clip=ckpt/clip --config.data.paths='("data/clips",)' --steps=5500
  python -m launch.train --config=configs/one4d.py:variant=14b ... --config.data.precomputed=encoded/one4d

Every window of the data, or with --steps only those a run of that many steps (of --global_batch) draws. Resumable:
a rerun skips complete shards. Several writers (hosts, or one process per device) split the shards: writer p of P
writes shards p, p + P, ... (--process_index/--process_count; by default this JAX process of all, e.g. with
--multihost).
"""

import os

import jax
from absl import flags
from ml_collections import config_flags

from launch import cli
from one4d_jax import pipeline as pipeline_lib
from one4d_jax.data import precomputed


def run(c, out: str, data: str = "", steps: int = 0, global_batch: int = 0, windows_per_shard: int = 16,
        process_index: int = -1, process_count: int = -1, progress: bool = True) -> dict:
  """Precompute into `out` (see the module docstring); returns what write_shards did, with the plan's counts."""
  if data:
    if c.data.mixture:
      raise ValueError("--data replaces config.data.paths, but config.data.mixture is set: give the paths there")
    c.data.paths = tuple(data.split(","))
  if steps and global_batch < 1:
    global_batch = c.train.batch_size
    if global_batch < 1:
      raise ValueError(f"--steps needs the run's global batch: config.train.batch_size is {global_batch} (one per "
                       "data-parallel device); give --global_batch")
  process_index = jax.process_index() if process_index < 0 else process_index
  process_count = jax.process_count() if process_count < 0 else process_count
  plan = precomputed.plan(pipeline_lib.training_sources(c.data), pipeline_lib.pipeline_config(c, 1), out, precomputed.config_identity(c), steps,
                          global_batch, windows_per_shard)
  if progress:
    print(f"{out}: {len(plan.rows):,} of {len(plan.windows):,} windows in {plan.num_shards} shards; writer "
          f"{process_index} of {process_count}")
  enc = pipeline_lib.config_encoders(c, pipeline_lib.model_config(c))
  done = precomputed.write_shards(enc, plan, process_index, process_count, progress)
  return {**done, "windows": len(plan.windows), "stored": len(plan.rows), "shards": plan.num_shards}


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_string("out", None, "output folder (created; a rerun into it resumes)")
  flags.DEFINE_string("data", "", "clip folders to encode, comma-separated, in config.data.format (default: "
                      "config.data.paths or config.data.mixture); train with the same paths")
  flags.DEFINE_integer("steps", 0, "only the windows a run of this many steps draws (0: every window)")
  flags.DEFINE_integer("global_batch", 0, "the run's global batch, with --steps (default: config.train.batch_size)")
  flags.DEFINE_integer("windows_per_shard", 16, "windows per ArrayRecord shard (a window of 81 x 352 x 624 is about 68 MB)")
  flags.DEFINE_integer("process_index", -1, "this writer's index (default: jax.process_index())")
  flags.DEFINE_integer("process_count", -1, "writers in all (default: jax.process_count())")
  cli.define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.out:
    raise ValueError("--out is required")
  cli.start_runtime(f)
  done = run(f.config, f.out, f.data, f.steps, f.global_batch, f.windows_per_shard, f.process_index, f.process_count)
  print(f"wrote {len(done['written'])} shards to {os.path.abspath(f.out)} ({len(done['skipped'])} already complete)")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
