"""Peak host memory of the real-size path on one host: convert, load, one training step and one sampling step of a
random checkpoint with a preset's exact shape (Wan2.1-Fun-1.3B-InP by default), built here, beside the weights' own
size.

  PYTHONPATH=. python benchmarks/memory.py [--preset 1.3b] [--work /tmp/one4d-memory] [--devices 2]

Each stage runs in its own process and reports its peak RSS (`ru_maxrss`). The source checkpoint is written in the
diffusers layout (bf16, 4 safetensors shards; names and shapes from diffusers' WanTransformer3DModel on the meta
device, values random), with a random Wan VAE (diffusers' AutoencoderKLWan at Wan2.1's configuration) converted to
bf16, the converter's default (diffusers' training scripts cast the frozen VAE to the weight dtype too). Training and
sampling use 5 frames at 64x96 (48 tokens per branch) on `--devices` fake CPU devices, so activations are a few MB and
what the figures show is the cost of the weights. The last line is exactly `train_peak_rss_gib=<value>`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

PRESETS = {"1.3b": "fun-inp-1.3b", "14b": "fun-inp-14b", "tiny": "tiny"}
GIB = 1024 ** 3

# Runs a stage's code, then prints its own peak RSS (ru_maxrss is in KiB on Linux).
STAGE = """
import json, resource, sys, time
t0 = time.perf_counter()
exec(compile(sys.argv[1], "<stage>", "exec"))
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - t0}))
"""


def run_stage(name: str, code: str, env: dict) -> dict:
  out = subprocess.run([sys.executable, "-c", STAGE, code], capture_output=True, text=True, env=env)
  if out.returncode:
    raise SystemExit(f"stage {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def build_sources(preset: str, work: str) -> tuple[int, int]:
  """The random diffusers DiT (bf16, 4 shards) and VAE; returns (DiT bytes, largest tensor bytes)."""
  import ml_dtypes
  import numpy as np
  import torch
  from diffusers import AutoencoderKLWan, WanTransformer3DModel
  from safetensors.numpy import save_file

  from checkpoints_convert import wan_dit
  from one4d_jax.models.wan import dit

  cfg = dit.preset(preset)
  src = os.path.join(work, "dit_src")
  with torch.device("meta"):
    model = WanTransformer3DModel(**wan_dit.diffusers_kwargs(cfg))
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  total = sum(int(np.prod(s)) * 2 for s in shapes.values())
  largest = max(int(np.prod(s)) * 2 for s in shapes.values())
  if not os.path.exists(os.path.join(src, "config.json")):
    os.makedirs(src, exist_ok=True)
    rng = np.random.default_rng(0)
    keys = sorted(shapes)
    shards = np.array_split(np.arange(len(keys)), 4)
    index = {}
    for n, shard in enumerate(shards):
      name = f"diffusion_pytorch_model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
      tensors = {keys[i]: (0.02 * rng.standard_normal(shapes[keys[i]], np.float32)).astype(ml_dtypes.bfloat16)
                 for i in shard}
      save_file(tensors, os.path.join(src, name))
      index.update({k: name for k in tensors})
      del tensors
    with open(os.path.join(src, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": index}, f)
    with open(os.path.join(src, "config.json"), "w") as f:
      json.dump({"_class_name": "WanTransformer3DModel", **wan_dit.diffusers_kwargs(cfg)}, f)
  vae_src = os.path.join(work, "vae_src")
  if not os.path.exists(vae_src):
    torch.manual_seed(0)
    AutoencoderKLWan().save_pretrained(vae_src)
  return total, largest


def write_clip(path: str) -> None:
  """A small synthetic clip folder (9 frames, 96x128, a camera moving sideways over a slanted plane)."""
  import numpy as np

  from one4d_jax.data import ClipRecord, write_clipfolder
  if os.path.exists(path):
    return
  f, h, w = 9, 96, 128
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (f, h, w, 3), dtype=np.uint8)
  depth = np.broadcast_to(np.linspace(2.0, 4.0, w, dtype=np.float32), (f, h, w)).copy()
  K = np.broadcast_to(np.array([[100.0, 0, w / 2], [0, 100.0, h / 2], [0, 0, 1]]), (f, 3, 3)).copy()
  c2w = np.broadcast_to(np.eye(4), (f, 4, 4)).copy()
  c2w[:, 0, 3] = np.linspace(0, 0.2, f)
  write_clipfolder(path, ClipRecord(frames, depth, depth > 0, K, c2w, "a plane", "synthetic", "plane"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="1.3b", choices=sorted(PRESETS))
  p.add_argument("--work", default="/tmp/one4d-memory", help="where the checkpoints are built (kept for reruns)")
  p.add_argument("--devices", type=int, default=2, help="fake CPU devices of the training and sampling stages")
  p.add_argument("--stages", nargs="+", default=["convert", "load", "train", "sample"])
  args = p.parse_args(argv)
  os.makedirs(args.work, exist_ok=True)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  devices_env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}

  t0 = time.perf_counter()
  weights, largest = build_sources(PRESETS[args.preset], args.work)
  write_clip(os.path.join(args.work, "clips", "plane"))
  print(f"# preset {args.preset}: DiT {weights / GIB:.2f} GiB in bf16, largest tensor {largest / 2**20:.0f} MiB; "
        f"sources built in {time.perf_counter() - t0:.0f} s under {args.work}", flush=True)
  dst, vae = os.path.join(args.work, "dit"), os.path.join(args.work, "vae_bf16")
  if not os.path.exists(vae):
    run_stage("convert vae", f"from checkpoints_convert import wan; wan.main(['--component', 'vae', '--src', "
              f"{os.path.join(args.work, 'vae_src')!r}, '--dst', {vae!r}])", env)  # bf16, the converter's default

  train_flags = [f"--config=configs/one4d.py:variant={args.preset}", f"--config.model.checkpoint={dst}",
                 f"--config.encoders.vae={vae}", "--config.data.format=clipfolder",
                 f"--config.data.paths=('{os.path.join(args.work, 'clips')}',)", "--config.data.num_frames=5",
                 "--config.data.height=64", "--config.data.width=96", f"--config.mesh.fsdp={args.devices}",
                 "--config.mesh.context=1", "--config.model.context_parallel=none", "--config.train.warmup_steps=1",
                 "--config.train.batch_size=-1"]  # one clip per device (the paper accumulates 32 per step)
  stages = {
      "convert": (f"import shutil; shutil.rmtree({dst!r}, ignore_errors=True)\n"
                  f"from checkpoints_convert import core\ncore.convert('dit', {os.path.join(args.work, 'dit_src')!r}, "
                  f"{dst!r}, dtype='bf16', progress=False)", env),
      "load": (f"from one4d_jax import checkpoints\ncfg, params = checkpoints.load({dst!r})\n"
               "import jax; jax.block_until_ready(params)", env),
      "train": ("import sys; from absl import app; from launch import train\nsys.argv = ['train'] + "
                f"{train_flags + ['--workdir=' + os.path.join(args.work, 'run'), '--config.train.steps=2']!r}\n"
                f"import shutil; shutil.rmtree({os.path.join(args.work, 'run')!r}, ignore_errors=True)\n"
                "train.define_flags()\ntry:\n  app.run(train.main)\nexcept SystemExit as e:\n  assert not e.code, e",
                devices_env),
      "sample": ("import sys; from absl import app; from launch import generate\nsys.argv = ['generate'] + "
                 f"{train_flags + ['--out=' + os.path.join(args.work, 'sample'), '--overwrite', '--steps=1', '--postopt_iters=1', '--image=' + os.path.join(args.work, 'clips', 'plane', 'frames', '000000.png')]!r}\n"
                 "generate.define_flags()\ntry:\n  app.run(generate.main)\nexcept SystemExit as e:\n  assert not e.code, e",
                 devices_env),
  }
  results = {}
  for name in args.stages:
    code, stage_env = stages[name]
    results[name] = run_stage(name, code, stage_env)
    r = results[name]
    print(f"{name:8s} peak RSS {r['peak_rss'] / GIB:6.2f} GiB = {r['peak_rss'] / weights:4.2f} x the weights "
          f"({weights / GIB:.2f} GiB); {r['seconds']:.0f} s", flush=True)
  if "train" in results:
    print(f"train_peak_rss_gib={results['train']['peak_rss'] / GIB:.3f}")


if __name__ == "__main__":
  main()
