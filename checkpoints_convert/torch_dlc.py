"""One4D's linked forward (DLC) in PyTorch, written from the paper rather than from one4d_jax: the independent
reference that tests/test_dlc_reference.py matches in values and gradients and that benchmarks/train_step.py times.

One diffusers `WanTransformer3DModel` carries two peft adapters (`rgb`, `xyz`); its forward is re-run from the model's
own submodules with the block loop twice in lockstep (one branch per adapter), the control links applied between
blocks in plain torch (each direction from the pre-link states), and the XYZ branch's own patch embedding and head
added as offsets to Wan's. Imports torch and peft only (no JAX), so a torch-only process can measure its own memory.
"""

import warnings

import torch

BRANCHES = ("rgb", "xyz")


def add_adapters(model, peft_states: dict, rank: int, alpha: float) -> dict:
  """Adds one peft LoRA adapter per branch to `model` holding the factors of `peft_states` ({branch: {"<module>.
  lora_A.weight": [r, in], "<module>.lora_B.weight": [out, r]}}, numpy; see `wan_dit.lora_to_peft`). Returns the
  factors as model parameters, {(branch, state key): parameter}."""
  import peft
  modules = sorted({k.rsplit(".lora_", 1)[0] for k in peft_states[BRANCHES[0]]})
  targets = sorted({m.split(".", 2)[2] for m in modules})  # blocks.<i>.attn1.to_q -> attn1.to_q
  for name in BRANCHES:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # the second adapter, on purpose
      model.add_adapter(peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), adapter_name=name)
    state = {k: torch.from_numpy(v) for k, v in peft_states[name].items()}
    result = peft.set_peft_model_state_dict(model, state, adapter_name=name)
    if [k for k in result.unexpected_keys if "lora" in k]:
      raise ValueError(f"peft did not take the {name} factors {result.unexpected_keys[:4]}")
  wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))
  if wrapped != modules:
    raise ValueError(f"peft wrapped {len(wrapped)} linears, the LoRA states name {len(modules)}; differing: "
                     f"{sorted(set(wrapped) ^ set(modules))[:6]}")
  params = dict(model.named_parameters())
  return {(name, k): params[k.replace(".weight", f".{name}.weight")]  # lora_A.weight -> lora_A.rgb.weight
          for name in BRANCHES for k in peft_states[name]}


def forward(model, link_layers, rgb, xyz, cond, t, text, image, links, proj, breakage=None):
  """The DLC forward -> (v_rgb, v_xyz), Wan's `eps - x0` velocities [B, 16, F, H, W].

  rgb, xyz: noisy latents [B, 16, F, H, W]; cond [B, 20, F, H, W]; t [B] in [0, 1000]; text [B, n <= 512, D_text];
  image: CLIP tokens [B, 257, D_clip]. link_layers: the blocks followed by a link;
  links: {"rgb_from_xyz"|"xyz_from_rgb": {"kernel": [n, D, D], "bias": [n, D]}} (y = x @ kernel + bias);
  proj: {"patch_embedding": {"kernel": [16*pt*ph*pw, D], "bias": [D]}, "head": {"kernel": [D, 16*pt*ph*pw], ...}}.
  breakage (to show a comparison can fail): "late" applies each link one block late, "sequential" updates the
  XYZ branch from the already-updated RGB state.

  peft's `set_adapter` leaves only the active adapter's factors requiring gradients: before a backward pass, set
  `requires_grad` on all of them again (autograd skips a leaf that no longer requires one).
  """
  b, c, f, h, w = rgb.shape
  pt, ph, pw = model.config.patch_size
  gf, gh, gw = f // pt, h // ph, w // pw
  x = {"rgb": torch.cat([rgb, cond], 1), "xyz": torch.cat([xyz, torch.zeros_like(cond)], 1)}

  rotary = model.rope(x["rgb"])
  hs = {k: model.patch_embedding(v).flatten(2).transpose(1, 2) for k, v in x.items()}
  # The XYZ patch embedding offset reads the 16 XYZ latent channels of each patch, ordered (c pt ph pw).
  patches = (xyz.reshape(b, c, gf, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
             .reshape(b, gf * gh * gw, c * pt * ph * pw))
  hs["xyz"] = hs["xyz"] + patches @ proj["patch_embedding"]["kernel"] + proj["patch_embedding"]["bias"]

  text512 = torch.nn.functional.pad(text, (0, 0, 0, 512 - text.shape[1]))  # diffusers' I2V attention assumes 512
  temb, timestep_proj, context, context_image = model.condition_embedder(t, text512, image)  # no LoRA here
  timestep_proj = timestep_proj.unflatten(1, (6, -1))
  context = torch.cat([context_image, context], 1)

  link_index = {layer: j for j, layer in enumerate(link_layers)}
  if breakage == "late":
    link_index = {layer + 1: j for layer, j in link_index.items()}
  for i, block in enumerate(model.blocks):
    for name in BRANCHES:
      model.set_adapter(name)
      hs[name] = block(hs[name], context, timestep_proj, rotary)
    if i in link_index:
      j = link_index[i]
      r2x, x2r = links["xyz_from_rgb"], links["rgb_from_xyz"]
      rgb_new = hs["rgb"] + hs["xyz"] @ x2r["kernel"][j] + x2r["bias"][j]
      src = rgb_new if breakage == "sequential" else hs["rgb"]
      hs = {"rgb": rgb_new, "xyz": hs["xyz"] + src @ r2x["kernel"][j] + r2x["bias"][j]}

  shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
  out = {}
  for name in BRANCHES:
    hidden = model.norm_out(hs[name].float()) * (1 + scale) + shift
    y = model.proj_out(hidden)
    if name == "xyz":
      y = y + hidden @ proj["head"]["kernel"] + proj["head"]["bias"]  # features (pt ph pw c), like proj_out's
    y = y.reshape(b, gf, gh, gw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    out[name] = y.flatten(6, 7).flatten(4, 5).flatten(2, 3)
  return out["rgb"], out["xyz"]
