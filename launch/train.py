"""Train One4D's LoRA branches and control links on clip folders; resumes from the newest checkpoint in WORKDIR.

  python -m launch.train --config=configs/one4d.py:variant=14b --workdir=runs/one4d \\
      --config.model.checkpoint=ckpt/dit --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 \\
      --config.encoders.tokenizer=umt5-xxl --config.encoders.clip=ckpt/clip --config.data.paths='("data/clips",)'

Multi-host: start the same command on every host with `--multihost` (jax.distributed.initialize reads the cluster
from the environment); each host reads its own shard of the clip stream, the mesh spans all devices. WORKDIR holds
`checkpoints/<step>/` (orbax: the trainable tree, the optimiser state and the Grain iterator position, so a resumed
run sees exactly the batches it would have seen) and `metrics.jsonl`. Checkpoints are written atomically by orbax.
"""

import json
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from configs import one4d as one4d_config_lib
from one4d_jax import checkpoints, sharding
from one4d_jax.data import pipeline
from one4d_jax.data.readers import open_clips
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.train import inputs
from one4d_jax.train import step as train_lib


def training_clips(fmt: str, paths) -> list:
  """Every clip under `paths` (each a clip or a folder of clips, see `one4d_jax.data.readers.open_clips`)."""
  if not paths:
    raise ValueError("config.data.paths is empty: give clip folders to train on")
  return [clip for path in paths for _, clip in open_clips(fmt, path)]


def train_config(c) -> train_lib.TrainConfig:
  return train_lib.TrainConfig(lr=c.train.lr, warmup_steps=c.train.warmup_steps, accum_steps=c.train.accum_steps,
                               text_drop_prob=c.train.text_drop_prob)


def sharding_rules(c) -> tuple:
  return tuple(tuple(r) for r in c.sharding_rules)


def frozen_params(c, cfg: one4d.One4DConfig, mesh):
  """The converted Wan DiT, sharded by logical axes with the config's rules; a random one only for the tiny variant
  (tests, dry runs)."""
  shardings = sharding.logical_to_shardings(dit.logical_axes(cfg.dit), mesh, sharding_rules(c))
  if c.model.checkpoint:
    stored, params = checkpoints.load(c.model.checkpoint, shardings=shardings)
    policy = dict(dtype="float32", param_dtype="float32", attention="auto", remat="none", lora_scale=1.0,
                  lora_mode="factored")  # execution policy: the config's wins; the architecture must agree
    if stored.replace(**policy) != cfg.dit.replace(**policy):
      raise ValueError(f"{c.model.checkpoint} holds a different architecture: {stored.replace(**policy)}; the config "
                       f"asks for {cfg.dit.replace(**policy)} (config.model.preset)")
    return params
  if c.variant != "tiny":
    raise ValueError(f"variant {c.variant!r} needs config.model.checkpoint (a converted Wan DiT folder)")
  return jax.jit(lambda key: dit.init(cfg.dit, key), out_shardings=shardings)(jax.random.key(c.seed))


def run(c, workdir: str, progress: bool = True) -> dict:
  """Train until c.train.steps (resuming from WORKDIR); returns the last metrics."""
  cfg = one4d_config_lib.one4d_config(c)
  tc = train_config(c)
  mesh = sharding.make_mesh(**c.mesh)
  frozen = frozen_params(c, cfg, mesh)
  tx = train_lib.make_optimizer(tc)
  abstract_trainable = jax.eval_shape(lambda: one4d.init_trainable(cfg, dit.abstract_params(cfg.dit),
                                                                   jax.random.key(0)))
  trainable_shardings = sharding.logical_to_shardings(one4d.logical_axes(cfg, abstract_trainable), mesh,
                                                       sharding_rules(c))
  # the trainable tree sharded by its logical axes; the optimiser moments follow it by sharding propagation
  init = jax.jit(lambda key: train_lib.init_state(jax.lax.with_sharding_constraint(
      one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), key), trainable_shardings), tx))
  state = init(jax.random.fold_in(jax.random.key(c.seed), 1))

  pc = pipeline.PipelineConfig(num_frames=c.data.num_frames, frame_stride=c.data.frame_stride,
                               height=c.data.height, width=c.data.width, batch_size=c.data.batch_size, seed=c.seed)
  iterator = pipeline.make_iterator(pipeline.make_dataset(training_clips(c.data.format, c.data.paths), pc),
                                    num_workers=c.data.num_workers)
  encoders = inputs.load_encoders(c.encoders.vae, c.encoders.t5, c.encoders.tokenizer, c.encoders.clip,
                                  text_dim=cfg.dit.text_dim, image_dim=cfg.dit.image_dim or 1280,
                                  random_tiny=c.variant == "tiny", rng=jax.random.key(c.seed + 2))

  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=c.train.keep_checkpoints))
  if manager.latest_step() is not None:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(iterator)))
    state = restored["state"]
  step_fn = train_lib.jit_train_step(cfg, tc, tx)
  # each host holds its own examples: together they form the global batch, split over the mesh's data axis
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  global_batch = lambda local: jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)), local)
  rng = jax.random.key(c.seed + 3)
  metrics, first = {}, int(state.step)
  log = open(os.path.join(workdir, "metrics.jsonl"), "a") if jax.process_index() == 0 else None
  bar = tqdm(range(first, c.train.steps), initial=first, total=c.train.steps, desc="training",
             disable=not progress or jax.process_index() != 0)
  for step in bar:
    batch = global_batch(inputs.model_batch(encoders, next(iterator)))
    state, metrics = step_fn(frozen, state, batch, rng)
    done = step + 1
    if done % c.train.log_every == 0 or done == c.train.steps:
      metrics = {k: float(v) for k, v in metrics.items()}
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      if log:
        log.write(json.dumps({"step": done, **metrics}) + "\n")
        log.flush()
    if done % c.train.checkpoint_every == 0 or done == c.train.steps:
      manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  if log:
    log.close()
  return {k: float(v) for k, v in metrics.items()}


def define_flags():
  """Command-line flags, defined only when run as a program (so launch modules can import each other)."""
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_string("workdir", None, "run folder: checkpoints and metrics")
  flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first")


def main(argv):
  del argv
  f = flags.FLAGS
  if f.multihost:
    jax.distributed.initialize()
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  os.makedirs(f.workdir, exist_ok=True)
  print(run(f.config, f.workdir))


if __name__ == "__main__":
  define_flags()
  app.run(main)
