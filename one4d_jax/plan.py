"""Ahead-of-time plans: compile One4D's training or sampling step for a mesh from shapes alone and read what the
compiler says one device needs, before renting the machine (maxtext's train_compile).

Nothing is allocated: parameters, optimiser state and batch are `jax.ShapeDtypeStruct`s carrying the shardings a
real run gives them (the config's rules), and `jit(...).lower(...).compile()` runs XLA's SPMD partitioner and buffer
assignment for one device of the mesh. The mesh is over fake CPU devices, whose buffer assignment approximates an
accelerator's (see README, Planning), or over the chips of a TPU topology or GPUs (`one4d_jax.topology`), compiled by
the TPU or GPU compiler itself; the TPU compiler refuses a step that does not fit (`OutOfMemory`). FLOPs are counted
analytically (`one4d_jax.flops`) with XLA's own count beside them.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp

from one4d_jax import flops, samplers, sharding
from one4d_jax import sample as sample_lib
from one4d_jax.models import attention, one4d
from one4d_jax.models.wan import dit
from one4d_jax.train import step as train_lib

VAE_TIME, VAE_SPACE = 4, 8  # Wan VAE: 1 + 4k frames -> 1 + k latent frames, 8x8 pixels -> 1 latent pixel
CLIP_TOKENS = 257  # CLIP ViT-H/14's penultimate tokens (I2V / InP); text is padded to cfg.text_len
GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one device of the mesh needs for one step (bytes), and the work it does (FLOPs)."""

  what: str
  device_kind: str  # "cpu" (fake devices) or the chip's, e.g. "TPU v5", "NVIDIA H100 80GB HBM3"
  mesh: dict
  batch: int  # global examples per step (training: per optimiser step, over all micro-batches)
  tokens: int  # per branch per example
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written in place of donated arguments
  temp_bytes: int
  model_flops: float  # per device per step, analytic
  xla_flops: float | None  # per device per step, XLA's cost analysis (while-loop bodies counted once)
  host_temp_bytes: int = 0  # temporaries in the host's memory: activations a remat policy offloads (offload:NAMES)

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


class OutOfMemory(Exception):
  """The TPU compiler refused the step: it needs more than a chip's HBM. `message` is the compiler's own (trimmed),
  `needed_bytes` the requirement it names (a lower bound when it names only the temporaries), None if it names none."""

  def __init__(self, message: str, needed_bytes: int | None):
    super().__init__(message)
    self.message, self.needed_bytes = message, needed_bytes


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": GIB, "T": 1024 ** 4}  # the compiler's G is GiB
# What the TPU compiler says it needs, in the forms libtpu writes, most complete first.
_NEEDED = (r"Total hbm usage >= ([\d.]+)([KMGT]?)", r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm",
           r"memory required for [^(]*\(([\d.]+)([KMGT]?)\)")


def out_of_memory(error: Exception) -> OutOfMemory | None:
  """The compiler's out-of-HBM error as an OutOfMemory (its message up to the first source-location trace, blank lines
  dropped, at most 40 lines: the usage summary and the largest allocations), or None for any other error."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text or "hbm" not in text.lower():
    return None
  lines = [line for line in text.split("=== Source Location Trace")[0].splitlines() if line.strip()]
  message = "\n".join(lines[:40] + ([f"... ({len(lines) - 40} more lines)"] if len(lines) > 40 else []))
  for pattern in _NEEDED:
    if found := re.search(pattern, text):
      return OutOfMemory(message, int(float(found.group(1)) * _UNITS[found.group(2)]))
  return OutOfMemory(message, None)


def _compile(lowered):
  """`lowered.compile()`, with the compiler's out-of-memory error raised as OutOfMemory."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if (oom := out_of_memory(e)) is not None:
      raise oom from None
    raise


def target_attention(cfg: dit.DiTConfig, platform: str) -> str:
  """The kernel `auto` means on `platform`, decided here because `auto` decides at trace time from the default
  backend, which is the CPU when compiling for a TPU or GPU topology: the pure-JAX flash kernel on CPU (the stand-in
  for cuDNN / splash attention: memory linear in the sequence), splash attention on TPU when it is registered (flash
  otherwise, and with ring context parallelism, which needs flash's log-sum-exp), on GPU what `auto` runs there
  (cuDNN in bf16/fp16, xla in f32; flash under context parallelism, as the model's `auto` does). Any other setting
  is kept."""
  if cfg.policy.attention != "auto":
    return cfg.policy.attention
  if platform == "gpu" and cfg.policy.context_parallel == "none":
    return attention.auto_kernel(cfg.policy.dtype, platform)
  if platform == "tpu" and cfg.policy.context_parallel != "ring":
    try:
      attention.get("splash")
      return "splash"
    except ValueError:
      pass
  return "flash"


def latent_grid(cfg: dit.DiTConfig, frames: int, height: int, width: int) -> tuple[int, int, int]:
  """(F, h, w) of the latents of a clip, checked: frames 1 + 4k, sides multiples of 8 x the patch."""
  ph, pw = cfg.patch_size[1:]
  problems = []
  if frames < 1 or (frames - 1) % VAE_TIME:
    problems.append(f"frames={frames} is not 1 + 4k")
  if height % (VAE_SPACE * ph) or width % (VAE_SPACE * pw):
    problems.append(f"height x width {height}x{width} is not a multiple of {VAE_SPACE * ph}x{VAE_SPACE * pw}")
  if problems:
    raise ValueError("; ".join(problems))
  return 1 + (frames - 1) // VAE_TIME, height // VAE_SPACE, width // VAE_SPACE


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def abstract_batch(cfg: one4d.One4DConfig, mesh: jax.sharding.Mesh, batch: int, grid: tuple[int, int, int]) -> dict:
  """The training step's batch (see train.step.loss_fn) as ShapeDtypeStructs split over the data-parallel axes."""
  target = sharding.batch_sharding(mesh, cfg.dit.policy.sharding_rules)
  struct = lambda *shape: jax.ShapeDtypeStruct((batch, *shape), jnp.float32, sharding=target)
  out = {"rgb": struct(one4d.LATENT, *grid), "xyz": struct(one4d.LATENT, *grid), "cond": struct(one4d.COND, *grid),
         "xyz_valid": struct(1, *grid), "text": struct(cfg.dit.text_len, cfg.dit.text_dim)}
  return {**out, "clip": struct(CLIP_TOKENS, cfg.dit.image_dim)} if cfg.dit.is_i2v else out


def _memory(what, mesh, batch, tokens, compiled, model_flops) -> Plan:
  m = compiled.memory_analysis()
  return Plan(what, mesh.devices.flat[0].device_kind, dict(mesh.shape), batch, tokens, int(m.argument_size_in_bytes),
              int(m.output_size_in_bytes), int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), model_flops,
              flops.xla_flops(compiled), int(getattr(m, "host_temp_size_in_bytes", 0) or 0))


def plan_train(cfg: one4d.One4DConfig, tc: train_lib.TrainConfig, mesh: jax.sharding.Mesh, batch: int,
               grid: tuple[int, int, int]) -> tuple[Plan, object]:
  """Compile the training step (state donated, as launch.train runs it) for `batch` examples per optimiser step."""
  tx = train_lib.make_optimizer(tc)
  shardings = train_lib.state_shardings(cfg, tx, mesh)
  state = _with_shardings(train_lib.abstract_state(cfg, tx), shardings)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                             sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with jax.set_mesh(mesh):
    compiled = _compile(train_lib.jit_train_step(cfg, tc, tx, shardings).lower(
        _with_shardings(dit.abstract_params(cfg.dit), train_lib.frozen_shardings(cfg, mesh)), state, abstract_batch(cfg, mesh, batch, grid), rng))
  tokens = math.prod(dit.token_grid(cfg.dit, grid))
  work = flops.dlc_train_flops(cfg.base, tokens, cfg.lora_rank, len(cfg.links),
                               xyz_projections=cfg.xyz_projections)["total"] * batch / mesh.size
  return _memory("train", mesh, batch, tokens, compiled, work), compiled


def plan_sample(cfg: one4d.One4DConfig, sc: sample_lib.SamplerConfig, mesh: jax.sharding.Mesh, batch: int,
                grid: tuple[int, int, int]) -> tuple[Plan, object]:
  """Compile one guided step of the sampler (a batch of 2 x `batch` with CFG) on the mesh, with the history of
  latents its solver carries (`samplers.State`)."""
  tx = train_lib.make_optimizer(train_lib.TrainConfig())
  state = _with_shardings(train_lib.abstract_state(cfg, tx), train_lib.state_shardings(cfg, tx, mesh))
  b = abstract_batch(cfg, mesh, batch, grid)
  guided, clip = sc.guidance != 1.0, b.get("clip")
  text = b["text"] if not guided else jax.ShapeDtypeStruct((2 * batch, *b["text"].shape[1:]), b["text"].dtype,
                                                           sharding=b["text"].sharding)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  whole = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)
  x = (b["rgb"], b["xyz"])
  solver = samplers.State(x, (x,) * samplers.HISTORY[sc.sampler], x if sc.sampler == "unipc" else None,
                          whole((), jnp.int32))
  with jax.set_mesh(mesh):
    compiled = _compile(sample_lib.solver_step.lower(
        _with_shardings(dit.abstract_params(cfg.dit), train_lib.frozen_shardings(cfg, mesh)), state.trainable, cfg,
        sc.sampler, solver, whole((sc.steps + 1,)), whole((sc.steps,)), b["cond"], text, clip, sc.guidance))
  tokens = math.prod(dit.token_grid(cfg.dit, grid))
  work = flops.dlc_flops(cfg.base, tokens, cfg.lora_rank, len(cfg.links), xyz_projections=cfg.xyz_projections)["total"] * batch * (2 if guided else 1)
  return _memory("sample", mesh, batch, tokens, compiled, work / mesh.size), compiled


def report(plan: Plan, peak_tflops: float, mfu: float, device_memory_gib: float) -> list[str]:
  """The lines launch.plan prints; the last is `per_device_total_gib=<value>`."""
  gib = lambda n: f"{n / GIB:,.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:,.2f} MiB"
  lines = [f"{plan.what} step on {plan.device_kind}: mesh {plan.mesh}, {plan.batch} examples per step, "
           f"{plan.tokens:,} tokens per branch",
           f"per device: arguments {gib(plan.argument_bytes)}, outputs {gib(plan.output_bytes)} (aliased "
           f"{gib(plan.alias_bytes)}), temporaries {gib(plan.temp_bytes)}, total {gib(plan.total_bytes)}",
           *([(f"host memory per device: temporaries {gib(plan.host_temp_bytes)} (offloaded activations; not in "
               "the total)")] if plan.host_temp_bytes else []),
           f"model FLOPs per device per step {plan.model_flops:.4g} (analytic)"
           + (f"; XLA's count {plan.xla_flops:.4g} (loop bodies once)" if plan.xla_flops else ""),
           f"implied step time at {100 * mfu:.0f}% MFU of {peak_tflops:g} TFLOP/s: "
           f"{plan.model_flops / (peak_tflops * 1e12 * mfu):.2f} s",
           f"{'fits' if fits(plan, device_memory_gib) else 'DOES NOT FIT'} in {device_memory_gib:g} GiB "
           "per device",
           f"per_device_total_gib={plan.total_bytes / GIB:.4g}"]
  return lines


def out_of_memory_report(oom: OutOfMemory) -> list[str]:
  """The lines launch.plan prints when the compiler refuses the step; the last is `per_device_total_gib=<value>`
  (what the compiler says it needs, nan if it names nothing)."""
  needed = float("nan") if oom.needed_bytes is None else oom.needed_bytes / GIB
  return ["DOES NOT FIT: the TPU compiler ran out of memory:", *("  " + line for line in oom.message.splitlines()),
          f"needs at least {needed:,.2f} GiB per device", f"per_device_total_gib={needed:.4g}"]


def fits(plan: Plan, device_memory_gib: float) -> bool:
  return plan.total_bytes <= device_memory_gib * GIB

