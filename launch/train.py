"""Train One4D's LoRA branches and control links on clip folders; resumes from the newest checkpoint in WORKDIR.

  python -m launch.train --config=configs/one4d.py:variant=14b --workdir=runs/one4d \\
      --config.model.checkpoint=ckpt/dit --config.encoders.vae=ckpt/vae --config.encoders.t5=ckpt/t5 \\
      --config.encoders.tokenizer=umt5-xxl --config.encoders.clip=ckpt/clip --config.data.paths='("data/clips",)'

Multi-host: start the same command on every host with `--multihost` (jax.distributed.initialize reads the cluster
from the environment), or N processes on one machine with `python -m launch.local_cluster --num_processes=N -- python
-m launch.train ...`. Each process reads its own block of every global batch; the mesh spans all devices and the
batch is split over its data-parallel axes. WORKDIR holds `checkpoints/<step>/` (orbax: the trainable tree and the
optimiser state; the data stream resumes at the step, so a resumed run sees exactly the batches it would have seen,
with any number of processes and any mesh), `metrics.jsonl`, `tensorboard/` and `previews/<step>/`. Checkpoints are
written atomically and asynchronously by orbax. SIGTERM saves and exits 0; a diverged step stops the run naming it
(exit 1) and is never saved; a newest checkpoint that does not restore is set aside for the one before; after kill -9
the same command resumes with exactly the losses of an uninterrupted run (one4d_jax/train/faults.py).
"""

import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from launch import cli
from one4d_jax import observations, runtime, sharding
from one4d_jax.data import pipeline, precomputed
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.pipeline import (
  batch_plan,
  config_encoders,
  describe_sources,
  frozen_params,
  model_config,
  pipeline_config,
  require_weights,
  train_config,
  training_sources,
)
from one4d_jax.train import faults, inputs
from one4d_jax.train import metrics as metrics_lib
from one4d_jax.train import step as train_lib


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


def run(c, workdir: str, progress: bool = True) -> dict:
  """Train until c.train.steps (resuming from WORKDIR); returns the last metrics."""
  cfg = model_config(c)
  mesh = sharding.make_mesh(**c.mesh)
  batch_size, accum_steps = batch_plan(c, mesh, cfg.dit.policy.sharding_rules)
  tc, pc = train_config(c, accum_steps), pipeline_config(c, batch_size)  # a bad key is named before any model loads
  require_weights(c)
  sources = (precomputed.open_dir(c.data.precomputed, precomputed.config_identity(c)) if c.data.precomputed
             else training_sources(c.data))
  os.makedirs(workdir, exist_ok=True)  # only once the config and the data are known good
  frozen = frozen_params(c, cfg, mesh)
  tx = train_lib.make_optimizer(tc)
  shardings = train_lib.state_shardings(cfg, tx, mesh)
  init = jax.jit(lambda key: train_lib.init_state(one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), key), tx),
                 out_shardings=shardings)  # born sharded
  state = init(jax.random.fold_in(jax.random.key(c.seed), 1))
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=c.train.keep_checkpoints))
  restored, saved = faults.restore_newest(manager, state, workdir)  # onto this mesh, whatever mesh wrote it
  state = restored if restored is not None else state
  first = int(state.step)
  faults.truncate_log(os.path.join(workdir, "metrics.jsonl"), first)  # a killed run's steps after its checkpoint

  # the data stream resumes at global batch `first` (one4d_jax.data.pipeline: it depends on the seed alone)
  iterator, batch_fn, encoders = training_stream(c, cfg, pc, sources, first)
  step_fn = train_lib.jit_train_step(cfg, tc, tx, shardings)
  compiled = {}  # one program per batch shape (clips shorter than data.num_frames give shorter windows)
  rng = jax.random.key(c.seed + 3)
  writer = metrics_lib.Writer(workdir, console=tqdm.write if progress else lambda line: None)
  peak = metrics_lib.peak_tflops(c.train.peak_tflops)
  lr = train_lib.learning_rate(tc)
  metrics, pending, window = {}, None, (time.perf_counter(), first)

  def save(step: int) -> None:
    nonlocal saved
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))  # async: writes in background
    saved = step

  bar = tqdm(range(first, c.train.steps), initial=first, total=c.train.steps, desc="training",
             disable=not progress or jax.process_index() != 0)
  with faults.Preemption() as preemption:
    for step in bar:
      # this process's examples; with the other processes' they form the global batch over the data-parallel axes
      local = jax.tree.map(np.asarray, batch_fn(encoders, next(iterator)))
      batch = sharding.global_batch(local, mesh, cfg.dit.policy.sharding_rules)
      with jax.set_mesh(mesh):  # activations are constrained against this mesh (one4d_jax.sharding.constrain)
        shape = tuple(x.shape for x in jax.tree.leaves(batch))
        if shape not in compiled:  # compiled before it runs, so the compiler's freed memory goes back first
          bar.set_description(f"compiling the training step ({batch['rgb'].shape[2]} latent frames)")
          compiled[shape] = step_fn.lower(frozen, state, batch, rng).compile()
          runtime.release_free_memory()
          bar.set_description("training")
          window = (time.perf_counter(), step)  # throughput excludes compilation
        state, metrics = compiled[shape](frozen, state, batch, rng)
      if pending:  # the previous step's numbers, read while this one runs
        faults.check_finite(*pending, saved)
      done = step + 1
      pending = (done, metrics)
      stop = preemption.requested(done)
      if done % c.train.log_every == 0 or done == c.train.steps or stop:
        faults.check_finite(*pending, saved)
        now = time.perf_counter()
        logged = {k: float(v) for k, v in metrics.items()}
        logged.update(lr=float(lr(done - 1)), **metrics_lib.throughput(
            now - window[0], done - window[1], batch["rgb"].shape[0], metrics_lib.step_flops(cfg, batch["rgb"].shape),
            peak))
        window = (now, done)
        writer.scalars(done, logged)
        bar.set_postfix(loss=f"{logged['loss']:.4f}")
      if done % c.train.checkpoint_every == 0 or done == c.train.steps or stop:
        faults.check_finite(*pending, saved)  # a diverged state is never saved
        save(done)
      if c.train.preview_every and (done % c.train.preview_every == 0 or done == c.train.steps):
        writer.images(done, preview(c, cfg, frozen, state.trainable, encoders, mesh, sources))
      if stop:
        bar.close()
        print(f"preempted (SIGTERM): saved step {done}; the same command resumes from it", flush=True)
        break
  manager.wait_until_finished()
  writer.close()
  return {k: float(v) for k, v in metrics.items()}


def preview(c, cfg: one4d.One4DConfig, frozen, trainable, encoders, mesh, sources) -> dict:
  """The current model on the preview clip (config.train.preview_clip, else the first window of the first training
  clip), reconstructing it from its frames: RGB, XYZ and depth strips (metrics_lib.preview_images)."""
  from one4d_jax import pipeline as sampling
  from one4d_jax import sample as sample_lib
  from one4d_jax.data.readers import open_clip
  if c.train.preview_clip:
    clip = open_clip(c.data.format, c.train.preview_clip)
  else:  # precomputed runs hold no clips: the first clip of the sources they were made from
    clip = (training_sources(c.data) if isinstance(sources, precomputed.Precomputed) else sources)[0].clips[0]
  hw = (c.data.height, c.data.width)
  count = min(clip.num_frames, c.data.num_frames)
  frames, _ = observations.fit(clip.load(np.arange(count)).frames, hw)
  model = sampling.Model(cfg, frozen, trainable, encoders, mesh, hw, c.data.num_frames)
  sample = sampling.sample_clip(model, frames, np.ones(count, bool), sc=sample_lib.SamplerConfig(
      steps=c.train.preview_steps, guidance=1.0), progress=False)
  cams = sampling.cameras(sample, iters=50)
  return metrics_lib.preview_images(sample.frames, sample.pointmaps, np.asarray(cams.depth))


def define_flags():
  """Command-line flags, defined only when run as a program (so launch modules can import each other)."""
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_string("workdir", None, "run folder: checkpoints and metrics")
  cli.define_distributed_flags()


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise ValueError("--workdir is required (a run folder: created, or resumed when it holds checkpoints)")
  cli.start_runtime(f)
  last = run(f.config, f.workdir)  # a diverged step raises FloatingPointError: one line (launch.cli), exit 1
  print("done: " + " ".join(f"{k}={v:.4g}" for k, v in last.items()))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
