"""One guided sampling step of One4D (classifier-free guidance: the unconditional and the conditional pass, then the
Euler update of both modalities) in JAX against the route a PyTorch user would run.

  jax    `sample.solver_step` with sampler "euler", as `sample.sample` calls it: one jitted program on the CFG batch of
         2 (negative prompt then prompt, `sample.guidance_text`), `one4d.apply` with lora_mode="auto" (the inference
         forward, as `pipeline.load` sets it: both branches, merged LoRA at this length, the links), guidance 6 and
         x <- x + (sigma' - sigma) v; compiled by the first call, which is not timed.
  torch  diffusers `WanTransformer3DModel` with two peft adapters (`torch_dlc.add_adapters` of `wan_dit.lora_to_peft`)
         and the links and XYZ projections as torch tensors: per pass (unconditional, conditional) one
         `torch_dlc.forward` (per block one forward per branch under `set_adapter`, then the links), then the
         guidance and the Euler update in torch; torch.inference_mode(), torch.set_num_threads(--threads).

Both fp32 in one process, on identical weights and inputs: a random diffusers state dict (norm scales and modulation
tables perturbed) converted for JAX; random LoRA B factors, links and XYZ projections (non-zero, so all of their math
runs); random latents, UMC condition, CLIP features, prompt and negative prompt embeddings; the first step of a
`--steps` Euler schedule (shift 5). The two steps alternate round by round (`common.interleaved`), so load from other
processes hits both alike; torch's OpenMP threads stay resident during the JAX step (dlc_forward.py measured that
this costs JAX a few per cent). Parity, checked before timing (exits non-zero above 1e-3): the new latents, and the
guided velocities (JAX's from the same compiled step on the schedule [1, 0, ...], where x' = x - v).

Default: 1.3B width Fun-InP (dim 1536, 12 heads, ffn 8960, in_dim 36, text_dim 4096, image_dim 1280), 8 blocks,
LoRA rank 64 on all 12 linears of every block, one link (the paper's density), latent 5 x 30 x 52 (1950 tokens),
batch 1, 512 text tokens per prompt, 257 CLIP tokens, torch on 2 threads, JAX on XLA's default (all cores):

    PYTHONPATH=. python benchmarks/sample_step.py
    PYTHONPATH=. python benchmarks/sample_step.py --layers 2 --dim 256 --heads 4 --ffn 512 --latent 3 16 16   # quick

The last line is exactly `jax_speedup_vs_torch=<torch seconds per step / JAX seconds per step>`.
"""

import argparse
import math
import os
import platform
import sys
import time

from benchmarks.common import (
  diffusers_wan,
  dit_arguments,
  dlc_arguments,
  dlc_config,
  fmt_times,
  interleaved,
  loadavg,
  med,
  random_trainable,
  set_xla_flags,
)

TOLERANCE = 1e-3  # max abs error of the new latents and of the guided velocities


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  dit_arguments(p, layers=8)
  p.set_defaults(warmup=0)  # the first call of each (JAX: compiling) gives the parity outputs and is not timed
  dlc_arguments(p)
  p.add_argument("--guidance", type=float, default=6.0)
  p.add_argument("--steps", type=int, default=50, help="Euler schedule whose first step is taken")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.guidance == 1.0:
    raise SystemExit("error: --guidance 1 has no unconditional pass; this benchmark measures a guided step")
  set_xla_flags(args.xla_flags)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from one4d_jax import sample, samplers
  from one4d_jax.flops import dlc_flops
  from one4d_jax.models import one4d
  from one4d_jax.models.wan import dit

  ocfg = dlc_config(args, lora_mode="auto")
  dcfg, links = ocfg.dit, ocfg.links
  latent, b = tuple(args.latent), args.batch
  tokens = math.prod(dit.token_grid(dcfg, latent))
  # Analytic GEMM FLOPs of a step: the DLC forward on the CFG batch of 2B (the Euler update is negligible).
  flop = 2 * b * dlc_flops(dcfg, tokens, args.rank, len(links), args.clip_tokens)["total"]
  print(f"# guided sampling step (CFG {args.guidance:g}, Euler): dim {dcfg.dim}, {dcfg.num_heads} heads, ffn "
        f"{dcfg.ffn_dim}, {dcfg.num_layers} blocks, in_dim {dcfg.in_dim}, text_dim {dcfg.text_dim}, image_dim "
        f"{dcfg.image_dim}; latent {latent} -> {tokens} tokens per branch; batch {b} (CFG batch {2 * b}); "
        f"{args.text_tokens} text tokens per prompt, {args.clip_tokens} CLIP tokens; LoRA rank {args.rank} alpha "
        f"{args.alpha:g} on the 12 linears of every block; links after blocks {links}; fp32; {flop / 1e9:.0f} GFLOP "
        f"per step (analytic)")
  print(f"# python {platform.python_version()}, jax {jax.__version__}, cpus {os.cpu_count()}, XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}, attention {dcfg.policy.attention!r}; load average {loadavg()}", flush=True)

  # ---- identical weights and inputs
  t0 = time.perf_counter()
  if args.no_torch:
    frozen = dit.init(dcfg, jax.random.key(args.seed))
  else:
    model, frozen, _ = diffusers_wan(dcfg, args.seed, args.threads)
  rng = np.random.default_rng(args.seed + 1)
  trainable = random_trainable(ocfg, args.seed, rng)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  rgb, xyz, cond = normal(b, one4d.LATENT, *latent), normal(b, one4d.LATENT, *latent), normal(b, one4d.COND, *latent)
  text, negative, clip = (normal(b, args.text_tokens, dcfg.text_dim), normal(b, args.text_tokens, dcfg.text_dim),
                          normal(b, args.clip_tokens, dcfg.image_dim))
  sigmas, timesteps = samplers.schedule("euler", args.steps, 5.0)
  probe = np.zeros_like(sigmas)
  probe[0] = 1.0  # sigmas for the velocity check: x' = x + (0 - 1) v
  print(f"# weights and inputs made in {time.perf_counter() - t0:.0f} s; step 0 of {args.steps}: t = "
        f"{timesteps[0]:g}, sigma {sigmas[0]:g} -> {sigmas[1]:g}", flush=True)

  # ---- JAX: the sampler's own jitted step
  frozen, trainable = jax.device_put(frozen), jax.device_put(trainable)
  j_cond, j_clip = jnp.asarray(cond), jnp.asarray(clip)
  j_text = sample.guidance_text(jnp.asarray(text), jnp.asarray(negative), args.guidance)
  j_sigmas, j_timesteps = jnp.asarray(sigmas), jnp.asarray(timesteps)

  def jax_step(sig=j_sigmas):
    state = samplers.init("euler", (jnp.asarray(rgb), jnp.asarray(xyz)))  # fresh: the step donates its state
    state = sample.solver_step(frozen, trainable, ocfg, "euler", state, sig, j_timesteps, j_cond, j_text, j_clip,
                               args.guidance)
    return jax.block_until_ready(state.x)

  t0 = time.perf_counter()
  jax_v = [x - np.asarray(x1) for x, x1 in zip((rgb, xyz), jax_step(jnp.asarray(probe)))]
  compile_s = time.perf_counter() - t0
  jax_x = [np.asarray(x) for x in jax_step()]
  print(f"# jax: first step (compiling) {compile_s:.1f} s", flush=True)
  fns = {"jax": jax_step}

  # ---- PyTorch: peft adapters from lora_to_peft, torch_dlc.forward per pass
  if not args.no_torch:
    import torch

    from checkpoints_convert import torch_dlc, wan_dit

    torch_dlc.add_adapters(model, {k: wan_dit.lora_to_peft(trainable["lora"][k]) for k in torch_dlc.BRANCHES},
                           args.rank, args.alpha)
    tensors = lambda tree: jax.tree.map(lambda a: torch.from_numpy(np.array(a)), tree)
    t_links, t_proj = tensors(trainable["links"]), tensors(trainable["xyz_projections"])
    t_x = [torch.from_numpy(a) for a in (rgb, xyz)]
    t_cond, t_clip, t_t = torch.from_numpy(cond), torch.from_numpy(clip), torch.full((b,), float(timesteps[0]))
    passes = {"uncond": torch.from_numpy(negative), "cond": torch.from_numpy(text)}
    dt = torch.tensor(sigmas[1] - sigmas[0])  # float32, as the JAX step computes it
    pass_times = {k: [] for k in passes}

    def torch_step(keep=None):
      with torch.inference_mode():
        v = {}
        for name, prompt in passes.items():
          t0 = time.perf_counter()
          v[name] = torch_dlc.forward(model, links, *t_x, t_cond, t_t, prompt, t_clip, t_links, t_proj)
          pass_times[name].append(time.perf_counter() - t0)
        guided = [u + args.guidance * (c - u) for u, c in zip(v["uncond"], v["cond"])]
        new = [x + dt * g for x, g in zip(t_x, guided)]
      if keep is not None:
        keep.update(x=[a.numpy() for a in new], v=[a.numpy() for a in guided],
                    gap=max(float((c - u).abs().max()) for u, c in zip(v["uncond"], v["cond"])))
      return new

    t0 = time.perf_counter()
    ref = {}
    torch_step(ref)
    print(f"# torch: first step {time.perf_counter() - t0:.1f} s (threads {torch.get_num_threads()}, torch "
          f"{torch.__version__})", flush=True)
    for v in pass_times.values():
      v.clear()
    fns["torch"] = torch_step

    print("\nparity (max abs error, JAX vs torch):")
    errors = {}
    for what, ours, theirs in (("new latents", jax_x, ref["x"]), ("guided velocity", jax_v, ref["v"])):
      for name, a, r in zip(("rgb", "xyz"), ours, theirs):
        errors[f"{what} {name}"] = err = float(np.abs(a - r).max())
        print(f"  {what:15s} {name}: {err:.2e} (max |torch| {np.abs(r).max():.2f})")
    moved = max(float(np.abs(a - x).max()) for a, x in zip(ref["x"], (rgb, xyz)))
    print(f"  the step moved the latents by up to {moved:.3e}; the prompts changed the velocities by up to "
          f"{ref['gap']:.3f} (the two passes differ)")
    if max(errors.values()) > TOLERANCE:
      raise SystemExit(f"error: JAX and torch steps differ by more than {TOLERANCE:g}: {errors}")

  for _ in range(args.warmup):
    for fn in fns.values():
      fn()
  load_before = loadavg()
  times, cpu = {k: [] for k in fns}, {k: [] for k in fns}
  for r in range(args.repeats):  # one round at a time, so a long run shows its progress
    wall, process = interleaved(fns, 1)
    for k in fns:
      times[k] += wall[k]
      cpu[k] += process[k]
    print(f"# round {r + 1}: " + ", ".join(f"{k} {wall[k][0]:.1f} s" for k in fns) + f"; load {loadavg()}", flush=True)
  load_after = loadavg()

  print(f"\nseconds per guided step ({args.repeats} interleaved rounds after {1 + args.warmup} untimed step(s) "
        f"each; load average before / after {load_before} / {load_after}):")
  for k, v in times.items():
    print(f"  {k:5s} {fmt_times(v)}  {flop / med(v) / 1e9:5.0f} GFLOP/s; process CPU {med(cpu[k]):.2f} s "
          f"({med(cpu[k]) / med(v):.2f} cores busy)")
  if args.no_torch:
    return
  for k, v in pass_times.items():
    print(f"    torch {k:6s} pass (one torch_dlc.forward) {fmt_times(v)}")
  speedup = med(times["torch"]) / med(times["jax"])
  paired = med([t / j for t, j in zip(times["torch"], times["jax"])])
  print(f"\ntorch / jax seconds per step = {speedup:.3f} (target >= 2; per-round median {paired:.3f}, ratio of minima "
        f"{min(times['torch']) / min(times['jax']):.3f}); half a JAX step (one pass's share) "
        f"{med(times['jax']) / 2:.3f}")
  print(f"jax_speedup_vs_torch={speedup:.3f}")


if __name__ == "__main__":
  sys.exit(main())
