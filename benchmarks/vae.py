"""Wan2.1 VAE encode + decode: JAX (jit) against diffusers' AutoencoderKLWan (torch, CPU), same weights, same clip.

Default: a 17-frame 256x448 clip in [-1, 1], VAE width dim=32 (the real block structure: dim_mult 1,2,4,4, two res
blocks per stage, so a third of Wan's width; latents 5 x 32 x 56). Every implementation runs in its own subprocess so
that its peak memory is its own: `peak_rss` is the process's ru_maxrss (imports + weights + activations), `run_rss`
the peak minus the resident size just before the first encode (weights and imports excluded). Time: median of the
timed repeats after one untimed warm-up (which includes JAX's compilation). The weights are one random diffusers
state dict written to safetensors by the parent and read by both workers (the JAX worker imports no torch).

Implementations: `torch` (diffusers, its only mode: frame-chunked encode [0],[1:5],..., one latent frame at a time
decode), `jax` (whole sequence, the default of `vae.encode/decode`), `jax-chunked` (the same chunk schedule as the
reference, under lax.scan).

    PYTHONPATH=. python benchmarks/vae.py                        # the comparison above
    PYTHONPATH=. python benchmarks/vae.py --memory               # peak memory of chunked encode+decode, 81 x 352x624
    PYTHONPATH=. python benchmarks/vae.py --dim 16 --frames 5 --size 64 64 --repeats 1   # quick

The last line is a machine-readable summary (`BENCH_VAE {json}`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import peak_rss_bytes, rss_bytes


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dim", type=int, default=32, help="VAE base width (Wan2.1: 96)")
  p.add_argument("--frames", type=int, default=17)
  p.add_argument("--size", type=int, nargs=2, default=(256, 448), metavar=("H", "W"))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--impls", default="torch,jax,jax-chunked")
  p.add_argument("--memory", action="store_true", help="instead: chunked encode+decode of 81 frames at 352x624 with "
                 "width --memory-dim, plus the same at --frames for comparison")
  p.add_argument("--memory-dim", type=int, default=16)
  p.add_argument("--xla-flags", default="", help="appended to $XLA_FLAGS in the JAX workers")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def vae_config(dim: int):
  from one4d_jax.models.wan import vae
  return vae.preset("wan2.1", dim=dim)


def clip(args):
  import numpy as np
  rng = np.random.default_rng(args.seed)
  return rng.uniform(-1, 1, (1, 3, args.frames, *args.size)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------- workers


def run_torch(args) -> dict:
  import torch
  from diffusers import AutoencoderKLWan
  from safetensors.torch import load_file

  from checkpoints_convert import wan_vae
  torch.set_num_threads(args.threads)
  model = AutoencoderKLWan(**wan_vae.diffusers_kwargs(vae_config(args.dim))).eval()
  model.load_state_dict(load_file(args.weights), strict=True)
  video = torch.from_numpy(clip(args))

  def step():
    with torch.inference_mode():
      t0 = time.perf_counter()
      z = model.encode(video).latent_dist.mode()
      t1 = time.perf_counter()
      out = model.decode(z).sample
      t2 = time.perf_counter()
    return t1 - t0, t2 - t1, out.numpy()

  return measure(step, args)


def run_jax(args, chunked: bool) -> dict:
  import jax
  import numpy as np
  from safetensors.numpy import load_file

  from checkpoints_convert import core, wan_vae
  from one4d_jax.models.wan import vae
  cfg = vae_config(args.dim)
  params = core.convert_in_memory(wan_vae.diffusers_rules(cfg), load_file(args.weights), vae.abstract_params(cfg))
  params = jax.device_put(params)
  video = jax.device_put(clip(args))
  encode = jax.jit(lambda p, v: vae.encode(p, cfg, v, chunked=chunked))
  decode = jax.jit(lambda p, z: vae.decode(p, cfg, z, chunked=chunked))

  def step():
    t0 = time.perf_counter()
    z = encode(params, video).block_until_ready()
    t1 = time.perf_counter()
    out = decode(params, z).block_until_ready()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, np.asarray(out)

  return measure(step, args)


def measure(step, args) -> dict:
  import numpy as np
  baseline = rss_bytes()
  *_, out = step()  # warm-up (and compilation)
  times = [step()[:2] for _ in range(args.repeats)]
  enc, dec = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
  out_file = os.path.join(os.path.dirname(args.weights), f"out-{args.worker}.npy")
  np.save(out_file, out)
  return {"encode_s": enc, "decode_s": dec, "total_s": statistics.median(t[0] + t[1] for t in times),
          "peak_rss": peak_rss_bytes(), "run_rss": peak_rss_bytes() - baseline, "output": out_file}


# -------------------------------------------------------------------------------------------------------- parent


def write_weights(args, folder: str) -> str:
  """One random diffusers state dict (weights perturbed so biases and norm scales matter), as safetensors."""
  import torch
  from diffusers import AutoencoderKLWan
  from safetensors.torch import save_file

  from checkpoints_convert import wan_vae
  torch.manual_seed(args.seed)
  model = AutoencoderKLWan(**wan_vae.diffusers_kwargs(vae_config(args.dim)))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  path = os.path.join(folder, "weights.safetensors")
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
  return path


def spawn(args, impl: str, weights: str, frames: int, size, repeats: int) -> dict:
  argv = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--weights", weights, "--dim", str(args.dim),
          "--frames", str(frames), "--size", str(size[0]), str(size[1]), "--repeats", str(repeats),
          "--threads", str(args.threads), "--seed", str(args.seed)]
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
  env.setdefault("JAX_PLATFORMS", "cpu")
  if impl.startswith("jax") and args.xla_flags:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  run = subprocess.run(argv, capture_output=True, text=True, env=env)
  if run.returncode:
    raise RuntimeError(f"worker {impl} failed:\n{run.stderr[-4000:]}")
  return json.loads(run.stdout.strip().splitlines()[-1])


def gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB"


def compare(args):
  import numpy as np
  impls = args.impls.split(",")
  print(f"VAE dim={args.dim} (dim_mult 1,2,4,4, 2 res blocks), clip 1 x 3 x {args.frames} x {args.size[0]} x "
        f"{args.size[1]}, torch threads {args.threads}, repeats {args.repeats}")
  with tempfile.TemporaryDirectory() as tmp:
    weights = write_weights(args, tmp)
    results = {impl: spawn(args, impl, weights, args.frames, args.size, args.repeats) for impl in impls}
    outputs = {impl: np.load(r.pop("output")) for impl, r in results.items()}
  for impl, r in results.items():
    print(f"{impl:12s} encode {r['encode_s']:7.2f} s  decode {r['decode_s']:7.2f} s  total {r['total_s']:7.2f} s  "
          f"peak RSS {gib(r['peak_rss'])}  (run {gib(r['run_rss'])})")
  if "torch" in results:
    for impl in impls:
      if impl != "torch":
        r, t = results[impl], results["torch"]
        r["speedup_vs_torch"] = t["total_s"] / r["total_s"]
        r["max_abs_err_vs_torch"] = float(np.abs(outputs[impl] - outputs["torch"]).max())
        print(f"{impl:12s} torch/jax time ratio {r['speedup_vs_torch']:.2f}x (encode "
              f"{t['encode_s'] / r['encode_s']:.2f}x, decode {t['decode_s'] / r['decode_s']:.2f}x), "
              f"peak RSS jax/torch {r['peak_rss'] / t['peak_rss']:.2f}, decoded max|jax - torch| "
              f"{r['max_abs_err_vs_torch']:.1e}")
  print("BENCH_VAE " + json.dumps({"dim": args.dim, "frames": args.frames, "size": list(args.size), **results}))


def memory(args):
  print(f"chunked encode+decode peak memory, VAE dim={args.memory_dim}, 352x624")
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    args.dim = args.memory_dim
    weights = write_weights(args, tmp)
    for frames in (args.frames, 81):
      r = spawn(args, "jax-chunked", weights, frames, (352, 624), repeats=1)
      os.remove(r.pop("output"))
      io = (frames * 352 * 624 * 3 * 4) * 2  # float32 input clip and decoded clip
      out[frames] = r
      print(f"{frames:3d} frames: {r['total_s']:7.1f} s  peak RSS {gib(r['peak_rss'])}  (run {gib(r['run_rss'])}, of "
            f"which input + output clips {gib(io)})")
  print("BENCH_VAE_MEMORY " + json.dumps({"dim": args.memory_dim, "size": [352, 624], **out}))


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    result = run_torch(args) if args.worker == "torch" else run_jax(args, chunked=args.worker == "jax-chunked")
    print(json.dumps(result))
  elif args.memory:
    memory(args)
  else:
    compare(args)


if __name__ == "__main__":
  main()
