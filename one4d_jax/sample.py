"""Joint RGB + XYZ sampling: a flow-matching ODE solver (`one4d_jax.samplers`: by default the Euler solver of
VideoX-Fun's Fun-InP pipeline, diffusers' `FlowMatchEulerDiscreteScheduler`, shift 5; or UniPC, Wan2.1's default, or
DPM++ 2M) with classifier-free guidance, the same update on both modalities.

Everything here is in Wan's convention (sigma = 1 - t of the paper; the DiT is fed ~1000 sigma and predicts
eps - x0, see `one4d_jax.flow`). Defaults are the paper's: 50 Euler steps, guidance 6. The unconditional pass keeps the
image conditioning (UMC condition and CLIP features) and swaps the prompt for the negative prompt, as Wan and
VideoX-Fun do; both passes run as one batch of 2B.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from tqdm import tqdm

from one4d_jax import samplers
from one4d_jax.models import one4d


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  steps: int = 50
  guidance: float = 6.0  # 1.0 = no guidance (one pass, the negative prompt unused)
  shift: float = 5.0
  sampler: str = "euler"  # euler (the paper's) | unipc (Wan2.1's default) | dpmpp (DPM++ 2M): one4d_jax.samplers
  compiled_loop: bool = False  # every step in one compiled program (lax.fori_loop; no progress bar)

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    samplers.check_sampler(self.sampler)

  def describe(self) -> str:
    """'20 UniPC steps, guidance 6, shift 5': what the launchers print."""
    return f"{self.steps} {samplers.SAMPLERS[self.sampler]} steps, guidance {self.guidance:g}, shift {self.shift:g}"


def guided(v: jax.Array, guidance: float) -> jax.Array:
  """CFG on a batch [uncond..., cond...]: v_u + s (v_c - v_u)."""
  uncond, cond = jnp.split(v, 2)
  return uncond + guidance * (cond - uncond)


def velocity(frozen, trainable, cfg: one4d.One4DConfig, rgb, xyz, t, cond, text, image, guidance: float):
  """The (guided) model outputs v = eps - x0 of both modalities at DiT timestep t. With guidance != 1, `text` holds
  the negative prompts then the prompts ([2B, n, text_dim]) and everything else is duplicated to match."""
  twice = (lambda a: a) if guidance == 1.0 else (lambda a: jnp.concatenate([a, a]))
  t = jnp.full((text.shape[0],), t, jnp.float32)
  v_rgb, v_xyz = one4d.apply(frozen, trainable, cfg, twice(rgb), twice(xyz), twice(cond), t, text,
                             None if image is None else twice(image))
  if guidance != 1.0:
    v_rgb, v_xyz = guided(v_rgb, guidance), guided(v_xyz, guidance)
  return v_rgb, v_xyz


def _solver_step(frozen, trainable, cfg, sampler, state, sigmas, timesteps, cond, text, image, guidance):
  v = velocity(frozen, trainable, cfg, *state.x, timesteps[state.step], cond, text, image, guidance)
  return samplers.step(sampler, sigmas, state, v)


@functools.partial(jax.jit, static_argnames=("cfg", "sampler", "guidance"), donate_argnames="state")
def solver_step(frozen, trainable, cfg: one4d.One4DConfig, sampler: str, state: samplers.State, sigmas, timesteps,
                cond, text, image, guidance: float) -> samplers.State:
  """One step of `sampler` on both modalities (state.x = (rgb, xyz)), from sigmas[state.step] to the next, the DiT
  fed timesteps[state.step]; the schedule is an argument, so one compiled program serves every step."""
  return _solver_step(frozen, trainable, cfg, sampler, state, sigmas, timesteps, cond, text, image, guidance)


@functools.partial(jax.jit, static_argnames=("cfg", "sampler", "guidance"), donate_argnames="state")
def solver_loop(frozen, trainable, cfg: one4d.One4DConfig, sampler: str, state: samplers.State, sigmas, timesteps,
                cond, text, image, guidance: float) -> samplers.State:
  """Every step of `solver_step` in one program (lax.fori_loop over the schedule)."""
  body = lambda _, s: _solver_step(frozen, trainable, cfg, sampler, s, sigmas, timesteps, cond, text, image, guidance)
  return jax.lax.fori_loop(0, timesteps.shape[0], body, state)


@functools.partial(jax.jit, static_argnames="shape")
def _noise(rng, shape):
  """The starting noise of both modalities, made where `rng` lives (on a mesh: replicated over it)."""
  k_rgb, k_xyz = jax.random.split(rng)
  return jax.random.normal(k_rgb, shape, jnp.float32), jax.random.normal(k_xyz, shape, jnp.float32)


def _pad_tokens(a: jax.Array, n: int) -> jax.Array:
  return jnp.pad(a, ((0, 0), (0, n - a.shape[1]), (0, 0)))


def guidance_text(text: jax.Array, negative_text: jax.Array | None, guidance: float) -> jax.Array:
  """The text batch `velocity` takes: `text` itself without guidance, else the negative prompts (broadcast to the
  batch) then the prompts, both padded to the longer of the two ([2B, n, text_dim])."""
  if guidance == 1.0:
    return text
  b = text.shape[0]
  if negative_text is None:
    raise ValueError("guidance != 1 needs negative_text (umT5 embeddings of the negative prompt; zeros for '')")
  if negative_text.shape[0] not in (1, b):
    raise ValueError(f"negative_text batch {negative_text.shape[0]} is neither 1 nor {b}")
  n = max(text.shape[1], negative_text.shape[1])
  negative_text = jnp.broadcast_to(_pad_tokens(negative_text, n), (b, n, text.shape[2]))
  return jnp.concatenate([negative_text, _pad_tokens(text, n)])


def sample(frozen, trainable, cfg: one4d.One4DConfig, rng: jax.Array, cond: jax.Array, text: jax.Array,
           negative_text: jax.Array | None = None, image: jax.Array | None = None,
           sc: SamplerConfig = SamplerConfig(), progress: bool = True):
  """RGB and XYZ latents [B, 16, F, h, w] from noise, conditioned by UMC (`cond` [B, 20, F, h, w], see
  `one4d_jax.umc`), text embeddings [B, n, text_dim] and CLIP features [B, 257, image_dim] (zeros for text-only).

  `negative_text` (umT5 embeddings of the negative prompt, [B or 1, m, text_dim]) is required when guidance != 1;
  an empty prompt encodes to zeros. Decode the results with the VAE (`vae.decode`), the XYZ latents to pointmaps.
  """
  b = cond.shape[0]
  if cond.ndim != 5 or cond.shape[1] != one4d.COND:
    raise ValueError(f"cond must be [B, {one4d.COND}, F, h, w] (mask 4 | condition latent 16), got {cond.shape}")
  if text.shape[0] != b or (image is not None and image.shape[0] != b):
    raise ValueError(f"batch sizes differ: cond {b}, text {text.shape[0]}, "
                     f"image {None if image is None else image.shape[0]}")
  text = guidance_text(text, negative_text, sc.guidance)
  rgb, xyz = _noise(rng, (b, one4d.LATENT, *cond.shape[2:]))
  state = samplers.init(sc.sampler, (rgb, xyz))
  rest = (*samplers.schedule(sc.sampler, sc.steps, sc.shift), cond, text, image, sc.guidance)  # sigmas, timesteps
  if sc.compiled_loop:
    return solver_loop(frozen, trainable, cfg, sc.sampler, state, *rest).x
  for _ in tqdm(range(sc.steps), desc="sampling", disable=not progress):
    state = solver_step(frozen, trainable, cfg, sc.sampler, state, *rest)
  return state.x
