"""Ahead-of-time plans: compile One4D's training or sampling step for a mesh from shapes alone and read what the
compiler says one device needs, before renting the machine (maxtext's train_compile).

Nothing is allocated: parameters, optimiser state and batch are `jax.ShapeDtypeStruct`s carrying the shardings a
real run gives them (the config's rules), and `jit(...).lower(...).compile()` runs XLA's SPMD partitioner and buffer
assignment for one device of the mesh. On fake CPU devices the buffer assignment approximates an accelerator's (see
README, Planning); FLOPs are counted analytically (`one4d_jax.flops`) with XLA's own count beside them.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from one4d_jax import flops, sharding
from one4d_jax import sample as sample_lib
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.train import step as train_lib

VAE_TIME, VAE_SPACE = 4, 8  # Wan VAE: 1 + 4k frames -> 1 + k latent frames, 8x8 pixels -> 1 latent pixel
CLIP_TOKENS = 257  # CLIP ViT-H/14's penultimate tokens (I2V / InP); text is padded to cfg.text_len
GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one device of the mesh needs for one step (bytes), and the work it does (FLOPs)."""

  what: str
  mesh: dict
  batch: int  # global examples per step (training: per optimiser step, over all micro-batches)
  tokens: int  # per branch per example
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written in place of donated arguments
  temp_bytes: int
  model_flops: float  # per device per step, analytic
  xla_flops: float | None  # per device per step, XLA's cost analysis (while-loop bodies counted once on CPU)

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


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
  target = sharding.batch_sharding(mesh, cfg.dit.sharding_rules)
  struct = lambda *shape: jax.ShapeDtypeStruct((batch, *shape), jnp.float32, sharding=target)
  out = {"rgb": struct(one4d.LATENT, *grid), "xyz": struct(one4d.LATENT, *grid), "cond": struct(one4d.COND, *grid),
         "xyz_valid": struct(1, *grid), "text": struct(cfg.dit.text_len, cfg.dit.text_dim)}
  return {**out, "clip": struct(CLIP_TOKENS, cfg.dit.image_dim)} if cfg.dit.is_i2v else out


def _memory(what, mesh, batch, tokens, compiled, model_flops) -> Plan:
  m = compiled.memory_analysis()
  return Plan(what, dict(mesh.shape), batch, tokens, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
              int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), model_flops, flops.xla_flops(compiled))


def plan_train(cfg: one4d.One4DConfig, tc: train_lib.TrainConfig, mesh: jax.sharding.Mesh, batch: int,
               grid: tuple[int, int, int]) -> tuple[Plan, object]:
  """Compile the training step (state donated, as launch.train runs it) for `batch` examples per optimiser step."""
  tx = train_lib.make_optimizer(tc)
  shardings = train_lib.state_shardings(cfg, tx, mesh)
  state = _with_shardings(train_lib.abstract_state(cfg, tx), shardings)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                             sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with jax.set_mesh(mesh):
    compiled = train_lib.jit_train_step(cfg, tc, tx, shardings).lower(
        _with_shardings(dit.abstract_params(cfg.dit), train_lib.frozen_shardings(cfg, mesh)), state, abstract_batch(cfg, mesh, batch, grid), rng).compile()
  tokens = math.prod(dit.token_grid(cfg.dit, grid))
  work = flops.dlc_train_flops(cfg.base, tokens, cfg.lora_rank, len(cfg.links),
                               xyz_projections=cfg.xyz_projections)["total"] * batch / mesh.size
  return _memory("train", mesh, batch, tokens, compiled, work), compiled


def plan_sample(cfg: one4d.One4DConfig, sc: sample_lib.SamplerConfig, mesh: jax.sharding.Mesh, batch: int,
                grid: tuple[int, int, int]) -> tuple[Plan, object]:
  """Compile one guided Euler step of the sampler (a batch of 2 x `batch` with CFG) on the mesh."""
  tx = train_lib.make_optimizer(train_lib.TrainConfig())
  state = _with_shardings(train_lib.abstract_state(cfg, tx), train_lib.state_shardings(cfg, tx, mesh))
  b = abstract_batch(cfg, mesh, batch, grid)
  guided, clip = sc.guidance != 1.0, b.get("clip")
  text = b["text"] if not guided else jax.ShapeDtypeStruct((2 * batch, *b["text"].shape[1:]), b["text"].dtype,
                                                           sharding=b["text"].sharding)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with jax.set_mesh(mesh):
    compiled = sample_lib.euler_step.lower(_with_shardings(dit.abstract_params(cfg.dit), train_lib.frozen_shardings(cfg, mesh)), state.trainable, cfg, b["rgb"], b["xyz"],
                                           scalar, scalar, b["cond"], text, clip, sc.guidance).compile()
  tokens = math.prod(dit.token_grid(cfg.dit, grid))
  work = flops.dlc_flops(cfg.base, tokens, cfg.lora_rank, len(cfg.links), xyz_projections=cfg.xyz_projections)["total"] * batch * (2 if guided else 1)
  return _memory("sample", mesh, batch, tokens, compiled, work / mesh.size), compiled


def report(plan: Plan, peak_tflops: float, mfu: float, device_memory_gib: float) -> list[str]:
  """The lines launch.plan prints; the last is `per_device_total_gib=<value>`."""
  gib = lambda n: f"{n / GIB:,.2f} GiB"
  lines = [f"{plan.what} step: mesh {plan.mesh}, {plan.batch} examples per step, {plan.tokens:,} tokens per branch",
           f"per device: arguments {gib(plan.argument_bytes)}, outputs {gib(plan.output_bytes)} (aliased "
           f"{gib(plan.alias_bytes)}), temporaries {gib(plan.temp_bytes)}, total {gib(plan.total_bytes)}",
           f"model FLOPs per device per step {plan.model_flops:.4g} (analytic)"
           + (f"; XLA's count {plan.xla_flops:.4g} (loop bodies once on CPU)" if plan.xla_flops else ""),
           f"implied step time at {100 * mfu:.0f}% MFU of {peak_tflops:g} TFLOP/s: "
           f"{plan.model_flops / (peak_tflops * 1e12 * mfu):.2f} s",
           f"{'fits' if fits(plan, device_memory_gib) else 'DOES NOT FIT'} in {device_memory_gib:g} GiB "
           "per device",
           f"per_device_total_gib={plan.total_bytes / GIB:.4g}"]
  return lines


def fits(plan: Plan, device_memory_gib: float) -> bool:
  return plan.total_bytes <= device_memory_gib * GIB

