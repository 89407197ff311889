"""One4D DLC forward (two LoRA branches + control links, one jitted call) against a plain Wan forward, and against what
a PyTorch user would write: diffusers' WanTransformer3DModel with two peft LoRA adapters, one forward per branch.

Five measurements in one invocation, all fp32 on CPU, on identical random weights (the diffusers state dict converted
with `DIFFUSERS_RULES`; the LoRA factors in peft as lora_A.weight [r, in] = a.T, lora_B.weight [out, r] = b.T):

  jax_dlc     `one4d.apply` (jit) with lora_mode="auto" (the inference forward): both branches in one forward with
              a branch axis of 2, LoRA on all 12 linears of every block (each branch's kernel W + s A_k B_k formed
              in the call where that takes fewer FLOPs than the factored update, i.e. above ~770-1300 tokens),
              control links after `--links` blocks;
  jax_dlc_factored  the same with lora_mode="factored" (the training forward: x W + s (x A_k) B_k);
  jax_plain   `dit.forward` (jit): one branch, no LoRA, same config (input = [rgb | cond]);
  torch_lora  diffusers + peft: `set_adapter("rgb")`, forward on [rgb | cond]; `set_adapter("xyz")`, forward on
              [xyz | zeros]; torch.inference_mode(), torch.set_num_threads(--threads). (No links: two independent
              forwards cannot exchange block states; links would need the blocks run in lockstep.)
  torch_plain the same diffusers model without adapters (a deep copy taken before peft injects its layers).

The LoRA factors reach peft through `wan_dit.lora_to_peft` and `torch_dlc.add_adapters` (the test reference's own
path). The LoRA B factors and the links are small random values (not zero), so all the LoRA and link math runs. Parity: with
the links zeroed, JAX's RGB (XYZ) velocity must equal the torch forward with the rgb (xyz) adapter; also JAX plain vs
torch plain. Reported: seconds per forward (median of the timed rounds; compilation and warm-up excluded; the four
calls interleaved round by round so load from other processes hits all alike), the ratios jax_dlc/jax_plain (ideal
2.0) and torch_lora/jax_dlc (JAX speed-up) as ratios of medians, as medians of the per-round ratios (robust to load that
changes between rounds) and as ratios of the minima, process CPU seconds per call, analytic GEMM FLOPs, max abs errors.
The last line is machine-readable: `BENCH_DLC_FORWARD {json}`.

Default: 1.3B width Fun-InP/I2V (dim 1536, 12 heads, ffn 8960, in_dim 36, text_dim 4096, image_dim 1280), 8 layers,
one link (the paper's density: 5 links in 40 blocks, evenly spaced, so after block 7), LoRA rank 64 alpha 64, latent
5 x 30 x 52 (1950 tokens), batch 1, 512 text tokens, 257
CLIP tokens:

    PYTHONPATH=. python benchmarks/dlc_forward.py
    PYTHONPATH=. python benchmarks/dlc_forward.py --layers 2 --links 0 1 --latent 3 16 16 --repeats 3   # quick
"""

import argparse
import copy
import json
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
  set_xla_flags,
)
from one4d_jax.flops import dlc_flops, lora_flops, wan_flops


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  dit_arguments(p, layers=8)
  dlc_arguments(p)
  p.add_argument("--lora-b-std", type=float, default=0.02, help="std of the random LoRA B factors")
  p.add_argument("--link-std", type=float, default=0.1, help="link kernels ~ N(0, (link_std/sqrt(dim))^2)")
  return p.parse_args(argv)


# -------------------------------------------------------------------------------------------------------- main


def main(argv=None):
  args = parse_args(argv)
  set_xla_flags(args.xla_flags)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from one4d_jax.models import one4d
  from one4d_jax.models.wan import dit

  ocfg = dlc_config(args)
  dcfg, links = ocfg.dit, ocfg.links
  ocfg_auto = ocfg.replace(dit=dcfg.with_policy(lora_mode="auto"))
  latent = tuple(args.latent)
  grid = dit.token_grid(dcfg, latent)
  tokens = math.prod(grid)
  B = args.batch
  fp = {k: B * v for k, v in wan_flops(dcfg, tokens, args.clip_tokens).items()}
  fd = {k: B * v for k, v in dlc_flops(dcfg, tokens, args.rank, len(links), args.clip_tokens).items()}
  flop_ratio = fd["total"] / fp["total"]

  print(f"# DLC forward benchmark  python {platform.python_version()}  jax {jax.__version__}  devices {jax.devices()}"
        f"  cpus {os.cpu_count()}")
  print(f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  attention kernel {dcfg.policy.attention!r}")
  print(f"# config: dim {dcfg.dim}, heads {dcfg.num_heads}, ffn {dcfg.ffn_dim}, layers {dcfg.num_layers}, in_dim "
        f"{dcfg.in_dim}, text_dim {dcfg.text_dim}, image_dim {dcfg.image_dim}; latent {latent} -> {tokens} tokens; "
        f"batch {B}; text {args.text_tokens} tokens (padded to {dcfg.text_len}); {args.clip_tokens} CLIP tokens; "
        f"LoRA rank {args.rank} alpha {args.alpha:g} on the 12 linears of every block; links after blocks {links}")
  print(f"# load average at start: {loadavg()}")

  rng = np.random.default_rng(args.seed)
  f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  rgb, xyz, cond = f32(B, 16, *latent), f32(B, 16, *latent), f32(B, 20, *latent)
  t = np.linspace(999.0, 37.5, B).astype(np.float32) if B > 1 else np.array([500.0], np.float32)
  text = f32(B, args.text_tokens, dcfg.text_dim)
  clip = f32(B, args.clip_tokens, dcfg.image_dim)
  x_rgb = np.concatenate([rgb, cond], axis=1)
  x_xyz = np.concatenate([xyz, np.zeros_like(cond)], axis=1)

  # ---- frozen weights: diffusers init (norm scales and modulation tables perturbed so they matter), converted
  torch = None
  if not args.no_torch:
    import diffusers
    import peft
    import torch
    model, frozen, seconds = diffusers_wan(dcfg, args.seed, args.threads)
    print(f"# built diffusers model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) and converted "
          f"weights in {seconds:.1f} s; torch {torch.__version__} (threads {torch.get_num_threads()}),"
          f" diffusers {diffusers.__version__}, peft {peft.__version__}")
  else:
    frozen = dit.init(dcfg, jax.random.key(args.seed))
  frozen = jax.device_put(frozen)

  # ---- trainable: LoRA A as initialised, B and the links small random values
  trainable = one4d.init_trainable(ocfg, dit.abstract_params(dcfg), jax.random.key(args.seed + 1))
  keys = iter(jax.random.split(jax.random.key(args.seed + 2), 10_000))
  trainable["lora"] = jax.tree_util.tree_map_with_path(
      lambda path, a: args.lora_b_std * jax.random.normal(next(keys), a.shape, a.dtype)
      if getattr(path[-1], "key", None) == "b" else a, trainable["lora"])
  trainable["links"] = {k: {"kernel": args.link_std / math.sqrt(dcfg.dim) * jax.random.normal(next(keys), v["kernel"].shape),
                            "bias": 0.01 * jax.random.normal(next(keys), v["bias"].shape)}
                        for k, v in trainable["links"].items()}
  trainable = jax.device_put(trainable)
  no_links = {**trainable, "links": jax.tree.map(jnp.zeros_like, trainable["links"])}
  n_lora = sum(a.size for a in jax.tree.leaves(trainable["lora"]))
  print(f"# trainable: {n_lora / 1e6:.2f} M LoRA params (both branches), "
        f"{sum(a.size for a in jax.tree.leaves(trainable['links'])) / 1e6:.2f} M link params")

  # ---- JAX: compile both forwards
  j_rgb, j_xyz, j_cond, j_t, j_text, j_clip, j_x = map(jnp.asarray, (rgb, xyz, cond, t, text, clip, x_rgb))
  dlc_fn = jax.jit(lambda fr, tr, *a: one4d.apply(fr, tr, ocfg_auto, *a))
  factored_fn = jax.jit(lambda fr, tr, *a: one4d.apply(fr, tr, ocfg, *a))
  plain_fn = jax.jit(lambda p, *a: dit.forward(p, dcfg, *a))
  t0 = time.perf_counter()
  dlc_c = dlc_fn.lower(frozen, trainable, j_rgb, j_xyz, j_cond, j_t, j_text, j_clip).compile()
  dlc_compile = time.perf_counter() - t0
  factored_c = factored_fn.lower(frozen, trainable, j_rgb, j_xyz, j_cond, j_t, j_text, j_clip).compile()
  t0 = time.perf_counter()
  plain_c = plain_fn.lower(frozen, j_x, j_t, j_text, j_clip).compile()
  plain_compile = time.perf_counter() - t0
  print(f"# jax compile: dlc {dlc_compile:.1f} s, plain {plain_compile:.1f} s")

  run_dlc = lambda tr=trainable: jax.block_until_ready(dlc_c(frozen, tr, j_rgb, j_xyz, j_cond, j_t, j_text, j_clip))
  run_factored = lambda: jax.block_until_ready(factored_c(frozen, trainable, j_rgb, j_xyz, j_cond, j_t, j_text, j_clip))
  run_plain = lambda: jax.block_until_ready(plain_c(frozen, j_x, j_t, j_text, j_clip))
  dlc_out = [np.asarray(o) for o in run_dlc(no_links)]  # parity outputs (links zero): same executable
  dlc_linked = [np.asarray(o) for o in run_dlc()]
  factored_linked = [np.asarray(o) for o in run_factored()]
  plain_out = np.asarray(run_plain())
  for _ in range(args.warmup):
    run_dlc()
    run_factored()
    run_plain()
  fns = {"jax_dlc": run_dlc, "jax_dlc_factored": run_factored, "jax_plain": run_plain}

  # ---- PyTorch route: peft adapters "rgb" and "xyz" on every block linear, the JAX factors in peft's layout
  if torch is not None:
    from checkpoints_convert import torch_dlc, wan_dit
    plain_model = copy.deepcopy(model)  # before peft wraps the linears
    peft_states = {name: wan_dit.lora_to_peft(jax.tree.map(np.asarray, trainable["lora"][name]))
                   for name in torch_dlc.BRANCHES}
    factors = torch_dlc.add_adapters(model, peft_states, args.rank, args.alpha)
    wrapped = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    if len(wrapped) != 12 * dcfg.num_layers:
      raise RuntimeError(f"peft wrapped {len(wrapped)} linears, expected 12 per block")
    print(f"# peft: adapters rgb, xyz on {len(wrapped)} linears ({len(factors)} factors), scaling "
          f"{ocfg.lora_alpha / ocfg.lora_rank:g}")

    pad = lambda a: np.pad(a, ((0, 0), (0, dcfg.text_len - a.shape[1]), (0, 0)))
    tt, tc, ti = torch.from_numpy(t), torch.from_numpy(pad(text)), torch.from_numpy(clip)
    tx_rgb, tx_xyz = torch.from_numpy(x_rgb), torch.from_numpy(x_xyz)
    pass_times = {"rgb": [], "xyz": []}

    def torch_lora():
      outs = []
      for name, tx in (("rgb", tx_rgb), ("xyz", tx_xyz)):
        t0 = time.perf_counter()
        model.set_adapter(name)
        with torch.inference_mode():
          outs.append(model(tx, tt, tc, encoder_hidden_states_image=ti, return_dict=False)[0])
        pass_times[name].append(time.perf_counter() - t0)
      return outs

    def torch_plain():
      with torch.inference_mode():
        return plain_model(tx_rgb, tt, tc, encoder_hidden_states_image=ti, return_dict=False)[0]

    torch_out = [o.numpy() for o in torch_lora()]
    torch_plain_out = torch_plain().numpy()
    for _ in range(args.warmup):
      torch_lora()
      torch_plain()
    for v in pass_times.values():
      v.clear()
    fns.update(torch_lora=torch_lora, torch_plain=torch_plain)

  # ---- timed: all calls interleaved round by round
  load_before = loadavg()
  times, cpu = interleaved(fns, args.repeats)
  load_after = loadavg()
  # ratios within a round (calls seconds apart see similar load), then the median over rounds
  paired = lambda a, b: med([x / y for x, y in zip(times[a], times[b])])

  # ---- report
  print(f"\nload average before/after timing: {load_before} / {load_after}")
  print(f"\nanalytic GEMM FLOPs per forward: plain {fp['total'] / 1e9:.1f} GFLOP; DLC {fd['total'] / 1e9:.1f} GFLOP "
        f"= 2 x {fp['per_branch'] / 1e9:.1f} latent-dependent + {fd['context'] / 1e9:.1f} shared context + "
        f"{fd['lora'] / 1e9:.1f} LoRA + {fd['links'] / 1e9:.1f} links  ->  FLOP ratio DLC/plain {flop_ratio:.3f}")
  print("\nseconds per forward:")
  summary = dict(layers=dcfg.num_layers, dim=dcfg.dim, heads=dcfg.num_heads, ffn=dcfg.ffn_dim, latent=list(latent),
                 tokens=tokens, batch=B, text_len=dcfg.text_len, clip_tokens=args.clip_tokens, rank=args.rank,
                 links=list(links), repeats=args.repeats, load=[load_before, load_after],
                 gflop_plain=round(fp["total"] / 1e9, 2), gflop_dlc=round(fd["total"] / 1e9, 2),
                 flop_ratio_dlc_plain=round(flop_ratio, 4), xla_flags=os.environ.get("XLA_FLAGS", ""),
                 attention=dcfg.policy.attention)
  flops_of = {"jax_dlc": fd["total"], "jax_dlc_factored": fd["total"], "jax_plain": fp["total"], "torch_plain": fp["total"],
              "torch_lora": 2 * (fp["total"] + lora_flops(dcfg, tokens, args.rank, args.clip_tokens)["total"] * B)}
  for k, v in times.items():
    print(f"  {k:12s} {fmt_times(v)}  {flops_of[k] / med(v) / 1e9:6.1f} GFLOP/s; process CPU median "
          f"{med(cpu[k]):.2f} s ({med(cpu[k]) / med(v):.2f} cores busy)")
    summary[f"{k}_s"] = round(med(v), 4)
    summary[f"{k}_min_s"] = round(min(v), 4)
    summary[f"{k}_cpu_s"] = round(med(cpu[k]), 3)
  if torch is not None:
    for name, v in pass_times.items():
      print(f"    torch pass {name:3s} {fmt_times(v)}")
  r_jax = med(times["jax_dlc"]) / med(times["jax_plain"])
  print(f"\njax_dlc / jax_plain = {r_jax:.3f}  (ideal 2.0, FLOP ratio {flop_ratio:.3f}, target <= 2.1); per-round "
        f"median {paired('jax_dlc', 'jax_plain'):.3f}, ratio of mins {min(times['jax_dlc']) / min(times['jax_plain']):.3f}")
  summary["ratio_jax_dlc_over_plain"] = round(r_jax, 4)
  r_factored = med(times["jax_dlc_factored"]) / med(times["jax_plain"])
  print(f"jax_dlc_factored / jax_plain = {r_factored:.3f}  (the training-mode forward); per-round median "
        f"{paired('jax_dlc_factored', 'jax_plain'):.3f}")
  summary["ratio_jax_dlc_factored_over_plain"] = round(r_factored, 4)
  summary["ratio_jax_dlc_over_plain_paired"] = round(paired("jax_dlc", "jax_plain"), 4)
  if torch is not None:
    r_torch_own = med(times["torch_lora"]) / med(times["torch_plain"])
    speedup = med(times["torch_lora"]) / med(times["jax_dlc"])
    plain_speedup = med(times["torch_plain"]) / med(times["jax_plain"])
    mins = lambda a, b: min(times[a]) / min(times[b])
    print(f"torch_lora / torch_plain = {r_torch_own:.3f}  (the PyTorch route vs its own base forward); per-round "
          f"median {paired('torch_lora', 'torch_plain'):.3f}, ratio of mins {mins('torch_lora', 'torch_plain'):.3f}")
    print(f"torch_lora / jax_dlc = {speedup:.3f}  (JAX DLC speed-up over the PyTorch route; target >= 1.3); per-round "
          f"median {paired('torch_lora', 'jax_dlc'):.3f}, ratio of mins {mins('torch_lora', 'jax_dlc'):.3f}")
    print(f"torch_plain / jax_plain = {plain_speedup:.3f}  (plain forward speed-up); per-round median "
          f"{paired('torch_plain', 'jax_plain'):.3f}, ratio of mins {mins('torch_plain', 'jax_plain'):.3f}")
    summary.update(ratio_torch_lora_over_plain=round(r_torch_own, 4), speedup_jax_dlc_vs_torch_lora=round(speedup, 4),
                   speedup_jax_plain_vs_torch_plain=round(plain_speedup, 4),
                   ratio_torch_lora_over_plain_paired=round(paired("torch_lora", "torch_plain"), 4),
                   speedup_jax_dlc_vs_torch_lora_paired=round(paired("torch_lora", "jax_dlc"), 4),
                   speedup_jax_plain_vs_torch_plain_paired=round(paired("torch_plain", "jax_plain"), 4))

    print("\nparity (max abs err; links zeroed for the branch checks):")
    checks = {"rgb_branch_vs_peft_rgb": (dlc_out[0], torch_out[0]), "xyz_branch_vs_peft_xyz": (dlc_out[1], torch_out[1]),
              "plain_vs_diffusers": (plain_out, torch_plain_out)}
    for k, (ours, ref) in checks.items():
      err = float(np.abs(ours - ref).max())
      print(f"  {k:24s} {err:.3e}  (max |ref| {np.abs(ref).max():.3e})")
      summary[f"err_{k}"] = float(f"{err:.4g}")
  effect = lambda a, b: float(np.abs(a - b).max())
  print(f"  merged_vs_factored       {effect(dlc_linked[0], factored_linked[0]):.3e} rgb, "
        f"{effect(dlc_linked[1], factored_linked[1]):.3e} xyz (links on)")
  summary["err_merged_vs_factored"] = float(f"{max(effect(a, b) for a, b in zip(dlc_linked, factored_linked)):.4g}")
  print(f"\nsanity: max |v_rgb(LoRA) - plain| {effect(dlc_out[0], plain_out):.3e} (LoRA is active); "
        f"max |v(links) - v(no links)| rgb {effect(dlc_linked[0], dlc_out[0]):.3e}, "
        f"xyz {effect(dlc_linked[1], dlc_out[1]):.3e} (links are active)")
  summary["lora_effect"] = float(f"{effect(dlc_out[0], plain_out):.4g}")
  summary["link_effect"] = float(f"{effect(dlc_linked[0], dlc_out[0]):.4g}")
  print("BENCH_DLC_FORWARD " + json.dumps(summary, sort_keys=True))
  return summary


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
