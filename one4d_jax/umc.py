"""Unified Masked Conditioning: one interface for image-, sparse-frames-, video- and text-to-4D.

Observed frames go into a conditioning video (unobserved frames zero, i.e. mid-grey in [-1, 1]); a binary frame mask
(1 = known) is folded to latent resolution as Wan does (wan_spec 5.1: frame 0 repeated 4 times, then each latent frame
carries the mask of the 4 pixel frames folded into it). The RGB branch's DiT input is `[noisy 16 | mask 4 | cond 16]`;
the XYZ branch gets zeros in place of the condition (`one4d_jax.models.one4d`). With no observed frame (text-to-4D)
mask and condition latent are all zero, as VideoX-Fun does, and so are the CLIP features.
"""

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("single_image", "sparse", "full_video", "text")
PAPER_TASK_PROBS = {"single_image": 0.35, "sparse": 0.30, "full_video": 0.35, "text": 0.0}
TEMPORAL_STRIDE = 4  # pixel frames per latent frame (after the first)


def check_frame_count(num_frames: int) -> int:
  """Latent frames for 1 + 4k pixel frames; anything else is an error."""
  if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
    lower = num_frames - (num_frames - 1) % TEMPORAL_STRIDE
    raise ValueError(f"{num_frames} frames: the VAE needs 1 + 4k frames (nearest: {max(lower, 1)} or {lower + 4})")
  return (num_frames - 1) // TEMPORAL_STRIDE + 1


def observed_frames(task: str, num_frames: int, sparsity: float | None = None) -> np.ndarray:
  """bool [F]: which frames a task observes. `sparse` keeps the first and last frame and spreads the rest uniformly,
  `round(sparsity * F)` frames in all (at least 2), as in the paper's Table 5."""
  observed = np.zeros(num_frames, bool)
  if task == "single_image":
    observed[0] = True
  elif task == "sparse":
    if sparsity is None or not 0 < sparsity <= 1:
      raise ValueError(f"the sparse task needs a sparsity ratio in (0, 1], got {sparsity}")
    count = min(num_frames, max(2, round(sparsity * num_frames)))
    observed[np.round(np.linspace(0, num_frames - 1, count)).astype(int)] = True
  elif task == "full_video":
    observed[:] = True
  elif task != "text":
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
  return observed


def condition_video(frames: jax.Array, observed: jax.Array) -> jax.Array:
  """frames [B, 3, F, H, W] in [-1, 1], observed bool [B, F] -> the video with unobserved frames zeroed."""
  return frames * observed[:, None, :, None, None].astype(frames.dtype)


def latent_mask(observed: jax.Array, latent_hw: tuple[int, int]) -> jax.Array:
  """observed bool [B, F] (F = 1 + 4k) -> mask [B, 4, F_lat, h, w], 1 = known.

  Channel c of latent frame j is the mask of pixel frame 0 if j = 0, else of pixel frame 4(j-1)+1+c."""
  check_frame_count(observed.shape[1])
  m = observed.astype(jnp.float32)
  folded = jnp.concatenate([jnp.repeat(m[:, :1], TEMPORAL_STRIDE, axis=1), m[:, 1:]], axis=1)  # [B, 4 F_lat]
  folded = folded.reshape(m.shape[0], -1, TEMPORAL_STRIDE).transpose(0, 2, 1)  # [B, 4, F_lat]
  return jnp.broadcast_to(folded[..., None, None], (*folded.shape, *latent_hw))


def condition(encode: Callable[[jax.Array], jax.Array], frames: jax.Array, observed: jax.Array) -> jax.Array:
  """The 20 condition channels `[mask 4 | cond latent 16]` [B, 20, F_lat, h, w] for the RGB branch.

  encode: video [B, 3, F, H, W] -> normalised latents [B, 16, F_lat, h, w] (the VAE). Examples with no observed frame
  (text-to-4D) get an all-zero condition."""
  cond_latent = encode(condition_video(frames, observed))
  any_observed = observed.any(axis=1)[:, None, None, None, None].astype(cond_latent.dtype)
  mask = latent_mask(observed, cond_latent.shape[-2:]).astype(cond_latent.dtype)
  return jnp.concatenate([mask, cond_latent * any_observed], axis=1)


def clip_condition(clip_features: jax.Array, observed: jax.Array) -> jax.Array:
  """CLIP tokens of the first frame, zeroed for examples with no observed frame (text-to-4D)."""
  return clip_features * observed.any(axis=1)[:, None, None].astype(clip_features.dtype)


def sample_task(rng: np.random.Generator, num_frames: int, probs: Mapping[str, float] = PAPER_TASK_PROBS,
                sparsity_range: tuple[float, float] = (0.03, 0.5)) -> tuple[str, np.ndarray]:
  """Draw a task with the given probabilities (the paper's 0.35 / 0.30 / 0.35 by default; text-only optional) and
  its observed frames; a sparse task draws its ratio uniformly from `sparsity_range`."""
  unknown = set(probs) - set(TASKS)
  if unknown:
    raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
  names = list(probs)
  p = np.asarray([probs[n] for n in names], np.float64)
  if (p < 0).any() or p.sum() <= 0:
    raise ValueError(f"task probabilities must be non-negative with a positive sum, got {dict(probs)}")
  task = names[rng.choice(len(names), p=p / p.sum())]
  sparsity = rng.uniform(*sparsity_range) if task == "sparse" else None
  return task, observed_frames(task, num_frames, sparsity)
