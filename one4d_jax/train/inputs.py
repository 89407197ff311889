"""From the Grain pipeline's examples (frames, pointmaps, observed frames, captions) to the training step's batch
(`rgb`, `xyz` latents, UMC `cond`, `text`, `clip`), with the frozen encoders: the Wan VAE for both modalities,
umT5 for captions and CLIP for the first observed frame. From precomputed encodings (`one4d_jax.data.precomputed`:
`window_encodings` once per window) a step encodes only the UMC condition (`precomputed_batch`).

Encoders come from converted checkpoints (`python -m checkpoints_convert.wan --component vae|t5|clip`). Without a
text encoder the text condition is zero (what CFG training drops it to); without CLIP the image features are zero.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from one4d_jax import checkpoints, runtime, umc
from one4d_jax.models.wan import clip as clip_lib
from one4d_jax.models.wan import t5 as t5_lib
from one4d_jax.models.wan import tokenizer as tokenizer_lib
from one4d_jax.models.wan import vae as vae_lib


@dataclasses.dataclass
class Encoders:
  vae_cfg: vae_lib.VAEConfig
  vae: dict
  text_dim: int
  image_dim: int
  t5_cfg: t5_lib.T5Config | None = None
  t5: dict | None = None
  tokenizer: tokenizer_lib.Tokenizer | None = None
  clip_cfg: clip_lib.CLIPConfig | None = None
  clip: dict | None = None


def load_encoders(vae_path: str, t5_path: str = "", tokenizer_path: str = "", clip_path: str = "", *,
                  text_dim: int, image_dim: int, random_tiny: bool = False, rng: jax.Array | None = None) -> Encoders:
  """The encoders from converted checkpoints. `random_tiny`: a randomly initialised tiny VAE when `vae_path` is
  empty (tests and dry runs on a laptop); otherwise a missing VAE is an error."""
  if vae_path:
    vae_cfg, vae = checkpoints.load(vae_path)
  elif random_tiny:
    vae_cfg = vae_lib.preset("tiny")
    init = jax.jit(functools.partial(vae_lib.init, vae_cfg), compiler_options=runtime.INIT_COMPILER_OPTIONS)
    vae = init(rng if rng is not None else jax.random.key(0))
  else:
    raise ValueError("no VAE checkpoint: set config.encoders.vae to a folder written by "
                     "`python -m checkpoints_convert.wan --component vae`")
  enc = Encoders(vae_cfg, vae, text_dim, image_dim)
  if t5_path:
    if not tokenizer_path:
      raise ValueError("config.encoders.t5 is set but config.encoders.tokenizer is not (the umT5 tokenizer folder)")
    enc.t5_cfg, enc.t5 = checkpoints.load(t5_path)
    enc.tokenizer = tokenizer_lib.load(tokenizer_path)
    if enc.t5_cfg.dim != text_dim:
      raise ValueError(f"the text encoder's width {enc.t5_cfg.dim} is not the DiT's text_dim {text_dim}")
  if clip_path:
    enc.clip_cfg, enc.clip = checkpoints.load(clip_path)
  return enc


@functools.partial(jax.jit, static_argnames=("vae_cfg",))
def _latents(vae, vae_cfg, video):
  return vae_lib.encode(vae, vae_cfg, video)


@functools.partial(jax.jit, static_argnames=("t5_cfg",))
def _text(t5, t5_cfg, ids, mask):  # compiled once: eagerly, umT5's layer scan is traced again on every call
  return t5_lib.encode(t5, t5_cfg, ids, mask)


@functools.partial(jax.jit, static_argnames=("clip_cfg",))
def _image(clip, clip_cfg, images):
  return clip_lib.encode(clip, clip_cfg, images)


@functools.partial(jax.jit, static_argnames=("vae_cfg",))
def _condition(vae, vae_cfg, frames, observed):
  return umc.condition(lambda video: vae_lib.encode(vae, vae_cfg, video), frames, observed)


def first_observed(frames: np.ndarray, observed: np.ndarray) -> np.ndarray:
  """frames [B, 3, F, H, W], observed bool [B, F] -> [B, 3, H, W]: each example's first observed frame (frame 0
  when none is observed; its CLIP features are zeroed by `umc.clip_condition`)."""
  first = np.argmax(observed, axis=1)
  return frames[np.arange(frames.shape[0]), :, first]


def encode_text(enc: Encoders, captions) -> jax.Array:
  """umT5 embeddings [B, n, text_dim] of the captions; zeros [B, 1, text_dim] without a text encoder."""
  captions = [str(c) for c in np.asarray(captions).reshape(-1)]
  if enc.t5 is None:
    return jnp.zeros((len(captions), 1, enc.text_dim), jnp.float32)
  ids, mask = enc.tokenizer(captions)
  return _text(enc.t5, enc.t5_cfg, ids, mask)


def conditions(enc: Encoders, frames, observed, captions) -> dict:
  """What the model is conditioned on, for training and sampling alike: the UMC condition `cond`
  [B, 20, F_lat, h, w], `text` [B, n, text_dim] and `clip` [B, 257, image_dim] (first observed frame)."""
  observed = jnp.asarray(observed, bool)
  if enc.clip is not None:
    first = first_observed(np.asarray(frames), np.asarray(observed))
    image = umc.clip_condition(_image(enc.clip, enc.clip_cfg, jnp.asarray(first)), observed)
  else:
    image = jnp.zeros((frames.shape[0], 257, enc.image_dim), jnp.float32)
  return {"cond": _condition(enc.vae, enc.vae_cfg, jnp.asarray(frames), observed),
          "text": encode_text(enc, captions), "clip": image}


def latent_validity(valid: np.ndarray, vae_cfg: vae_lib.VAEConfig) -> np.ndarray:
  """Per-pixel validity [B, F, H, W] -> the share of valid pixels each VAE latent cell encodes, [B, 1, F_lat, h, w]
  float32: latent frame 0 encodes frame 0, latent frame i >= 1 frames t(i-1)+1..ti (the causal VAE's temporal
  factor t, 4 for Wan), each latent pixel an s x s block (spatial factor s, 8)."""
  b, f, h, w = valid.shape
  s, t = vae_cfg.spatial_factor, vae_cfg.temporal_factor
  if (f - 1) % t or h % s or w % s:
    raise ValueError(f"validity of {f} frames at {h}x{w} does not fold onto the VAE's latent grid (frames 1 + {t}k, "
                     f"sides multiples of {s})")
  v = valid.astype(np.float32)
  v = np.concatenate([np.repeat(v[:, :1], t, axis=1), v[:, 1:]], axis=1)  # frame 0 alone fills latent frame 0
  return v.reshape(b, 1, (f - 1) // t + 1, t, h // s, s, w // s, s).mean(axis=(3, 5, 7))


def model_batch(enc: Encoders, example: dict) -> dict:
  """A batch of pipeline examples -> the training step's batch (latents float32 on the default device)."""
  return {"rgb": _latents(enc.vae, enc.vae_cfg, jnp.asarray(example["frames"])),
          "xyz": _latents(enc.vae, enc.vae_cfg, jnp.asarray(example["pointmaps"])),
          "xyz_valid": latent_validity(np.asarray(example["valid"]), enc.vae_cfg),
          **conditions(enc, example["frames"], example["observed"], example["caption"])}


def window_encodings(enc: Encoders, example: dict) -> dict:
  """What of one pipeline example (unbatched) does not depend on the task drawn, encoded once for
  `one4d_jax.data.precomputed`: `rgb`, `xyz` latents [16, F_lat, h, w], `xyz_valid` [1, F_lat, h, w], `text`
  [n, text_dim] and, with a CLIP encoder, `clip` [257, image_dim] of frame 0 (numpy float32)."""
  frames = jnp.asarray(example["frames"])[None]
  out = {"rgb": _latents(enc.vae, enc.vae_cfg, frames),
         "xyz": _latents(enc.vae, enc.vae_cfg, jnp.asarray(example["pointmaps"])[None]),
         "xyz_valid": latent_validity(np.asarray(example["valid"])[None], enc.vae_cfg),
         "text": encode_text(enc, [example["caption"]])}
  if enc.clip is not None:
    out["clip"] = _image(enc.clip, enc.clip_cfg, frames[:, :, 0])
  return {k: np.asarray(v[0], np.float32) for k, v in out.items()}


def precomputed_batch(enc: Encoders, example: dict) -> dict:
  """A batch of precomputed examples (`one4d_jax.data.precomputed`: uint8 frames, stored latents and embeddings)
  -> the training step's batch, as model_batch gives it for the same elements: only the UMC condition (the video
  masked by the task drawn) is VAE-encoded. The stored CLIP features are frame 0's, which is the first observed frame
  of every task that observes any (`umc.observed_frames`); an example breaking that is an error."""
  observed = np.asarray(example["observed"], bool)
  if np.any(observed.any(axis=1) & ~observed[:, 0]):
    raise ValueError("an example observes frames but not frame 0, so the stored CLIP features (frame 0's) are not "
                     "its first observed frame's: train from clips, or precompute the CLIP features per task")
  frames = np.asarray(example["frames"]).astype(np.float32) / 127.5 - 1.0  # as the pipeline converts them
  if "clip" in example:
    image = umc.clip_condition(jnp.asarray(example["clip"]), jnp.asarray(observed))
  else:
    image = jnp.zeros((observed.shape[0], 257, enc.image_dim), jnp.float32)
  return {"rgb": jnp.asarray(example["rgb"]), "xyz": jnp.asarray(example["xyz"]),
          "xyz_valid": np.asarray(example["xyz_valid"]),
          "cond": _condition(enc.vae, enc.vae_cfg, jnp.asarray(frames), jnp.asarray(observed)),
          "text": jnp.asarray(example["text"]), "clip": image}
