"""One4D DLC training step (forward, backward, AdamW update) in JAX against the route a PyTorch user would run.

  jax    one jitted step: `one4d.apply` (both branches, factored LoRA, the links) under `jax.value_and_grad` over the
         trainable tree, then `train.make_optimizer` (global-norm clipping to 1, AdamW with the linear warm-up), the
         state donated; `train.train_step`'s body with its noise and timestep draws replaced by the given inputs. The
         process is set up as launch/train sets up its own (`runtime.configure()`'s CPU XLA flags, malloc settings,
         memory released after compiling); no remat by default (`--remat`), like the torch route.
  torch  diffusers `WanTransformer3DModel` (from_pretrained) with two peft LoRA adapters and the links and XYZ
         projections as torch parameters, run by `checkpoints_convert.torch_dlc.forward` (the reference that
         tests/test_dlc_reference.py matches in values and gradients: per block one forward per branch under
         `set_adapter`, then the links); `backward()`, `clip_grad_norm_`, `torch.optim.AdamW` with the same lr, betas,
         eps, weight decay and warm-up (LambdaLR) over the trainable parameters only (LoRA of both branches, links, XYZ
         projections: the base is frozen).

Both fp32, identical weights and inputs: a random diffusers state dict (norm scales and modulation tables perturbed)
converted for JAX; random LoRA B factors, links and XYZ projections (non-zero, so all of their math runs); fixed
noisy latents, targets and timestep. Loss: flow-matching MSE on both modalities (`flow.mse` of `velocity_from_wan`
against `z - eps`, weights 1). Each implementation runs in its own subprocess (the torch one imports no JAX) so its
memory is its own: `peak RSS` is the process's ru_maxrss (imports + weights + optimizer state + step temporaries),
`step RSS` the peak minus the resident size just before the first step. The two run one after the other (both
resident at once need ~22 GiB at the default size), each stepping when the parent says. Time (wall and process CPU
seconds, as measured inside each worker): the first step alone, which is the warm-up (JAX: after an ahead-of-time
compile, reported separately), `--warmup` more untimed steps (default none), then the median of `--repeats` steps.
Check:
the first step's loss and gradient norm agree within 1e-4 relative, and the losses of the later steps and the final
trainable parameters show the optimizers agree.

Default: 1.3B width Fun-InP (dim 1536, 12 heads, ffn 8960, in_dim 36, text_dim 4096, image_dim 1280), 4 blocks,
LoRA rank 64 on all 12 linears of every block, one link (the paper's density), latent 5 x 30 x 52 (1950 tokens per
branch), batch 1, 512 text tokens, 257 CLIP tokens, torch on 2 threads, JAX on XLA's default (all cores):

    PYTHONPATH=. python benchmarks/train_step.py
    PYTHONPATH=. python benchmarks/train_step.py --layers 2 --dim 256 --heads 4 --ffn 512 --latent 3 16 16   # quick

The last line is exactly `jax_speedup_vs_torch=<torch seconds per step / JAX seconds per step>`.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import (
  diffusers_wan,
  dit_arguments,
  dlc_arguments,
  dlc_config,
  fmt_times,
  loadavg,
  med,
  peak_rss_bytes,
  random_trainable,
  rss_bytes,
  set_xla_flags,
)

GIB = 2 ** 30
TAG = "@train_step "  # marks a worker's replies on its stdout


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  dit_arguments(p, layers=4)
  p.set_defaults(repeats=3, warmup=0)  # the first step, reported alone, is the warm-up
  dlc_arguments(p)
  p.add_argument("--lr-warmup", type=int, default=2, help="optimizer steps of the linear lr warm-up (the first has "
                 "lr 0), short so that the timed steps update the parameters")
  p.add_argument("--remat", default="none", help="JAX remat policy (dit.remat_policy; the 1.3B training config uses "
                 "'full'); none keeps every activation, as the torch route does")
  p.add_argument("--t", type=float, default=0.7, help="the paper's flow time of the fixed noisy inputs (1 = data)")
  p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--work", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def configs(args):
  """(One4DConfig, TrainConfig) of the run."""
  from one4d_jax.train import step as train
  return dlc_config(args, remat=args.remat), train.TrainConfig(warmup_steps=args.lr_warmup)


def torch_names(trainable: dict) -> dict:
  """The trainable tree (numpy) as the torch worker names it: `lora/<branch>/<peft state key>` (lora_A [r, in],
  lora_B [out, r]), the '/'-joined tree path for the links and XYZ projections."""
  import numpy as np

  from checkpoints_convert import wan_dit
  from one4d_jax.checkpoints import flatten
  out = {f"lora/{b}/{k}": v for b in ("rgb", "xyz") for k, v in wan_dit.lora_to_peft(trainable["lora"][b]).items()}
  out.update({k: np.asarray(v) for k, v in flatten(trainable).items() if not k.startswith("lora/")})
  return out


# ------------------------------------------------------------------------------------------------------- workers


def serve(step, finish, info: dict) -> None:
  """A worker's loop: reports `info` and its resident size, then runs one step per `step` line on stdin, answering
  (wall seconds, process CPU seconds, loss, gradient norm), until `done`: then `finish()` and the peak RSS."""
  baseline = rss_bytes()
  reply(**info, load_rss=baseline)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    c0, t0 = time.process_time(), time.perf_counter()
    loss, norm = step()
    reply(wall=time.perf_counter() - t0, cpu=time.process_time() - c0, loss=loss, grad_norm=norm)
  peak = peak_rss_bytes()  # before `finish` copies the parameters out
  finish()
  reply(peak_rss=peak, step_rss=peak - baseline)


def reply(**fields) -> None:
  print(TAG + json.dumps(fields), flush=True)


def bench_step(frozen, state, batch, *, cfg, tc, tx):
  """`train.train_step` (one micro-batch) on given noisy latents, targets and timesteps -> (state, (loss, norm))."""
  import jax
  import optax

  from one4d_jax import flow
  from one4d_jax.models import one4d
  from one4d_jax.train import step as train

  def loss_fn(trainable):
    out_rgb, out_xyz = one4d.apply(frozen, trainable, cfg, batch["rgb_t"], batch["xyz_t"], batch["cond"],
                                   batch["timestep"], batch["text"], batch["clip"])
    return (tc.rgb_weight * flow.mse(flow.velocity_from_wan(out_rgb), batch["target_rgb"])
            + tc.xyz_weight * flow.mse(flow.velocity_from_wan(out_xyz), batch["target_xyz"]))

  loss, grads = jax.value_and_grad(loss_fn)(state.trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  state = train.TrainState(state.step + 1, optax.apply_updates(state.trainable, updates), opt_state)
  return state, (loss, optax.tree.norm(grads))


def serve_jax(args) -> None:
  set_xla_flags(args.xla_flags)
  import jax
  from safetensors.numpy import load_file, save_file

  from one4d_jax import runtime
  from one4d_jax.checkpoints import unflatten
  from one4d_jax.train import step as train

  runtime.configure()  # what launch/train does first: the CPU XLA flags
  runtime.return_large_frees_to_os()  # as checkpoints.load does

  ocfg, tc = configs(args)
  tx = train.make_optimizer(tc)
  frozen = jax.device_put(unflatten(load_file(os.path.join(args.work, "frozen.safetensors"))))
  state = train.init_state(jax.device_put(unflatten(load_file(os.path.join(args.work, "trainable.safetensors")))), tx)
  batch = jax.device_put(load_file(os.path.join(args.work, "inputs.safetensors")))
  fn = jax.jit(functools.partial(bench_step, cfg=ocfg, tc=tc, tx=tx), donate_argnums=(1,))
  t0 = time.perf_counter()
  compiled = fn.lower(frozen, state, batch).compile()
  compile_s = time.perf_counter() - t0
  runtime.release_free_memory()  # as launch/train does after compiling

  def step():
    nonlocal state
    state, (loss, norm) = compiled(frozen, state, batch)
    return float(loss), float(norm)  # waits for the step

  final = os.path.join(args.work, "final-jax.safetensors")
  finish = lambda: save_file(torch_names(jax.device_get(state.trainable)), final)
  temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", -1)
  serve(step, finish, {"compile_s": compile_s, "threads": f"XLA default ({os.cpu_count()} cpus)", "temp_bytes": temp})


def serve_torch(args) -> None:
  import diffusers
  import numpy as np
  import torch
  from safetensors.numpy import load_file, save_file

  from checkpoints_convert import torch_dlc

  torch.set_num_threads(args.threads)
  with open(os.path.join(args.work, "run.json")) as f:
    cfg = json.load(f)
  model = diffusers.WanTransformer3DModel.from_pretrained(os.path.join(args.work, "diffusers")).train()
  model.requires_grad_(False)
  saved = load_file(os.path.join(args.work, "trainable-torch.safetensors"))
  peft_states = {b: {k.removeprefix(f"lora/{b}/"): v for k, v in saved.items() if k.startswith(f"lora/{b}/")}
                 for b in torch_dlc.BRANCHES}
  lora_params = torch_dlc.add_adapters(model, peft_states, args.rank, args.alpha)
  lora = list(lora_params.values())
  others = {k: torch.nn.Parameter(torch.from_numpy(v)) for k, v in saved.items() if not k.startswith("lora/")}
  tree = {}
  for k, p in others.items():  # links/rgb_from_xyz/kernel -> tree["links"]["rgb_from_xyz"]["kernel"]
    *parents, last = k.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[last] = p
  params = lora + list(others.values())
  tc = cfg["train"]
  opt = torch.optim.AdamW(params, lr=tc["lr"], betas=(tc["b1"], tc["b2"]), eps=tc["eps"],
                          weight_decay=tc["weight_decay"])
  warmup = max(tc["warmup_steps"], 1)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / warmup, 1.0))  # optax's join_schedules
  x = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(args.work, "inputs.safetensors")).items()}
  mse = torch.nn.functional.mse_loss

  def step():
    opt.zero_grad(set_to_none=True)
    v_rgb, v_xyz = torch_dlc.forward(model, cfg["links"], x["rgb_t"], x["xyz_t"], x["cond"], x["timestep"],
                                     x["text"], x["clip"], tree["links"], tree["xyz_projections"])
    loss = tc["rgb_weight"] * mse(-v_rgb, x["target_rgb"]) + tc["xyz_weight"] * mse(-v_xyz, x["target_xyz"])
    for p in lora:  # set_adapter left only the last branch's factors requiring gradients
      p.requires_grad_(True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, tc["max_grad_norm"])
    opt.step()
    sched.step()
    return loss.item(), norm.item()

  def finish():
    final = {**{f"lora/{b}/{k}": p for (b, k), p in lora_params.items()}, **others}
    save_file({k: np.ascontiguousarray(p.detach().numpy()) for k, p in final.items()},
              os.path.join(args.work, "final-torch.safetensors"))

  serve(step, finish, {"compile_s": 0.0, "threads": torch.get_num_threads(), "jax_imported": "jax" in sys.modules,
                       "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}"})


# -------------------------------------------------------------------------------------------------------- parent


def write_inputs(args, work: str) -> dict:
  """Weights, trainable tree and inputs for both workers, under `work`; returns a description of the run."""
  import dataclasses

  import jax
  import numpy as np
  from safetensors.numpy import save_file

  from one4d_jax import flow
  from one4d_jax.checkpoints import flatten
  from one4d_jax.models import one4d
  from one4d_jax.models.wan import dit

  ocfg, tc = configs(args)
  dcfg = ocfg.dit
  model, frozen, _ = diffusers_wan(dcfg, args.seed, args.threads)
  model.save_pretrained(os.path.join(work, "diffusers"))
  save_file({k: np.asarray(v) for k, v in flatten(frozen).items()}, os.path.join(work, "frozen.safetensors"))
  n_base = sum(p.numel() for p in model.parameters())
  del model, frozen

  # Trainable: LoRA A as initialised; B, the links and the XYZ projections small random values (at init: zero).
  rng = np.random.default_rng(args.seed + 1)
  trainable = random_trainable(ocfg, args.seed, rng)
  save_file(flatten(trainable), os.path.join(work, "trainable.safetensors"))
  save_file(torch_names(trainable), os.path.join(work, "trainable-torch.safetensors"))

  # Inputs: clean latents z, noise eps, one flow time t for the batch: z_t = t z + (1 - t) eps, target z - eps.
  b, latent = args.batch, tuple(args.latent)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  z_rgb, z_xyz, e_rgb, e_xyz = (normal(b, one4d.LATENT, *latent) for _ in range(4))
  t = np.full((b,), args.t, np.float32)
  inputs = {"rgb_t": flow.noisy(z_rgb, e_rgb, t), "xyz_t": flow.noisy(z_xyz, e_xyz, t),
            "target_rgb": flow.target(z_rgb, e_rgb), "target_xyz": flow.target(z_xyz, e_xyz),
            "cond": normal(b, one4d.COND, *latent), "timestep": flow.to_wan_timestep(t),
            "text": normal(b, args.text_tokens, dcfg.text_dim), "clip": normal(b, args.clip_tokens, dcfg.image_dim)}
  save_file({k: np.asarray(v, np.float32) for k, v in inputs.items()}, os.path.join(work, "inputs.safetensors"))
  run = {"links": list(ocfg.links), "train": dataclasses.asdict(tc), "base_params": n_base,
         "lora_params": sum(a.size for a in jax.tree.leaves(trainable["lora"])),
         "other_params": sum(a.size for k, a in flatten(trainable).items() if not k.startswith("lora/")),
         "tokens": dit.token_grid(dcfg, (b, 36, *latent))}
  with open(os.path.join(work, "run.json"), "w") as f:
    json.dump(run, f)
  return run


class Worker:
  """One implementation in its own process, stepping when told (see `serve`)."""

  def __init__(self, argv, impl: str, work: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    self.impl, self.log = impl, os.path.join(work, f"{impl}.log")
    with open(self.log, "w") as log:  # a file, not a pipe: a full stderr pipe would stall the worker
      self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--worker", impl, "--work", work],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)

  def read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(TAG):
        return json.loads(line[len(TAG):])
    with open(self.log) as f:
      raise SystemExit(f"worker {self.impl} failed (exit {self.proc.wait()}):\n{f.read()[-4000:]}")

  def send(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self.read()

  def close(self) -> dict:
    out = self.send("done")
    self.proc.wait()
    return out


def compare_final(work: str) -> tuple[float, float]:
  """(RMS of JAX's final trainable minus torch's, RMS of JAX's change over the run), over all trainable values."""
  import numpy as np
  from safetensors.numpy import load_file
  ours, ref = (load_file(os.path.join(work, f"final-{impl}.safetensors")) for impl in ("jax", "torch"))
  init = load_file(os.path.join(work, "trainable-torch.safetensors"))
  if set(ours) != set(ref) or set(ours) != set(init):
    raise RuntimeError(f"the workers saved different trainable sets: {sorted(set(ours) ^ set(ref))[:6]}")
  sq = lambda d: sum(float(np.sum(np.square(d(k).astype(np.float64)))) for k in ours)
  n = sum(v.size for v in ours.values())
  return (sq(lambda k: ours[k] - ref[k]) / n) ** 0.5, (sq(lambda k: ours[k] - init[k]) / n) ** 0.5


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.worker:
    serve_jax(args) if args.worker == "jax" else serve_torch(args)
    return
  from one4d_jax.flops import dlc_train_flops
  ocfg, _ = configs(args)
  with tempfile.TemporaryDirectory(prefix="one4d-train-step-") as work:
    t0 = time.perf_counter()
    run = write_inputs(args, work)
    tokens = run["tokens"][0] * run["tokens"][1] * run["tokens"][2]
    print(f"# DLC training step: dim {args.dim}, {args.heads} heads, ffn {args.ffn}, {args.layers} blocks (Fun-InP "
          f"1.3B preset otherwise), latent {tuple(args.latent)} -> {tokens} tokens per branch, batch {args.batch}, "
          f"{args.text_tokens} text + {args.clip_tokens} CLIP tokens, LoRA rank {args.rank} alpha {args.alpha:g} on "
          f"the 12 linears of every block, links after blocks {tuple(run['links'])}, fp32")
    adamw = ", ".join(f"{k} {run['train'][k]:g}" for k in ("lr", "b1", "b2", "eps", "weight_decay", "max_grad_norm",
                                                            "warmup_steps"))
    print(f"# parameters: base {run['base_params'] / 1e6:.1f} M frozen; trainable {run['lora_params'] / 1e6:.2f} M "
          f"LoRA (both branches) + {run['other_params'] / 1e6:.2f} M links and XYZ projections; AdamW {adamw}")
    print(f"# inputs written in {time.perf_counter() - t0:.0f} s; load average {loadavg()}; cpus {os.cpu_count()}",
          flush=True)
    results = {}
    for impl in ("torch", "jax") if not args.no_torch else ("jax",):  # one at a time: both resident would not fit
      t0 = time.perf_counter()
      worker = Worker(argv, impl, work)
      r = results[impl] = {**worker.read(), "load": loadavg()}
      print(f"# {impl} worker ready in {time.perf_counter() - t0:.0f} s{' (compiled)' * (impl == 'jax')}", flush=True)
      r["steps"] = [worker.send("step") for _ in range(1 + args.warmup + args.repeats)]
      r.update(worker.close())
      r["load"] += f" / {loadavg()}"
      print(f"# {impl} steps: " + ", ".join(f"{x['wall']:.1f} s" for x in r["steps"]), flush=True)
    for r in results.values():
      timed_steps = r["steps"][1 + args.warmup:]
      r.update(first_s=r["steps"][0]["wall"], times=[x["wall"] for x in timed_steps],
               cpu=[x["cpu"] for x in timed_steps], losses=[x["loss"] for x in r["steps"]],
               grad_norms=[x["grad_norm"] for x in r["steps"]])
    final_diff = compare_final(work) if "torch" in results else None

  flop = args.batch * dlc_train_flops(ocfg.dit, tokens, args.rank, len(run["links"]), args.clip_tokens)["total"]
  print(f"\nanalytic GEMM FLOPs per step: {flop / 1e9:.0f} GFLOP (forward + backward, no remat)")
  print("\nseconds per step (first step alone; median of the timed steps after warm-up; load average before / after "
        "the steps: " + "; ".join(f"{impl} {r['load']}" for impl, r in results.items()) + "):")
  for impl, r in results.items():
    print(f"  {impl:5s} {fmt_times(r['times'])}  {flop / med(r['times']) / 1e9:5.0f} GFLOP/s; process CPU "
          f"{med(r['cpu']):.2f} s ({med(r['cpu']) / med(r['times']):.2f} cores busy); first step {r['first_s']:.2f} s; "
          f"compile {r['compile_s']:.1f} s; threads {r['threads']}")
  print("\nmemory (peak RSS of the worker process; step RSS = peak minus the resident size before the first step):")
  for impl, r in results.items():
    temp = f"; XLA's temporaries of the compiled step {r['temp_bytes'] / GIB:.2f} GiB" if "temp_bytes" in r else ""
    print(f"  {impl:5s} peak RSS {r['peak_rss'] / GIB:5.2f} GiB; before the first step {r['load_rss'] / GIB:5.2f} "
          f"GiB; step RSS {r['step_rss'] / GIB:5.2f} GiB{temp}")
  if "torch" not in results:
    return
  j, t = results["jax"], results["torch"]
  rel = lambda a, b: abs(a - b) / abs(b)
  print(f"\ncheck (same computation): first-step loss jax {j['losses'][0]:.7f} torch {t['losses'][0]:.7f} (rel "
        f"{rel(j['losses'][0], t['losses'][0]):.1e}); gradient norm jax {j['grad_norms'][0]:.6f} torch "
        f"{t['grad_norms'][0]:.6f} (rel {rel(j['grad_norms'][0], t['grad_norms'][0]):.1e}); torch process imported "
        f"jax: {t['jax_imported']}")
  print(f"  losses step by step: jax {[round(x, 6) for x in j['losses']]}\n"
        f"                       torch {[round(x, 6) for x in t['losses']]}  (max rel diff "
        f"{max(rel(a, b) for a, b in zip(j['losses'], t['losses'])):.1e})")
  print(f"  final trainable parameters: RMS(jax - torch) {final_diff[0]:.2e} against RMS of the change over the run "
        f"{final_diff[1]:.2e}")
  ok = rel(j["losses"][0], t["losses"][0]) <= 1e-4 and rel(j["grad_norms"][0], t["grad_norms"][0]) <= 1e-4
  print(f"  first step agrees within 1e-4 relative: {'yes' if ok else 'NO: the two do not compute the same step'}")
  print(f"  versions: {t['versions']}")
  speedup = med(t["times"]) / med(j["times"])
  print(f"\ntorch / jax seconds per step = {speedup:.3f} (ratio of minima "
        f"{min(t['times']) / min(j['times']):.3f}, of process CPU seconds {med(t['cpu']) / med(j['cpu']):.3f}); "
        f"peak RSS jax / torch = {j['peak_rss'] / t['peak_rss']:.2f}")
  print(f"jax_speedup_vs_torch={speedup:.3f}")


if __name__ == "__main__":
  main()
