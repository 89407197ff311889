"""The One4D training step: flow matching on both modalities, gradients for the trainable tree only.

The frozen tree (converted Wan weights) is an argument of the step, never part of the state: it gets no gradient and
no optimiser state, and training cannot change it. The state holds the trainable tree (`lora.rgb`, `lora.xyz`,
`links`), the optimiser state and the step.
"""

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from one4d_jax import flow, sharding
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  lr: float = 1e-4  # the paper's AdamW learning rate
  warmup_steps: int = 100
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  max_grad_norm: float = 1.0
  accum_steps: int = 1  # micro-batches per optimiser step
  text_drop_prob: float = 0.1  # text condition replaced by zeros, for classifier-free guidance
  timestep_scheme: str = "uniform_shifted"  # see flow.sample_t
  shift: float = 5.0
  rgb_weight: float = 1.0
  xyz_weight: float = 1.0


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  trainable: dict
  opt_state: optax.OptState


def learning_rate(tc: TrainConfig) -> optax.Schedule:
  """A linear warmup from 0 to tc.lr over tc.warmup_steps, then constant."""
  return optax.join_schedules([optax.linear_schedule(0.0, tc.lr, max(tc.warmup_steps, 1)),
                               optax.constant_schedule(tc.lr)], [max(tc.warmup_steps, 1)])


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the `learning_rate` schedule."""
  schedule = learning_rate(tc)
  return optax.chain(optax.clip_by_global_norm(tc.max_grad_norm),
                     optax.adamw(schedule, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay))


def init_state(trainable: dict, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=tx.init(trainable))


def abstract_trainable(cfg: one4d.One4DConfig) -> dict:
  """The trainable tree's shapes and dtypes (no memory, no FLOPs)."""
  return jax.eval_shape(lambda: one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), jax.random.key(0)))


def abstract_state(cfg: one4d.One4DConfig, tx: optax.GradientTransformation) -> TrainState:
  """The state's shapes and dtypes (no memory, no FLOPs)."""
  return jax.eval_shape(lambda: init_state(one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), jax.random.key(0)),
                                           tx))


def frozen_shardings(cfg: one4d.One4DConfig, mesh: jax.sharding.Mesh):
  """Where the frozen Wan DiT lives: by its logical axes under the config's rules."""
  return sharding.logical_to_shardings(dit.logical_axes(cfg.dit), mesh, cfg.dit.policy.sharding_rules,
                                       dit.abstract_params(cfg.dit))


def trainable_shardings(cfg: one4d.One4DConfig, mesh: jax.sharding.Mesh) -> dict:
  """Where the trainable tree lives: by its logical axes under the config's rules."""
  abstract = abstract_trainable(cfg)
  return sharding.logical_to_shardings(one4d.logical_axes(cfg, abstract), mesh, cfg.dit.policy.sharding_rules, abstract)


def state_shardings(cfg: one4d.One4DConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
  """Where the state lives: the trainable tree by its logical axes under the config's rules, every optimiser
  moment like the leaf it tracks, scalars (step, counts) replicated."""
  abstract = abstract_state(cfg, tx)
  trainable = trainable_shardings(cfg, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_state = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, trainable,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, trainable=trainable, opt_state=opt_state)


def loss_fn(trainable, frozen, cfg: one4d.One4DConfig, tc: TrainConfig, batch: dict, rng: jax.Array):
  """batch: `rgb`, `xyz` clean latents [B, 16, F, h, w]; `cond` [B, 20, F, h, w] (umc.condition); `text`
  [B, n, text_dim]; `clip` [B, 257, image_dim]; optional `xyz_valid` [B, 1, F, h, w], the share of valid pixels
  behind each XYZ latent cell (`inputs.latent_validity`), which weights the XYZ loss: pixels without geometry are
  stored as the point (0, 0, 0) and must not be learnt as such. Returns (loss, metrics)."""
  b = batch["rgb"].shape[0]
  k_t, k_rgb, k_xyz, k_drop = jax.random.split(rng, 4)
  t = flow.sample_t(k_t, b, tc.timestep_scheme, tc.shift)
  eps_rgb = jax.random.normal(k_rgb, batch["rgb"].shape, jnp.float32)
  eps_xyz = jax.random.normal(k_xyz, batch["xyz"].shape, jnp.float32)
  keep_text = jax.random.bernoulli(k_drop, 1.0 - tc.text_drop_prob, (b,)).astype(batch["text"].dtype)
  out_rgb, out_xyz = one4d.apply(frozen, trainable, cfg, flow.noisy(batch["rgb"], eps_rgb, t),
                                 flow.noisy(batch["xyz"], eps_xyz, t), batch["cond"], flow.to_wan_timestep(t),
                                 batch["text"] * keep_text[:, None, None], batch.get("clip"))
  loss_rgb = flow.mse(flow.velocity_from_wan(out_rgb), flow.target(batch["rgb"], eps_rgb))
  loss_xyz = flow.mse(flow.velocity_from_wan(out_xyz), flow.target(batch["xyz"], eps_xyz), batch.get("xyz_valid"))
  loss = tc.rgb_weight * loss_rgb + tc.xyz_weight * loss_xyz
  return loss, {"loss": loss, "loss_rgb": loss_rgb, "loss_xyz": loss_xyz}


def train_step(frozen, state: TrainState, batch: dict, rng: jax.Array, *, cfg: one4d.One4DConfig, tc: TrainConfig,
               tx: optax.GradientTransformation):
  """One optimiser step over `batch`, split into `tc.accum_steps` micro-batches whose gradients are averaged."""
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if tc.accum_steps == 1:
    (_, metrics), grads = grad_fn(state.trainable, frozen, cfg, tc, batch, rng)
  else:
    b = jax.tree.leaves(batch)[0].shape[0]
    if b % tc.accum_steps:
      raise ValueError(f"batch of {b} does not split into accum_steps={tc.accum_steps} micro-batches")
    micro = jax.tree.map(lambda x: _micro_batches(cfg, x, tc.accum_steps), batch)

    def accumulate(grads, inputs):
      mb, key = inputs
      (_, m), g = grad_fn(state.trainable, frozen, cfg, tc, mb, key)
      return jax.tree.map(jnp.add, grads, g), m

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    grads, metrics = jax.lax.scan(accumulate, zeros, (micro, jax.random.split(rng, tc.accum_steps)))
    grads = jax.tree.map(lambda g: g / tc.accum_steps, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(trainable)  # non-finite: the update diverged (train.faults.check_finite)
  return TrainState(state.step + 1, trainable, opt_state), metrics


def _micro_batches(cfg: one4d.One4DConfig, x: jax.Array, n: int) -> jax.Array:
  """[B, ...] -> [n, B / n, ...] with micro-batch m = rows m, m + n, ...: a batch split over the data-parallel
  devices in contiguous blocks gives every device its share of every micro-batch (no device idles)."""
  x = jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
  return sharding.constrain(x, (None, "activation_batch") + (None,) * (x.ndim - 2), cfg.dit.policy.sharding_rules)


def jit_train_step(cfg: one4d.One4DConfig, tc: TrainConfig, tx: optax.GradientTransformation,
                   state_shardings: TrainState | None = None):
  """`step(frozen, state, batch, rng) -> (state, metrics)`, jitted, with the state's buffers donated. Given
  `state_shardings` (see `state_shardings`), the new state keeps them exactly, so the next call reuses the compiled
  program and the donated buffers."""
  out_shardings = None if state_shardings is None else (state_shardings, None)
  return jax.jit(functools.partial(train_step, cfg=cfg, tc=tc, tx=tx), donate_argnums=(1,),
                 out_shardings=out_shardings)
