"""Timing helpers shared by the benchmarks: interleaved rounds (so load from other processes hits every contender
alike), wall and process-CPU seconds, medians, the load average."""

import os
import statistics
import time

# The real 7-Scenes clip in ../shared/data (beside the checkout) that the data benchmarks read.
SHARED_CLIP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sevenscenes_redkitchen_60f")


def timed(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds of all threads) of one call."""
  c0, t0 = time.process_time(), time.perf_counter()
  fn()
  return time.perf_counter() - t0, time.process_time() - c0


def interleaved(fns: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Each callable once per round for `repeats` rounds: (wall seconds, CPU seconds) per call, by name."""
  wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      w, c = timed(fn)
      wall[k].append(w)
      cpu[k].append(c)
  return wall, cpu


def loadavg() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "?"


def rss_bytes() -> int:
  """Resident size of this process now."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
  """Peak resident size of this process so far (ru_maxrss is in KiB on Linux)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def paper_link_layers(layers: int) -> tuple[int, ...]:
  """The paper's link density (5 links in 40 blocks, at least one), evenly spaced and ending at the last block."""
  n = max(1, round(layers * 5 / 40))
  return tuple(round(layers * (j + 1) / n) - 1 for j in range(n))


def med(xs) -> float:
  return statistics.median(xs)


def fmt_times(xs) -> str:
  return f"median {med(xs):8.4f} s (min {min(xs):.4f}, max {max(xs):.4f}, n={len(xs)})"


def set_xla_flags(extra: str) -> None:
  """Append to $XLA_FLAGS and pin JAX to the CPU; call before JAX is imported."""
  if extra:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def diffusers_wan(cfg, seed: int, threads: int):
  """(diffusers WanTransformer3DModel with `cfg`'s architecture, the same weights converted to our tree, seconds).

  diffusers initialises norm scales to one and modulation tables to zero; they are perturbed so they matter."""
  import diffusers
  import torch

  from checkpoints_convert import core, wan_dit
  from one4d_jax.models.wan import dit

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  t0 = time.perf_counter()
  model = diffusers.WanTransformer3DModel(**wan_dit.diffusers_kwargs(cfg)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "scale_shift_table" in name:
        p.add_(0.1 * torch.randn_like(p))
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = core.convert_in_memory(wan_dit.DIFFUSERS_RULES, state, dit.abstract_params(cfg))
  return model, params, time.perf_counter() - t0


def random_trainable(ocfg, seed: int, rng) -> dict:
  """One4D's trainable tree (numpy): LoRA A as initialised from `seed`; the LoRA B factors, links and XYZ projections
  small random values from the numpy Generator `rng` (at init they are zero, and all of their math should run)."""
  import jax
  import numpy as np

  from one4d_jax.models import one4d
  from one4d_jax.models.wan import dit

  trainable = jax.tree.map(np.asarray, one4d.init_trainable(ocfg, dit.abstract_params(ocfg.dit), jax.random.key(seed)))
  scale = {"b": 0.02, "kernel": 0.1 / np.sqrt(ocfg.dit.dim), "bias": 0.01}
  draw = lambda key, a: a if key == "a" else (scale[key] * rng.standard_normal(a.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(lambda path, a: draw(path[-1].key, a), trainable)


def dit_arguments(parser, layers: int):
  """The options both DiT benchmarks take: the model shape (1.3B width by default), the input, timing, torch, XLA."""
  p = parser
  p.add_argument("--layers", type=int, default=layers)
  p.add_argument("--dim", type=int, default=1536)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--ffn", type=int, default=8960)
  p.add_argument("--latent", type=int, nargs=3, default=(5, 30, 52), metavar=("F", "H", "W"),
                 help="latent frames, height, width (patch 1x2x2)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--text-tokens", type=int, default=512, help="text tokens given (both models pad to 512)")
  p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls of each after compilation / the first call")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--attention", default="auto", help="attention kernel of the JAX model (one4d_jax.models.attention)")
  p.add_argument("--no-torch", action="store_true", help="JAX only (no torch figures, no parity check)")
  p.add_argument("--xla-flags", default="", help="appended to $XLA_FLAGS before JAX is imported")
  p.add_argument("--seed", type=int, default=0)
  return p


def dlc_arguments(parser):
  """The options the One4D (DLC) benchmarks add: CLIP tokens, the LoRA rank and alpha, the linked blocks."""
  p = parser
  p.add_argument("--clip-tokens", type=int, default=257)
  p.add_argument("--rank", type=int, default=64)
  p.add_argument("--alpha", type=float, default=64.0)
  p.add_argument("--links", type=int, nargs="+", default=None, help="blocks followed by a control link (default: the "
                 "paper's 5 per 40 blocks, at least one, evenly spaced and ending at the last block)")
  return p


def dlc_config(args, **policy):
  """The One4D config of those options: a float32 Fun-InP DiT of the --dim/--heads/--ffn/--layers shape running
  --attention (and `policy`: more dit.Policy fields), LoRA of --rank/--alpha, links after --links."""
  from one4d_jax.models import one4d
  from one4d_jax.models.wan import dit
  dcfg = dit.preset("fun-inp-1.3b", dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers,
                    policy=dit.FLOAT32.replace(attention=args.attention, **policy))
  links = tuple(args.links) if args.links is not None else paper_link_layers(args.layers)
  return one4d.One4DConfig(dcfg, lora_rank=args.rank, lora_alpha=args.alpha, link_layers=links)
