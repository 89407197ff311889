"""One4D: the Wan DiT run as two decoupled branches (RGB, XYZ) joined by zero-initialised control links (DLC).

Both branches share the frozen Wan weights and run as one forward with a branch axis of 2: every base GEMM covers both
branches, attention never mixes them, and each branch adds its own LoRA update. The RGB branch sees the UMC condition
(`[noisy 16 | mask 4 | cond 16]`); the XYZ branch sees its 16 noisy channels with the 20 condition channels zeroed, so
it learns about the condition only through the links. Text and CLIP context are shared.

XYZ projections (`xyz_projections`, on by default): the XYZ branch has its own patch embedding of its 16 latent
channels and its own output head, trained beside its LoRA; the paper's 935.7M trainable parameters count them
(685.0 Mi LoRA + 250.0 Mi links + 0.63 Mi). They are stored as zero-initialised differences from Wan's frozen
projections, so the XYZ branch starts reading and writing latents through the video prior exactly as Wan does (step 0
equals plain Wan on both branches): the same as copying the RGB weights into trainable ones (Adam's updates do not
depend on the offset), but built from shapes alone, and AdamW's weight decay pulls them towards Wan's projections
rather than towards zero.

Trees: `frozen` is the converted Wan DiT; `trainable` is `{"lora": {"rgb", "xyz"}, "links", "xyz_projections"}` for
`dlc`, or
`{"lora": {"shared"}, ...}` for the ablation couplings of the paper's Fig. 2 (`channel_concat`: one branch with the XYZ
latents as 16 extra input and output channels; `spatial_concat`: one branch with RGB and XYZ side by side in width).
"""

import dataclasses
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np

from one4d_jax.models import lora as lora_lib
from one4d_jax.models.wan import dit

COUPLINGS = ("dlc", "channel_concat", "spatial_concat")
LATENT = 16  # latent channels per modality
COND = 20  # UMC condition channels: mask 4 + conditioning latent 16

# LoRA target sets (regexes over module paths). The default adapts every linear layer of the transformer blocks
# (wan_spec 2: q, k, v, o of self- and cross-attention, k_img, v_img, both FFN layers: 12 per I2V block): at rank 64
# on the 14B model that is 2 x 359,137,280 = 685.0 Mi parameters, exactly the paper's "685M". `all` adds the
# linears outside the blocks (text, time and CLIP-image embeddings, the head); the patch embedding is a convolution
# in the reference and is never adapted.
TARGET_SETS = {
    "blocks": (r"blocks/.*",),
    "all": (r"blocks/.*", r"embed/(text_embedding_\d|time_embedding_\d|time_projection|img_linear_\d)", r"head/linear"),
}


@dataclasses.dataclass(frozen=True)
class One4DConfig:
  dit: dit.DiTConfig
  coupling: str = "dlc"
  lora_rank: int = 64
  lora_alpha: float = 64.0
  lora_targets: tuple[str, ...] = TARGET_SETS["blocks"]
  link_layers: tuple[int, ...] | None = None  # blocks followed by a control link; None = five evenly spaced
  xyz_projections: bool = True  # dlc: the XYZ branch's own patch embedding and head (False: Wan's, frozen)

  def __post_init__(self):
    if self.coupling not in COUPLINGS:
      raise ValueError(f"unknown coupling {self.coupling!r}; choose from {COUPLINGS}")
    if self.dit.in_dim != LATENT + COND or self.dit.out_dim != LATENT:
      raise ValueError(f"One4D needs an InP/I2V DiT (in_dim {LATENT + COND}, out_dim {LATENT}), got in_dim "
                       f"{self.dit.in_dim}, out_dim {self.dit.out_dim}")
    bad = [i for i in self.links if not 0 <= i < self.dit.num_layers]
    if bad or len(set(self.links)) != len(self.links):
      raise ValueError(f"link layers {self.links} must be distinct block indices in 0..{self.dit.num_layers - 1}")
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

  @property
  def links(self) -> tuple[int, ...]:
    """Block indices followed by a link: given, or five evenly spaced ending at the last block."""
    if self.link_layers is not None:
      return tuple(self.link_layers)
    n = min(5, self.dit.num_layers)
    return tuple(round(self.dit.num_layers * (j + 1) / n) - 1 for j in range(n))

  @property
  def base(self) -> dit.DiTConfig:
    """The DiT as the coupling runs it, with the LoRA scale alpha/rank."""
    cfg = self.dit.with_policy(lora_scale=self.lora_alpha / self.lora_rank)
    if self.coupling == "channel_concat":
      cfg = cfg.replace(in_dim=cfg.in_dim + LATENT, out_dim=2 * LATENT)
    return cfg

  def replace(self, **changes) -> "One4DConfig":
    return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------------------ init


def init_trainable(cfg: One4DConfig, frozen_abstract, rng: jax.Array) -> dict:
  """The trainable tree. LoRA B and the links are zero, so at init each branch computes plain Wan."""
  k_rgb, k_xyz, k_shared = jax.random.split(rng, 3)
  lora_init = lambda key, params: lora_lib.init_lora(key, params, cfg.lora_targets, cfg.lora_rank)
  if cfg.coupling == "dlc":
    n, d = len(cfg.links), cfg.dit.dim
    zeros = lambda: {"kernel": jnp.zeros((n, d, d), jnp.float32), "bias": jnp.zeros((n, d), jnp.float32)}
    trainable = {"lora": {"rgb": lora_init(k_rgb, frozen_abstract), "xyz": lora_init(k_xyz, frozen_abstract)},
                 "links": {"rgb_from_xyz": zeros(), "xyz_from_rgb": zeros()}}
    if cfg.xyz_projections:
      patch = LATENT * math.prod(cfg.dit.patch_size)
      trainable["xyz_projections"] = {
          "patch_embedding": {"kernel": jnp.zeros((patch, d), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)},
          "head": {"kernel": jnp.zeros((d, patch), jnp.float32), "bias": jnp.zeros((patch,), jnp.float32)}}
    return trainable
  trainable = {"lora": {"shared": lora_init(k_shared, _coupled_abstract(cfg, frozen_abstract))}}
  if cfg.coupling == "channel_concat":
    pt, ph, pw = cfg.dit.patch_size
    patch = LATENT * pt * ph * pw
    trainable["coupling"] = {"xyz_patch_embedding": jnp.zeros((patch, cfg.dit.dim), jnp.float32),
                             "xyz_head": {"kernel": jnp.zeros((cfg.dit.dim, patch), jnp.float32),
                                          "bias": jnp.zeros((patch,), jnp.float32)}}
  return trainable


def _coupled_abstract(cfg: One4DConfig, frozen_abstract):
  if cfg.coupling != "channel_concat":
    return frozen_abstract
  return jax.eval_shape(lambda f: _coupled_params(cfg, f, None), frozen_abstract)


def _coupled_params(cfg: One4DConfig, frozen, coupling):
  """channel_concat: the patch embedding gains 16 XYZ input channels (appended after the 36 Wan channels; patch
  vectors are channel-major) and the head 16 XYZ output channels (interleaved: head features are channel-fastest)."""
  if coupling is None:  # shapes only
    pt, ph, pw = cfg.dit.patch_size
    patch = LATENT * pt * ph * pw
    coupling = {"xyz_patch_embedding": jnp.zeros((patch, cfg.dit.dim)),
                "xyz_head": {"kernel": jnp.zeros((cfg.dit.dim, patch)), "bias": jnp.zeros((patch,))}}
  p = cfg.dit.patch_size[0] * cfg.dit.patch_size[1] * cfg.dit.patch_size[2]
  patch, head = frozen["embed"]["patch_embedding"], frozen["head"]["linear"]
  interleave = lambda base, extra, axis: einops.rearrange(
      jnp.stack([einops.rearrange(base, "... (p c) -> ... p c", p=p),
                 einops.rearrange(extra.astype(base.dtype), "... (p c) -> ... p c", p=p)], axis=-2),
      "... p m c -> ... (p m c)")
  kernel = jnp.concatenate([patch["kernel"], coupling["xyz_patch_embedding"].astype(patch["kernel"].dtype)], axis=0)
  return {**frozen,
          "embed": {**frozen["embed"], "patch_embedding": {**patch, "kernel": kernel}},
          "head": {**frozen["head"], "linear": {"kernel": interleave(head["kernel"], coupling["xyz_head"]["kernel"], -1),
                                                "bias": interleave(head["bias"], coupling["xyz_head"]["bias"], -1)}}}


def logical_axes(cfg: One4DConfig, trainable: dict) -> dict:
  """Logical axis names of the trainable tree: LoRA factors follow their kernels, links are (link, embed, heads)."""
  base_axes = dit.logical_axes(cfg.dit)
  out = {"lora": {}}
  for branch, tree in trainable["lora"].items():  # channel_concat widens only the unsharded patch axes
    out["lora"][branch] = lora_lib.logical_axes(base_axes, tree)
  P = jax.sharding.PartitionSpec
  if "links" in trainable:
    out["links"] = {k: {"kernel": P("link", "embed", "heads"), "bias": P("link", "heads")} for k in trainable["links"]}
  if "xyz_projections" in trainable:
    out["xyz_projections"] = {"patch_embedding": {"kernel": P("patch", "embed"), "bias": P("embed")},
                              "head": {"kernel": P("embed", "patch_out"), "bias": P("patch_out")}}
  if "coupling" in trainable:
    out["coupling"] = {"xyz_patch_embedding": P("patch", "embed"),
                       "xyz_head": {"kernel": P("embed", "patch_out"), "bias": P("patch_out")}}
  return out


# --------------------------------------------------------------------------------------------------------- forward


def _links_after_block(cfg: One4DConfig, links: dict):
  """after_block(h [2, B, L, D], layer) adding both links at link layers, each computed from the pre-link states."""
  index = np.full(cfg.dit.num_layers, -1, np.int32)
  index[list(cfg.links)] = np.arange(len(cfg.links))
  index = jnp.asarray(index)
  dtype = jnp.dtype(cfg.dit.policy.dtype)

  def linear(x, w, j):
    return (jnp.einsum("bld,de->ble", x.astype(dtype), w["kernel"][j].astype(dtype))
            + w["bias"][j].astype(dtype)).astype(jnp.float32)

  def after_block(h, layer):
    j = index[layer]

    def link(h):
      rgb, xyz = h[0], h[1]
      return jnp.stack([rgb + linear(xyz, links["rgb_from_xyz"], j), xyz + linear(rgb, links["xyz_from_rgb"], j)])

    return jax.lax.cond(j >= 0, link, lambda h: h, h)

  return after_block


def _with_xyz_projections(lora: list[dict], projections: dict) -> list[dict]:
  """The branches' LoRA trees with the XYZ branch's patch embedding and head differences added as per-branch
  full-rank terms (`one4d_jax.models.lora.Dense`; zeros for RGB). The XYZ patch embedding reads the 16 latent
  channels, which lead each patch vector (channel-major), so it is the first 16 x prod(patch) inputs."""
  def add(tree, deltas):
    embed, head = tree.get("embed", {}), tree.get("head", {})  # LoRA of these Dense layers too (targets `all`)
    return {**tree,
            "embed": {**embed, "patch_embedding": {**embed.get("patch_embedding", {}), **deltas["patch_embedding"]}},
            "head": {**head, "linear": {**head.get("linear", {}), **deltas["head"]}}}
  as_delta = lambda p: {"delta_kernel": p["kernel"], "delta_bias": p["bias"]}
  xyz = {name: as_delta(p) for name, p in projections.items()}
  rgb = jax.tree.map(jnp.zeros_like, xyz)
  return [add(lora[0], rgb), add(lora[1], xyz)]


def apply(frozen: dict, trainable: dict, cfg: One4DConfig, rgb, xyz, cond, t, text, image):
  """Velocities (Wan's `eps - x0` convention) for both modalities.

  rgb, xyz: noisy latents [B, 16, F, H, W]; cond: UMC condition [B, 20, F, H, W] (see `one4d_jax.umc`); t [B] in
  [0, 1000]; text [B, n, text_dim]; image: CLIP tokens [B, 257, image_dim]. Returns (v_rgb, v_xyz), float32.
  """
  if not (rgb.shape == xyz.shape and rgb.shape[1] == LATENT and cond.shape[1] == COND
          and cond.shape[2:] == rgb.shape[2:] and cond.shape[0] == rgb.shape[0]):
    raise ValueError(f"expected rgb and xyz latents [B, {LATENT}, F, H, W] and cond [B, {COND}, F, H, W]; got rgb "
                     f"{rgb.shape}, xyz {xyz.shape}, cond {cond.shape}")
  base = cfg.base
  if cfg.coupling == "dlc":
    x = jnp.stack([jnp.concatenate([rgb, cond], axis=1), jnp.concatenate([xyz, jnp.zeros_like(cond)], axis=1)])
    lora = [trainable["lora"]["rgb"], trainable["lora"]["xyz"]]
    if "xyz_projections" in trainable:
      lora = _with_xyz_projections(lora, trainable["xyz_projections"])
    part = lambda name: dit.lora_part(lora, name)
    grid = dit.token_grid(base, x.shape)
    tokens, e, e0, text_t, image_t = dit.embed(frozen["embed"], base, x, t, text, image, part("embed"))
    tokens = dit.run_blocks(frozen["blocks"], base, tokens, e0, text_t, image_t, grid, part("blocks"),
                            _links_after_block(cfg, trainable["links"]))
    out = dit.head(frozen["head"], base, tokens, e, grid, part("head"))
    return out[0], out[1]

  lora = [trainable["lora"]["shared"]]
  if cfg.coupling == "channel_concat":
    params = _coupled_params(cfg, frozen, trainable["coupling"])
    out = dit.apply(params, base, jnp.concatenate([rgb, cond, xyz], axis=1)[None], t, text, image, lora)[0]
    return out[:, :LATENT], out[:, LATENT:]
  width = rgb.shape[-1]  # spatial_concat: XYZ to the right of RGB, condition zeroed on the XYZ half
  x = jnp.concatenate([jnp.concatenate([rgb, cond], axis=1), jnp.concatenate([xyz, jnp.zeros_like(cond)], axis=1)],
                      axis=-1)
  out = dit.apply(frozen, base, x[None], t, text, image, lora)[0]
  return out[..., :width], out[..., width:]
