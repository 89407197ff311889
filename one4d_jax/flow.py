"""Rectified flow in the paper's convention, mapped to Wan's in exactly one place.

Paper: `z_t = t z + (1 - t) eps`, velocity target `z - eps` (t = 1 is data). Wan: `x_s = (1 - s) x0 + s eps`, the
model is fed `1000 s` and predicts `eps - x0`. They are the same flow with `s = 1 - t`: feed `1000 (1 - t)` and
negate the model output (`to_wan_timestep`, `velocity_from_wan`).
"""

import jax
import jax.numpy as jnp

NUM_TRAIN_TIMESTEPS = 1000


def to_wan_timestep(t: jax.Array) -> jax.Array:
  """Paper time t in [0, 1] (1 = data) -> the timestep Wan's DiT is fed, 1000 sigma with sigma = 1 - t."""
  return NUM_TRAIN_TIMESTEPS * (1.0 - t)


def velocity_from_wan(model_output: jax.Array) -> jax.Array:
  """Wan predicts eps - x0; the paper's velocity is z - eps."""
  return -model_output


def noisy(z: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """z_t = t z + (1 - t) eps, t [B] broadcast over the other axes."""
  t = t.reshape(t.shape + (1,) * (z.ndim - t.ndim))
  return t * z + (1.0 - t) * eps


def target(z: jax.Array, eps: jax.Array) -> jax.Array:
  return z - eps


def shift_sigma(sigma: jax.Array, shift: float) -> jax.Array:
  """Wan's shifted schedule sigma' = shift sigma / (1 + (shift - 1) sigma) (wan_spec 6.2)."""
  return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_t(rng: jax.Array, batch: int, scheme: str = "uniform_shifted", shift: float = 5.0,
             logit_mean: float = 0.0, logit_std: float = 1.0) -> jax.Array:
  """Training times t [B] in the paper's convention.

  uniform_shifted: uniform over VideoX-Fun's 1000-entry grid of shifted sigmas (sigma from 1 down to 1/1000 before
  the shift); logit_normal: sigma = sigmoid(N(mean, std)) (SD3), then the same shift.
  """
  if scheme == "uniform_shifted":
    index = jax.random.randint(rng, (batch,), 0, NUM_TRAIN_TIMESTEPS)
    sigma = jnp.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[index]
  elif scheme == "logit_normal":
    sigma = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,)))
  else:
    raise ValueError(f"unknown timestep scheme {scheme!r}; choose 'uniform_shifted' or 'logit_normal'")
  return 1.0 - shift_sigma(sigma, shift)


def mse(prediction: jax.Array, target_: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Mean squared error; with `weight` [B, 1, F, h, w] (broadcast over channels), the weighted mean over the cells
  that have weight (the XYZ loss: weight = the fraction of valid pixels a latent cell encodes)."""
  error = jnp.square(prediction.astype(jnp.float32) - target_.astype(jnp.float32))
  if weight is None:
    return jnp.mean(error)
  weight = jnp.broadcast_to(weight.astype(jnp.float32), error.shape)
  return jnp.sum(weight * error) / jnp.maximum(jnp.sum(weight), 1.0)
