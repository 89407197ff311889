"""Plan a run before renting the machine: compile One4D's training or sampling step ahead of time for a mesh of fake
CPU devices, or for the chips of a TPU topology or for GPUs through the TPU or GPU compiler, and print what one device
needs (memory, FLOPs, implied step time). No hardware, weights or data needed.

  python -m launch.plan --config=configs/one4d.py:variant=14b --config.mesh.fsdp=4 --config.mesh.context=2 \\
      --config.model.remat=full --config.model.context_parallel=ulysses \\
      --frames=81 --height=352 --width=624 --what=train --device_memory_gib=80
  python -m launch.plan --config=configs/one4d.py:variant=14b --topology=v5p:2x2x2 --what=train
  python -m launch.plan --config=configs/one4d.py:variant=14b --topology=h100:8 --what=train

The mesh comes from the config (every axis given, or -1 with --devices or --topology: the topology's chips); the
training batch is config.train.batch_size in its accum_steps micro-batches (--batch: one micro-batch of that many
examples). Attention `auto` compiles the pure-JAX flash kernel on fake devices (the CPU stand-in for cuDNN / TPU
splash attention), splash attention for a TPU topology (flash until it is registered) and cuDNN for GPUs in bf16
(flash under context parallelism). --topology needs libtpu (requirements-tpu.txt) or, for GPUs, JAX's CUDA plugin
(requirements-gpu.txt), not the hardware; its memory and peak default to the chip's, and a step the TPU compiler
cannot fit is reported with the compiler's message. Exit status 1 when the step does not fit. The last line is exactly
`per_device_total_gib=<value>`.
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
  flags.DEFINE_string("topology", "", "compile for this TPU topology's chips instead, GENERATION:AxB[xC] (v5p:2x2x2, "
                      "v6e:2x4, v5e:4x4, v4:2x2x1; needs requirements-tpu.txt), or for GPUs, GPU:COUNT (h100:8, "
                      "h100:16; needs requirements-gpu.txt)")
  flags.DEFINE_integer("slices", 1, "slices of --topology (multi-slice: the mesh's leading axes span them)")
  flags.DEFINE_float("device_memory_gib", None, "memory of one device, for the verdict (default: the chip's HBM with "
                     "--topology, else 80: A100/H100 80 GB)")
  flags.DEFINE_float("peak_tflops", None, "peak TFLOP/s of one device (default: the chip's dense bf16 with "
                     "--topology, else 989: H100 SXM dense bf16)")
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


def target(f) -> tuple[list | None, float, float]:
  """(devices to build the mesh over: the topology's chips, or None for every fake CPU device; memory GiB and peak
  TFLOP/s of one device), with JAX set up for them before it starts."""
  c = f.config
  if f.topology:
    if f.devices is not None:
      raise ValueError("give --topology (its chips) or --devices (fake CPU devices), not both")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiled for the topology, run nowhere: no TPU/GPU backend here
    from one4d_jax import topology
    devices = topology.devices(f.topology, f.slices)
    chip = topology.chip(devices[0])
    memory, peak = chip.hbm_gib, chip.peak_tflops
  else:
    if f.slices != 1:
      raise ValueError(f"--slices={f.slices} needs --topology")
    sizes = list(c.mesh.values())
    if f.devices is None and -1 in sizes:
      raise ValueError(f"config.mesh {dict(c.mesh)} has an axis of -1: give every axis, --devices or --topology")
    fake_devices(f.devices or math.prod(sizes), f.keep_cpu_passes)
    devices, memory, peak = None, 80.0, 989.0
  return (devices, memory if f.device_memory_gib is None else f.device_memory_gib,
          peak if f.peak_tflops is None else f.peak_tflops)


def plan(f) -> int:
  from one4d_jax import plan as plan_lib  # imports start no JAX backend: fake devices can still be set
  from one4d_jax import sharding
  from one4d_jax.pipeline import batch_plan, model_config, sampler_config, train_config

  c = f.config
  cfg = model_config(c)
  grid = plan_lib.latent_grid(cfg.dit, f.frames, f.height, f.width)
  devices, device_memory_gib, peak_tflops = target(f)
  mesh = sharding.make_mesh(**c.mesh, devices=devices)
  cfg = cfg.replace(dit=cfg.dit.with_policy(attention=plan_lib.target_attention(cfg.dit, mesh.devices.flat[0].platform)))
  if f.what == "sample":
    cfg = cfg.replace(dit=cfg.dit.with_policy(lora_mode="auto"))  # as launch.generate runs it
  run = cfg.dit.policy
  dp = sharding.data_parallel_size(mesh, run.sharding_rules)
  per_process, accum = batch_plan(c, mesh, run.sharding_rules)
  tc = train_config(c, accum if f.batch is None else 1)
  batch = f.batch or (per_process if f.what == "train" else dp)
  on = f"{f.topology}{f' x {f.slices} slices' if f.slices > 1 else ''}: " if f.topology else ""
  print(f"planning {c.variant} {f.what}: {f.frames}x{f.height}x{f.width}, latent {grid}, {on}mesh {dict(mesh.shape)}, "
        f"batch {batch}{f' in {tc.accum_steps} micro-batches' if f.what == 'train' and tc.accum_steps > 1 else ''}, remat={run.remat}, attention={run.attention}, "
        f"context_parallel={run.context_parallel}, dtype={run.dtype}", flush=True)
  try:
    if f.what == "train":
      result, _ = plan_lib.plan_train(cfg, tc, mesh, batch, grid)
    else:
      result, _ = plan_lib.plan_sample(cfg, sampler_config(c), mesh, batch, grid)
  except plan_lib.OutOfMemory as oom:
    print("\n".join(plan_lib.out_of_memory_report(oom)))
    return 1
  print("\n".join(plan_lib.report(result, peak_tflops, f.mfu, device_memory_gib)))
  return 0 if plan_lib.fits(result, device_memory_gib) else 1


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
