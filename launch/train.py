"""Train One4D's LoRA branches and control links on clip folders; resumes from the newest checkpoint in WORKDIR.

  python -m launch.train --config=configs/one4d.py:variant=14b --workdir=runs/one4d \\
      --config.model.checkpoint=ckpt/dit --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 \\
      --config.encoders.tokenizer=umt5-xxl --config.encoders.clip=ckpt/clip --config.data.paths='("data/clips",)'

Multi-host: start the same command on every host with `--multihost` (jax.distributed.initialize reads the cluster
from the environment), or N processes on one machine with `python -m launch.local_cluster --num_processes=N -- python
-m launch.train ...`. Each process reads its own block of every global batch; the mesh spans all devices and the
batch is split over its data-parallel axes. WORKDIR holds `checkpoints/<step>/` (orbax: the trainable tree and the
optimiser state; the data stream resumes at the step, so a resumed run sees exactly the batches it would have seen,
with any number of processes and any mesh) and `metrics.jsonl`. Checkpoints are written atomically by orbax.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from configs import one4d as one4d_config_lib
from launch import cli
from one4d_jax import runtime, sharding
from one4d_jax.data import pipeline, precomputed
from one4d_jax.data.readers import READERS, open_clips
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.pipeline import config_encoders, frozen_params, require_weights
from one4d_jax.train import inputs
from one4d_jax.train import step as train_lib


def training_clips(fmt: str, paths) -> list:
  """Every clip under `paths` (each a clip or a folder of clips, see `one4d_jax.data.readers.open_clips`)."""
  if not paths:
    raise ValueError("config.data.paths is empty: give clip folders to train on")
  return [clip for path in paths for _, clip in open_clips(fmt, path)]


def training_sources(data) -> list[pipeline.Source]:
  """The weighted sources of config.data: one per entry of `mixture` (format, paths, weight), or when it is empty the
  one source `format` / `paths` of weight 1. Every entry is checked before any clip is opened; a source of weight 0
  is not opened."""
  mixture = data.get("mixture") or {}
  entries = dict(mixture) or {"data": dict(format=data.format, paths=data.paths)}
  checked = []
  for name, entry in entries.items():
    field = f"config.data.mixture.{name}" if mixture else "config.data"
    keys = set(entry.keys()) if hasattr(entry, "keys") else set()
    if not {"format", "paths"} <= keys <= {"format", "paths", "weight"}:
      raise ValueError(f"{field} must be a ConfigDict(format=..., paths=(...), weight=1.0), found {entry!r}")
    if entry["format"] not in READERS:
      raise ValueError(f"{field}.format={entry['format']!r} is not a clip format; choose from {sorted(READERS)}")
    weight = pipeline.check_weight(name, entry.get("weight", 1.0))
    paths = (entry["paths"],) if isinstance(entry["paths"], str) else tuple(entry["paths"])
    if weight > 0 and not paths:
      raise ValueError(f"{field}.paths is empty: give clip folders to train on"
                       + (", or weight 0 to leave the source out" if mixture else ""))
    checked.append((name, entry["format"], paths, weight))
  return [pipeline.Source(name, tuple(training_clips(fmt, paths)) if weight > 0 else (), weight)
          for name, fmt, paths, weight in checked]


def describe_sources(sources: list[pipeline.Source], config: pipeline.PipelineConfig) -> list[str]:
  """One line per source: clips, windows, weight and share of an epoch."""
  return [f"source {r['name']}: left out (weight 0)" if r["windows"] is None else
          f"source {r['name']}: {r['clips']:,} clips, {r['windows']:,} windows, weight {r['weight']:g}, "
          f"{r['share']:.1%} of each epoch ({r['epoch_windows']:,} windows)"
          for r in pipeline.mixture_summary(sources, config)]


def training_stream(c, cfg, pc: pipeline.PipelineConfig, sources, first: int):
  """(iterator from global batch `first`, its batch function, the encoders it needs) over the clips of `sources`, or
  over precomputed encodings (`sources` a precomputed.Precomputed): then only the UMC condition is encoded in the
  step, and only the VAE is loaded (umT5 and CLIP stay on disk)."""
  if isinstance(sources, precomputed.Precomputed):
    lines = [f"precomputed {sources.directory}: {len(sources.rows):,} windows of sources "
             f"{', '.join(sources.manifest['sources'])}"]
    dataset = precomputed.make_dataset(sources, pc, first_batch=first, last_batch=c.train.steps)
    batch_fn, encoders = inputs.precomputed_batch, config_encoders(c, cfg, text_and_image=False)
  else:
    lines = describe_sources(sources, pc)
    dataset = pipeline.make_dataset(sources, pc, first_batch=first)
    batch_fn, encoders = inputs.model_batch, config_encoders(c, cfg)
  if jax.process_index() == 0:
    print("\n".join(lines))
  return pipeline.make_iterator(dataset, num_workers=c.data.num_workers), batch_fn, encoders


def train_config(c, accum_steps: int) -> train_lib.TrainConfig:
  return train_lib.TrainConfig(lr=c.train.lr, warmup_steps=c.train.warmup_steps, accum_steps=accum_steps,
                               text_drop_prob=c.train.text_drop_prob)


def batch_plan(c, mesh, rules) -> tuple[int, int]:
  """(examples this process reads per optimiser step, micro-batches per step) from config.train.batch_size and
  accum_steps, checked before any model loads: every micro-batch spans the data-parallel devices evenly, and every
  process reads an equal share."""
  size, processes = sharding.data_parallel_size(mesh, rules), jax.process_count()
  total, accum = c.train.batch_size, c.train.accum_steps
  if total == -1:
    total = size * max(accum, 1)
  if accum == -1:
    accum = max(total // size, 1)
  if total < 1 or accum < 1 or total % (accum * size) or total % processes:
    raise ValueError(f"config.train.batch_size={c.train.batch_size} does not split into accum_steps="
                     f"{c.train.accum_steps} micro-batches over {size} data-parallel devices (mesh {dict(mesh.shape)})"
                     f" read by {processes} processes: make it a multiple of {size} (and of the processes), with "
                     f"accum_steps dividing batch_size / {size}, or set -1")
  return total // processes, accum


def run(c, workdir: str, progress: bool = True) -> dict:
  """Train until c.train.steps (resuming from WORKDIR); returns the last metrics."""
  cfg = one4d_config_lib.one4d_config(c)
  mesh = sharding.make_mesh(**c.mesh)
  batch_size, accum_steps = batch_plan(c, mesh, cfg.dit.sharding_rules)
  tc = train_config(c, accum_steps)
  require_weights(c)
  sources = (precomputed.open_dir(c.data.precomputed, precomputed.config_identity(c)) if c.data.precomputed
             else training_sources(c.data))
  frozen = frozen_params(c, cfg, mesh)
  tx = train_lib.make_optimizer(tc)
  shardings = train_lib.state_shardings(cfg, tx, mesh)
  init = jax.jit(lambda key: train_lib.init_state(one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), key), tx),
                 out_shardings=shardings)  # born sharded
  state = init(jax.random.fold_in(jax.random.key(c.seed), 1))
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=c.train.keep_checkpoints))
  if manager.latest_step() is not None:  # onto this run's mesh, whatever mesh and process count wrote it
    state = manager.restore(manager.latest_step(),
                            args=ocp.args.Composite(state=ocp.args.StandardRestore(state)))["state"]
  first = int(state.step)

  # the data stream resumes at global batch `first` (one4d_jax.data.pipeline: it depends on the seed alone)
  pc = pipeline.PipelineConfig(num_frames=c.data.num_frames, min_frames=c.data.min_frames,
                               frame_stride=c.data.frame_stride,
                               height=c.data.height, width=c.data.width, batch_size=batch_size, seed=c.seed,
                               normalize_quantile=c.data.normalize_quantile)
  iterator, batch_fn, encoders = training_stream(c, cfg, pc, sources, first)
  step_fn = train_lib.jit_train_step(cfg, tc, tx, shardings)
  compiled = {}  # one program per batch shape (clips shorter than data.num_frames give shorter windows)
  rng = jax.random.key(c.seed + 3)
  metrics = {}
  log = open(os.path.join(workdir, "metrics.jsonl"), "a") if jax.process_index() == 0 else None
  bar = tqdm(range(first, c.train.steps), initial=first, total=c.train.steps, desc="training",
             disable=not progress or jax.process_index() != 0)
  for step in bar:
    # this process's examples; with the other processes' they form the global batch over the data-parallel axes
    local = jax.tree.map(np.asarray, batch_fn(encoders, next(iterator)))
    batch = sharding.global_batch(local, mesh, cfg.dit.sharding_rules)
    with jax.set_mesh(mesh):  # activations are constrained against this mesh (one4d_jax.sharding.constrain)
      shape = tuple(x.shape for x in jax.tree.leaves(batch))
      if shape not in compiled:  # compiled before it runs, so the compiler's freed memory goes back first
        bar.set_description(f"compiling the training step ({batch['rgb'].shape[2]} latent frames)")
        compiled[shape] = step_fn.lower(frozen, state, batch, rng).compile()
        runtime.release_free_memory()
        bar.set_description("training")
      state, metrics = compiled[shape](frozen, state, batch, rng)
    done = step + 1
    if done % c.train.log_every == 0 or done == c.train.steps:
      metrics = {k: float(v) for k, v in metrics.items()}
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      if log:
        log.write(json.dumps({"step": done, **metrics}) + "\n")
        log.flush()
    if done % c.train.checkpoint_every == 0 or done == c.train.steps:
      manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  if log:
    log.close()
  return {k: float(v) for k, v in metrics.items()}


def define_distributed_flags():
  """Flags of a multi-process run, shared by launch.train and launch.sample."""
  flags.DEFINE_bool("multihost", False, "join a multi-process run from the cluster's environment (TPU VM, SLURM)")
  flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, for a multi-process run on one machine "
                      "(launch/local_cluster.py sets it)")
  flags.DEFINE_integer("num_processes", None, "processes of a local multi-process run")
  flags.DEFINE_integer("process_id", None, "this process's index in a local multi-process run")


def start_runtime(f) -> None:
  """XLA settings for this platform, then join the multi-process run the flags describe (if any)."""
  runtime.configure()
  runtime.initialize(f.multihost, f.coordinator, f.num_processes, f.process_id)


def define_flags():
  """Command-line flags, defined only when run as a program (so launch modules can import each other)."""
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_string("workdir", None, "run folder: checkpoints and metrics")
  define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  start_runtime(f)
  os.makedirs(f.workdir, exist_ok=True)
  print(run(f.config, f.workdir))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
