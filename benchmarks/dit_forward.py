"""Wan2.1 DiT forward: JAX (jit, fp32 and bf16 matmuls) against diffusers' WanTransformer3DModel (torch, CPU, fp32).

Both models get identical random weights (the diffusers state dict converted with `DIFFUSERS_RULES`) and the same
inputs. Reported per forward: seconds (median and best of the timed repeats; warm-up and compilation excluded), the
JAX/torch ratio, model FLOPs (counted analytically; cross-checked against the dot_general ops of the traced program
and XLA's cost analysis), achieved GFLOP/s, the fraction of a matmul peak measured in the same run (best of its calls,
in both weight layouts), and the max abs error of each JAX output against diffusers'. Each timed round runs every
matmul and every forward, so load from other processes hits all of them alike; the 1-min load average is printed per
round. On a shared machine, trust the figures only when that load stayed near or below the core count. The last line
is a machine-readable summary (`BENCH_DIT_FORWARD {json}`).

Default: 1.3B width (dim 1536, 12 heads, ffn 8960), 4 layers, T2V (in_dim 16, text_dim 4096), latent 5 x 30 x 52
(1950 tokens), batch 1, 512 text tokens:

    PYTHONPATH=. python benchmarks/dit_forward.py
    PYTHONPATH=. python benchmarks/dit_forward.py --layers 1 --latent 3 16 16 --repeats 3   # quick
    PYTHONPATH=. python benchmarks/dit_forward.py --breakdown                                # time the sub-parts too

XLA flags can be given with `--xla-flags "..."` (appended to $XLA_FLAGS before JAX starts).
"""

import argparse
import json
import math
import os
import platform
import sys
import time

from benchmarks.common import diffusers_wan, dit_arguments, fmt_times, interleaved, loadavg, med, set_xla_flags
from one4d_jax.flops import gemm, jaxpr_dot_flops, xla_flops


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  dit_arguments(p, layers=4)
  p.add_argument("--dtypes", default="float32,bfloat16", help="JAX matmul dtypes to run (comma-separated)")
  p.add_argument("--precision", default=None, choices=[None, "default", "high", "highest"],
                 help="jax_default_matmul_precision (default: leave JAX's default)")
  p.add_argument("--breakdown", action="store_true", help="also time sub-parts (embed, block, attention, FFN, head)")
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------- FLOPs


def model_flops(cfg, grid, batch: int = 1) -> dict[str, float]:
  """Multiply-adds x 2 of every GEMM of one forward (bias adds, norms, softmax and elementwise work not counted).

  Text is always padded to cfg.text_len tokens (both implementations attend to all 512), so the cross-attention
  projections and scores use cfg.text_len."""
  L, Lt, D, Fd = math.prod(grid), cfg.text_len, cfg.dim, cfg.ffn_dim
  patch = math.prod(cfg.patch_size)
  per_block = {
      "self_qkvo": 4 * gemm(L, D, D),
      "self_attn_scores_pv": 2 * gemm(L, D, L),  # QK^T and PV, summed over heads: 2 * (2 L L head_dim) * heads
      "cross_q_o": 2 * gemm(L, D, D),
      "cross_kv": 2 * gemm(Lt, D, D),
      "cross_attn_scores_pv": 2 * gemm(L, D, Lt),
      "ffn": gemm(L, D, Fd) + gemm(L, Fd, D),
  }
  out = {k: batch * v * cfg.num_layers for k, v in per_block.items()}
  out["patch_embed"] = batch * gemm(L, cfg.in_dim * patch, D)
  out["text_embed"] = batch * (gemm(Lt, cfg.text_dim, D) + gemm(Lt, D, D))
  out["time_embed"] = batch * (gemm(1, cfg.freq_dim, D) + gemm(1, D, D) + gemm(1, D, 6 * D))
  out["head"] = batch * gemm(L, D, cfg.out_dim * patch)
  out["per_block"] = batch * sum(per_block.values())
  out["total"] = sum(v for k, v in out.items() if k != "per_block")
  return out


# -------------------------------------------------------------------------------------------------------- main


def main(argv=None):
  args = parse_args(argv)
  set_xla_flags(args.xla_flags)

  import jax
  import jax.numpy as jnp
  import numpy as np

  if args.precision:
    jax.config.update("jax_default_matmul_precision", args.precision)

  from one4d_jax.models.wan import dit

  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  base = dit.DiTConfig(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers, in_dim=16,
                       text_dim=4096, policy=dit.FLOAT32.replace(attention=args.attention))
  latent = tuple(args.latent)
  grid = dit.token_grid(base, latent)
  tokens = math.prod(grid)
  flops = model_flops(base, grid, args.batch)

  print(f"# DiT forward benchmark  python {platform.python_version()}  jax {jax.__version__}  "
        f"devices {jax.devices()}  cpus {os.cpu_count()}")
  print(f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  matmul precision={jax.config.jax_default_matmul_precision}")
  print(f"# config: dim {base.dim}, heads {base.num_heads}, ffn {base.ffn_dim}, layers {base.num_layers}, "
        f"in_dim {base.in_dim}, text_dim {base.text_dim}; latent {latent} -> {tokens} tokens; batch {args.batch}; "
        f"text {args.text_tokens} tokens (padded to {base.text_len})")
  print(f"# load average at start: {loadavg()}")

  rng = np.random.default_rng(args.seed)
  x = rng.standard_normal((args.batch, base.in_dim, *latent)).astype(np.float32)
  t = np.linspace(999.0, 37.5, args.batch).astype(np.float32) if args.batch > 1 else np.array([500.0], np.float32)
  text = rng.standard_normal((args.batch, args.text_tokens, base.text_dim)).astype(np.float32)

  # ---- identical weights: diffusers init (norm scales and modulation tables perturbed so they matter), converted
  torch = None
  if not args.no_torch:
    import torch
    model, params32, seconds = diffusers_wan(base, args.seed, args.threads)
    print(f"# built diffusers model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) and converted "
          f"weights in {seconds:.1f} s; torch {torch.__version__}, threads {torch.get_num_threads()}")
  else:
    params32 = dit.init(base, jax.random.key(args.seed))
  params32 = jax.device_put(params32)

  # ---- JAX models: one jitted forward per matmul dtype (bf16 weights stored in bf16, as the presets do)
  jax_runs = {}
  for dt in dtypes:
    cfg = base.with_policy(dtype=dt, param_dtype=dt)
    params = params32 if dt == "float32" else jax.tree.map(lambda a: a.astype(dt), params32)
    fwd = jax.jit(lambda p, x, t, c, cfg=cfg: dit.forward(p, cfg, x, t, c))
    t0 = time.perf_counter()
    lowered = fwd.lower(params, x, t, text)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    xf = xla_flops(compiled)
    closed = jax.make_jaxpr(lambda p, x, t, c, cfg=cfg: dit.forward(p, cfg, x, t, c))(params, x, t, text)
    jf, jf_once = jaxpr_dot_flops(closed), jaxpr_dot_flops(closed, loop_trips=False)
    jx, jt, jc = jnp.asarray(x), jnp.asarray(t), jnp.asarray(text)
    run = lambda compiled=compiled, params=params: compiled(params, jx, jt, jc).block_until_ready()
    out = np.asarray(run())
    for _ in range(args.warmup):
      run()
    jax_runs[dt] = dict(cfg=cfg, run=run, out=out, compile_s=compile_s, xla_flops=xf, jaxpr_flops=jf,
                        jaxpr_flops_once=jf_once)
    print(f"# jax {dt}: compiled in {compile_s:.1f} s; XLA cost-analysis flops {xf:.4g}" if xf is not None else
          f"# jax {dt}: compiled in {compile_s:.1f} s; no XLA cost analysis")

  torch_run = None
  if torch is not None:
    tx, tt, tc = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(
        np.pad(text, ((0, 0), (0, base.text_len - args.text_tokens), (0, 0))))

    def torch_run():
      with torch.inference_mode():
        return model(tx, tt, tc, return_dict=False)[0]

    ref = torch_run().numpy()
    for _ in range(args.warmup):
      torch_run()

  # ---- matmul peak of a comparable shape (the FFN's first GEMM), in the weight layouts each framework uses
  M, K, N = tokens * args.batch, base.dim, base.ffn_dim
  mm_flops = 2.0 * M * K * N
  a32 = jnp.asarray(rng.standard_normal((M, K)).astype(np.float32))
  w_kn = jnp.asarray(rng.standard_normal((K, N)).astype(np.float32) / math.sqrt(K))
  mm = jax.jit(jnp.dot)
  mm_t = jax.jit(lambda a, w: jnp.dot(a, w.T))
  w_nk = jnp.asarray(np.asarray(w_kn).T.copy())
  peak_fns = {("jax_float32", "x @ W[K,N]"): lambda: mm(a32, w_kn).block_until_ready(),
              ("jax_float32", "x @ W[N,K].T"): lambda: mm_t(a32, w_nk).block_until_ready()}
  if "bfloat16" in dtypes:
    a16, w16 = a32.astype(jnp.bfloat16), w_kn.astype(jnp.bfloat16)
    peak_fns[("jax_bfloat16", "x @ W[K,N]")] = lambda: mm(a16, w16).block_until_ready()
  if torch is not None:
    ta, tw_kn, tw_nk = (torch.from_numpy(np.array(a)) for a in (a32, w_kn, w_nk))

    def torch_matmul():
      with torch.inference_mode():
        torch.matmul(ta, tw_kn)

    def torch_linear():
      with torch.inference_mode():
        torch.nn.functional.linear(ta, tw_nk)

    peak_fns[("torch_float32", "x @ W[K,N]")] = torch_matmul
    peak_fns[("torch_float32", "linear(x, W[N,K])")] = torch_linear
  for fn in peak_fns.values():
    fn()

  # ---- timed rounds: each round runs every matmul twice and every forward once, so all see the same load
  fwd_fns = {f"jax_{dt}": r["run"] for dt, r in jax_runs.items()}
  if torch_run is not None:
    fwd_fns["torch_float32"] = torch_run
  peak_times = {k: [] for k in peak_fns}
  fwd_times = {k: [] for k in fwd_fns}
  loads = [loadavg()]
  for _ in range(args.repeats):
    for k, v in interleaved(peak_fns, 2)[0].items():
      peak_times[k] += v
    for k, v in interleaved(fwd_fns, 1)[0].items():
      fwd_times[k] += v
    loads.append(loadavg())
  load_before, load_after = loads[0], loads[-1]

  # ---- report
  total = flops["total"]
  summary_flops = {}
  print(f"\nload average (1/5/15 min) before/after timing: {load_before} / {load_after}; 1-min load after each "
        f"round: {[l.split()[0] for l in loads[1:]]}")
  print(f"\nmodel FLOPs per forward (analytic, GEMMs only): {total / 1e9:.2f} GFLOP "
        f"({flops['per_block'] / 1e9:.2f} per block)")
  for k, v in flops.items():
    if k not in ("total", "per_block"):
      print(f"  {k:22s} {v / 1e9:9.2f} GFLOP  {100 * v / total:5.1f}%")
  for dt, r in jax_runs.items():
    print(f"cross-check ({dt}): dot_general FLOPs in the traced JAX program {r['jaxpr_flops'] / 1e9:.2f} GFLOP "
          f"= {r['jaxpr_flops'] / total:.4f} x analytic")
    if r["xla_flops"] is not None:
      print(f"  XLA cost_analysis flops {r['xla_flops'] / 1e9:.2f} GFLOP; XLA counts each while-loop body (the layer "
            f"scan, lax.map) once: the program's dots counted that way are {r['jaxpr_flops_once'] / 1e9:.2f} GFLOP "
            f"(XLA / that = {r['xla_flops'] / r['jaxpr_flops_once']:.4f}; the excess is elementwise work)")
    summary_flops[dt] = dict(jaxpr=r["jaxpr_flops"], xla=r["xla_flops"], jaxpr_once=r["jaxpr_flops_once"])

  print(f"\nmatmul peak [{M},{K}]x[{K},{N}] ({mm_flops / 1e9:.1f} GFLOP), best of {2 * args.repeats} calls:")
  peaks: dict[str, float] = {}
  for (fw, layout), v in peak_times.items():
    rate = mm_flops / min(v)
    peaks[fw] = max(peaks.get(fw, 0.0), rate)
    print(f"  {fw:14s} {layout:18s} {rate / 1e9:7.1f} GFLOP/s (best)  {fmt_times(v)}")
  best_f32_peak = max(v for k, v in peaks.items() if k.endswith("float32"))
  print("  peak per framework: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))

  print("\nforward (% of peak: median time / best time against the framework's own best matmul):")
  summary = dict(layers=base.num_layers, dim=base.dim, tokens=tokens, text_len=base.text_len, batch=args.batch,
                 gflop=round(total / 1e9, 3), load=[load_before, load_after],
                 xla_flags=os.environ.get("XLA_FLAGS", ""), attention=args.attention,
                 jaxpr_gflop={k: round(v["jaxpr"] / 1e9, 3) for k, v in summary_flops.items()},
                 xla_cost_gflop={k: round(v["xla"] / 1e9, 3) for k, v in summary_flops.items() if v["xla"]})
  results = {}
  for k, v in fwd_times.items():
    s = med(v)
    rate, best_rate = total / s, total / min(v)
    own_peak = peaks.get(k, best_f32_peak)
    results[k] = dict(s=s)
    print(f"  {k:14s} {fmt_times(v)}  {rate / 1e9:6.1f} GFLOP/s = {100 * rate / own_peak:5.1f}% / "
          f"{100 * best_rate / own_peak:5.1f}% of its own peak; {100 * rate / best_f32_peak:5.1f}% of the best fp32 "
          "peak (median)")
    summary[f"{k}_s"] = round(s, 4)
    summary[f"{k}_min_s"] = round(min(v), 4)
    summary[f"{k}_gflops"] = round(rate / 1e9, 2)
    summary[f"{k}_pct_peak"] = round(100 * rate / own_peak, 1)
    summary[f"{k}_pct_peak_best"] = round(100 * best_rate / own_peak, 1)
  for k, v in peaks.items():
    summary[f"peak_{k}_gflops"] = round(v / 1e9, 2)
  if "torch_float32" in results:
    for dt in jax_runs:
      ratio = results[f"jax_{dt}"]["s"] / results["torch_float32"]["s"]
      ratio_min = min(fwd_times[f"jax_{dt}"]) / min(fwd_times["torch_float32"])
      print(f"  jax_{dt} / torch_float32 time ratio: {ratio:.3f} median, {ratio_min:.3f} best  "
            f"({'faster' if ratio < 1 else 'slower'} than torch)")
      summary[f"ratio_jax_{dt}_over_torch"] = round(ratio, 4)
      summary[f"ratio_jax_{dt}_over_torch_best"] = round(ratio_min, 4)

  if torch_run is not None:
    print("\nparity against diffusers (same weights and inputs):")
    scale = float(np.abs(ref).max())
    for dt, r in jax_runs.items():
      err = float(np.abs(r["out"] - ref).max())
      print(f"  jax_{dt}: max abs err {err:.3e}  (max |ref| {scale:.3e}, relative {err / scale:.2e})")
      summary[f"max_abs_err_{dt}"] = float(f"{err:.4g}")
    summary["max_abs_ref"] = float(f"{scale:.4g}")

  if args.breakdown:
    breakdown(args, jax_runs, params32, x, t, text, grid, model if torch is not None else None, torch)

  print("BENCH_DIT_FORWARD " + json.dumps(summary, sort_keys=True))
  return summary


# --------------------------------------------------------------------------------------------------- breakdown


def breakdown(args, jax_runs, params32, x, t, text, grid, model, torch):
  """Seconds of the parts of one forward: embed, one block and its pieces (self-attention with and without the
  projections, cross-attention, FFN), head; JAX for each dtype run, torch (diffusers modules) for fp32."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from one4d_jax.models import attention
  from one4d_jax.models.wan import dit

  L, D = math.prod(grid), args.dim
  reps = max(3, args.repeats)
  one = model_flops(jax_runs[next(iter(jax_runs))]["cfg"].replace(num_layers=1), grid, args.batch)
  part_flops = {"embed": one["patch_embed"] + one["text_embed"] + one["time_embed"], "block": one["per_block"],
                "self_attn(module)": one["self_qkvo"] + one["self_attn_scores_pv"],
                "self_attn(kernel)": one["self_attn_scores_pv"],
                "cross_attn(module)": one["cross_q_o"] + one["cross_kv"] + one["cross_attn_scores_pv"],
                "ffn": one["ffn"], "head": one["head"]}
  rate = lambda name, ts: f"{part_flops[name] / min(ts) / 1e9:7.1f} GFLOP/s at min"

  def ffn(p, h, dtype):
    dense = lambda q, y: jnp.einsum("...i,io->...o", y.astype(dtype), q["kernel"].astype(dtype)) + q["bias"].astype(dtype)
    return dense(p["ffn_2"], jax.nn.gelu(dense(p["ffn_1"], h), approximate=True))
  print(f"\nbreakdown (median of {reps}; load {loadavg()}):")
  rng = np.random.default_rng(1)
  for dt, r in jax_runs.items():
    cfg = r["cfg"]
    params = jax.tree.map(lambda a: a.astype(cfg.policy.param_dtype), params32)
    block0 = jax.tree.map(lambda a: a[0], params["blocks"])
    h = jnp.asarray(rng.standard_normal((1, args.batch, L, D)).astype(np.float32))
    tokens, e, e0, txt, _ = jax.jit(lambda p: dit.embed(p, cfg, x[None], t, text))(params["embed"])
    cos, sin = (jnp.asarray(a) for a in dit.rope_tables(cfg, grid))
    hq = h.astype(cfg.policy.dtype)
    q4 = hq.reshape(args.batch, L, cfg.num_heads, cfg.head_dim)
    parts = {
        "embed": (jax.jit(lambda p: dit.embed(p, cfg, x[None], t, text)), (params["embed"],)),
        "block": (jax.jit(lambda p, h: dit.run_blocks(jax.tree.map(lambda a: a[None], p), cfg, h, e0, txt, None,
                                                        grid)), (block0, h)),
        "self_attn(module)": (jax.jit(lambda p, h: dit.SelfAttention(cfg).apply({"params": p}, h, cos, sin)),
                              (block0["self_attn"], h)),
        "self_attn(kernel)": (jax.jit(attention.get(cfg.attention)), (q4, q4, q4)),
        "cross_attn(module)": (jax.jit(lambda p, h: dit.CrossAttention(cfg).apply({"params": p}, h, txt, None)),
                               (block0["cross_attn"], h)),
        "ffn": (jax.jit(lambda p, h: ffn(p, h, cfg.policy.dtype)), (block0, h)),
        "head": (jax.jit(lambda p, h: dit.head(p, cfg, h, e, grid)), (params["head"], h)),
    }
    for name, (fn, a) in parts.items():
      compiled = fn.lower(*a).compile()
      call = lambda: jax.block_until_ready(compiled(*a))
      call()
      ts = interleaved({name: call}, reps)[0][name]
      print(f"  jax_{dt:9s} {name:20s} median {med(ts):8.4f} s  min {min(ts):8.4f} s  {rate(name, ts)}")
  if model is None:
    return
  blk = model.blocks[0]
  with torch.inference_mode():
    th = torch.from_numpy(rng.standard_normal((args.batch, L, D)).astype(np.float32))
    tx = torch.from_numpy(x)
    tc = torch.from_numpy(np.pad(text, ((0, 0), (0, 512 - text.shape[1]), (0, 0))))
    rot = model.rope(tx)
    temb, tproj, enc, _ = model.condition_embedder(torch.from_numpy(t), tc, None)
    tproj = tproj.unflatten(1, (6, -1))
    q4 = th.unflatten(2, (args.heads, -1)).transpose(1, 2)
    parts = {
        "embed": lambda: (model.patch_embedding(tx), model.condition_embedder(torch.from_numpy(t), tc, None)),
        "block": lambda: blk(th, enc, tproj, rot),
        "self_attn(module)": lambda: blk.attn1(th, None, None, rot),
        "self_attn(kernel)": lambda: torch.nn.functional.scaled_dot_product_attention(q4, q4, q4),
        "cross_attn(module)": lambda: blk.attn2(th, enc, None, None),
        "ffn": lambda: blk.ffn(th),
        "head": lambda: model.proj_out(model.norm_out(th)),
    }
    for name, fn in parts.items():
      fn()
      ts = interleaved({name: fn}, reps)[0][name]
      print(f"  torch_float32 {name:20s} median {med(ts):8.4f} s  min {min(ts):8.4f} s  {rate(name, ts)}")


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
