"""Plan a run before renting the machine: compile One4D's training or sampling step ahead of time for a mesh of fake
devices and print what one device needs (memory, FLOPs, implied step time). No hardware, weights or data needed.

  python -m launch.plan --config=configs/one4d.py:variant=14b --config.mesh.fsdp=4 --config.mesh.context=2 \\
      --config.model.remat=full --config.model.context_parallel=ulysses \\
      --frames=81 --height=352 --width=624 --what=train --device_memory_gib=80

The mesh comes from the config (every axis given, or -1 with --devices); the training batch is
config.train.batch_size in its accum_steps micro-batches (--batch: one micro-batch of that many examples). Attention
`auto` compiles the pure-JAX flash kernel here, the CPU stand-in for cuDNN / TPU splash attention. Exit status 1 when
the step does not fit --device_memory_gib. The last line is exactly `per_device_total_gib=<value>`.
"""

import math
import os
import sys

from absl import flags
from ml_collections import config_flags

from launch import cli


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  flags.DEFINE_enum("what", "train", ["train", "sample"], "the training step or one guided sampling step")
  flags.DEFINE_integer("frames", 81, "video frames (1 + 4k)")
  flags.DEFINE_integer("height", 352, "video height in pixels")
  flags.DEFINE_integer("width", 624, "video width in pixels")
  flags.DEFINE_integer("batch", None, "global examples per step, as one micro-batch (default: config.train.batch_size "
                       "in its accum_steps micro-batches for training, one per data-parallel device for sampling)")
  flags.DEFINE_integer("devices", None, "fake devices to plan for (default: the product of config.mesh)")
  flags.DEFINE_float("device_memory_gib", 80.0, "memory of one device, for the verdict (80: A100/H100 80 GB)")
  flags.DEFINE_float("peak_tflops", 989.0, "peak TFLOP/s of one device (989: H100 SXM dense bf16)")
  flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation assumed for the implied step time")
  flags.DEFINE_bool("keep_cpu_passes", False, "compile with all of XLA's CPU passes (see one4d_jax.runtime.CPU_ARTIFACT_FLAGS)")


def fake_devices(count: int, keep_cpu_passes: bool = False):
  """Ask XLA for `count` CPU devices, compiled without the pass that hoists an f32 copy of every bf16 weight out of
  the layer loop (runtime.CPU_ARTIFACT_FLAGS, a CPU-only artifact) unless `keep_cpu_passes`."""
  from one4d_jax import runtime
  if runtime.backends_started():
    import jax
    if jax.device_count() != count:
      raise ValueError(f"jax already runs with {jax.device_count()} devices, the plan needs {count}")
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  runtime.set_xla_flags(*(() if keep_cpu_passes else runtime.CPU_ARTIFACT_FLAGS), device_count=count)


def main(argv):
  del argv
  try:
    return plan(flags.FLAGS)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def plan(f) -> int:
  c = f.config
  sizes = list(c.mesh.values())
  if f.devices is None and -1 in sizes:
    raise ValueError(f"config.mesh {dict(c.mesh)} has an axis of -1: give every axis or --devices")
  fake_devices(f.devices or math.prod(sizes), f.keep_cpu_passes)

  import jax

  from one4d_jax import plan as plan_lib
  from one4d_jax import sharding
  from one4d_jax.pipeline import batch_plan, model_config, sampler_config, train_config

  cfg = model_config(c)
  if cfg.dit.attention == "auto" and jax.default_backend() == "cpu":
    cfg = cfg.replace(dit=cfg.dit.replace(attention="flash"))
  if f.what == "sample":
    cfg = cfg.replace(dit=cfg.dit.replace(lora_mode="auto"))  # as launch.generate runs it
  grid = plan_lib.latent_grid(cfg.dit, f.frames, f.height, f.width)
  mesh = sharding.make_mesh(**c.mesh)
  dp = sharding.data_parallel_size(mesh, cfg.dit.sharding_rules)
  per_process, accum = batch_plan(c, mesh, cfg.dit.sharding_rules)
  tc = train_config(c, accum if f.batch is None else 1)
  batch = f.batch or (per_process if f.what == "train" else dp)
  print(f"planning {c.variant} {f.what}: {f.frames}x{f.height}x{f.width}, latent {grid}, mesh {dict(mesh.shape)}, "
        f"batch {batch}{f' in {tc.accum_steps} micro-batches' if f.what == 'train' and tc.accum_steps > 1 else ''}, remat={cfg.dit.remat}, attention={cfg.dit.attention}, "
        f"context_parallel={cfg.dit.context_parallel}, dtype={cfg.dit.dtype}", flush=True)
  if f.what == "train":
    result, _ = plan_lib.plan_train(cfg, tc, mesh, batch, grid)
  else:
    result, _ = plan_lib.plan_sample(cfg, sampler_config(c), mesh, batch, grid)
  print("\n".join(plan_lib.report(result, f.peak_tflops, f.mfu, f.device_memory_gib)))
  return 0 if plan_lib.fits(result, f.device_memory_gib) else 1


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
