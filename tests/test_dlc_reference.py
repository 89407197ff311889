"""One4D's linked forward (DLC) equals an independent PyTorch reference, in values and gradients.

The reference is what a PyTorch user would write from the paper (`checkpoints_convert.torch_dlc`): one diffusers
`WanTransformer3DModel` carrying two peft adapters (`rgb`, `xyz`), its forward re-run from the model's own submodules
with the block loop twice in lockstep, the control links applied between blocks in plain torch, and the XYZ branch's
own patch embedding and head added as offsets to Wan's. Everything that One4D trains is non-zero: LoRA A and B of
both branches, both links (kernels and biases), both XYZ projections.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from one4d_jax.models import one4d
from one4d_jax.models.wan import dit

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from checkpoints_convert import core, torch_dlc, wan_dit

# diffusers' I2V attention hard-codes a 512-token text context, so text_len must be 512 for the two to agree.
CFG = dit.preset("tiny", num_layers=4, text_len=512)
OCFG = one4d.One4DConfig(CFG, lora_rank=4, lora_alpha=8.0, link_layers=(0, 2), xyz_projections=True)
BRANCHES = torch_dlc.BRANCHES


def _reference_model(seed: int = 0):
  """diffusers model with random weights (biases and norm scales perturbed, so every tensor matters), frozen."""
  torch.manual_seed(seed)
  model = diffusers.WanTransformer3DModel(**wan_dit.diffusers_kwargs(CFG)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
      p.requires_grad_(False)
  return model


def _trainable(frozen_abstract, seed: int = 1):
  """One4D's trainable tree (shapes from `init_trainable`) with every leaf random and non-zero: LoRA A uniform as
  at init, LoRA B 0.3 * normal (init: zero), links 0.1 * normal and XYZ projections 0.05 * normal (init: zero).
  Drawn with numpy: eager jax.random would compile one program per leaf shape."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: one4d.init_trainable(OCFG, frozen_abstract, jax.random.key(0)))

  def draw(path, leaf):
    if path[0].key == "lora" and path[-1].key == "a":
      bound = 1 / np.sqrt(leaf.shape[-2])
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    scale = {"lora": 0.3, "links": 0.1, "xyz_projections": 0.05}[path[0].key]
    return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(seed: int = 0):
  """Batch 2 with different timesteps, odd latent 3 x 6 x 10, a full 512-token text (no padding: with 505 identical
  padding tokens the cross-attention key gradients nearly cancel, and both float32 implementations lose ~1e-4 of
  them; padding itself is covered by tests/test_dit.py)."""
  rng = np.random.default_rng(seed)
  lat = lambda c: rng.standard_normal((2, c, 3, 6, 10)).astype(np.float32)
  rgb, xyz, cond = lat(one4d.LATENT), lat(one4d.LATENT), lat(one4d.COND)
  t = np.array([999.0, 37.5], np.float32)
  text = rng.standard_normal((2, CFG.text_len, CFG.text_dim)).astype(np.float32)
  image = rng.standard_normal((2, 257, CFG.image_dim)).astype(np.float32)
  # The loss weights W1, W2: unit normal / sqrt(size), so the loss and its gradients are O(1) (see the test).
  w = (rng.standard_normal((2, *rgb.shape)) / np.sqrt(rgb.size)).astype(np.float32)
  return rgb, xyz, cond, t, text, image, w


ATOL = 1e-5  # absolute, on O(1) velocities and on the gradients of an O(1) loss
RTOL_OF_MAX = 1e-4  # per tensor, relative to its own largest entry (see the test's docstring)


def _errors(ours, ref):
  """(max abs error, largest |ref| entry) of one tensor."""
  ours, ref = np.asarray(ours), np.asarray(ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max()), float(np.abs(ref).max())


def test_dlc_forward_and_gradients_equal_torch_reference():
  """Forward (both velocities) and gradients of loss = sum(v_rgb * W1) + sum(v_xyz * W2) w.r.t. every trainable
  leaf (both links' kernels and biases, both XYZ projections, every LoRA A and B of both branches) agree in float32.

  Tolerances: W1, W2 are unit normals scaled by 1/sqrt(size), so the loss and the gradients are O(1) and an absolute
  1e-5 is meaningful for all of them (with unscaled W the gradients reach ~1e2 and the float32 differences ~1e-4,
  the same ~1e-6 relative error). Some gradients are much smaller than the largest (e.g. of cross-attention keys),
  so each tensor must also be within RTOL_OF_MAX = 1e-4 of its own largest entry (measured: ~4e-6)."""
  model = _reference_model()
  frozen = core.convert_in_memory(wan_dit.DIFFUSERS_RULES, {k: v.detach().numpy().copy()
                                                            for k, v in model.state_dict().items()},
                                  dit.abstract_params(CFG))
  trainable = _trainable(dit.abstract_params(CFG))
  rgb, xyz, cond, t, text, image, w = _inputs()

  def loss(tr):
    v_rgb, v_xyz = one4d.apply(frozen, tr, OCFG, rgb, xyz, cond, t, text, image)
    return jnp.sum(v_rgb * w[0]) + jnp.sum(v_xyz * w[1]), (v_rgb, v_xyz)

  (jax_loss, (v_rgb, v_xyz)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(trainable)

  # The torch side: two peft adapters holding the same LoRA factors; links and projections as leaf tensors.
  peft_names = {name: wan_dit.lora_to_peft(trainable["lora"][name]) for name in BRANCHES}
  modules = sorted({k.rsplit(".lora_", 1)[0] for k in peft_names["rgb"]})
  assert len(modules) == 12 * CFG.num_layers and all(m.startswith("blocks.") for m in modules)
  lora_params = torch_dlc.add_adapters(model, peft_names, OCFG.lora_rank, OCFG.lora_alpha)
  leaf = lambda a: torch.tensor(np.asarray(a), requires_grad=True)
  links = jax.tree.map(leaf, trainable["links"])
  proj = jax.tree.map(leaf, trainable["xyz_projections"])
  tt = lambda a: torch.from_numpy(np.asarray(a))

  def reference(breakage=None):
    ref_rgb, ref_xyz = torch_dlc.forward(model, OCFG.links, tt(rgb), tt(xyz), tt(cond), tt(t), tt(text), tt(image),
                                         links, proj, breakage)
    return ref_rgb, ref_xyz, (ref_rgb * tt(w[0])).sum() + (ref_xyz * tt(w[1])).sum()

  ref_rgb, ref_xyz, ref_loss = reference()
  for p in lora_params.values():  # set_adapter leaves only the last active adapter trainable; autograd needs both
    p.requires_grad_(True)
  link_leaves, proj_leaves = jax.tree.leaves(links), jax.tree.leaves(proj)
  torch_grads = torch.autograd.grad(ref_loss, [*link_leaves, *proj_leaves, *lora_params.values()])

  errors = {"v_rgb": _errors(v_rgb, ref_rgb), "v_xyz": _errors(v_xyz, ref_xyz)}
  ours_leaves = [*jax.tree_util.tree_flatten_with_path(grads["links"])[0],
                 *jax.tree_util.tree_flatten_with_path(grads["xyz_projections"])[0]]
  prefixes = ["links"] * len(link_leaves) + ["xyz_projections"] * len(proj_leaves)
  for prefix, (path, g), ref in zip(prefixes, ours_leaves, torch_grads):
    errors[f"grad {prefix}{jax.tree_util.keystr(path)}"] = _errors(g, ref)
  torch_lora = dict(zip(lora_params, torch_grads[len(link_leaves) + len(proj_leaves):]))
  for name in BRANCHES:  # every LoRA factor of every layer, A and B, through the same peft export as the weights
    for k, g in wan_dit.lora_to_peft(grads["lora"][name]).items():
      errors[f"grad lora/{name}/{k}"] = _errors(g, torch_lora[(name, k)])
  assert len(errors) == 2 + 4 + 4 + 2 * 2 * len(modules)

  grad_errors = [e for k, e in errors.items() if k.startswith("grad")]
  worst_rel = max(errors, key=lambda k: errors[k][0] / errors[k][1])
  print(f"\nmax abs err: forward {max(errors['v_rgb'][0], errors['v_xyz'][0]):.2e} (|v| <= "
        f"{max(errors['v_rgb'][1], errors['v_xyz'][1]):.2f}); gradients {max(e[0] for e in grad_errors):.2e} "
        f"(|g| <= {max(e[1] for e in grad_errors):.2f}); worst relative to its tensor: {worst_rel} "
        f"{errors[worst_rel][0]:.2e} of {errors[worst_rel][1]:.2e}; loss {float(jax_loss):.7f} vs "
        f"{ref_loss.item():.7f}")
  bad = {k: e for k, e in errors.items() if not (e[0] <= ATOL and e[0] <= RTOL_OF_MAX * e[1])}
  assert not bad, bad
  assert abs(float(jax_loss) - ref_loss.item()) <= ATOL

  # Every trained leaf gets a real gradient.
  assert all(e[1] > 1e-4 for e in grad_errors)

  # The comparison can fail: a link one block late, or XYZ updated from the updated RGB state, is far off.
  with torch.no_grad():
    for breakage in ("late", "sequential"):
      bad_rgb, bad_xyz, _ = reference(breakage)
      err = max(_errors(v_rgb, bad_rgb)[0], _errors(v_xyz, bad_xyz)[0])
      assert err > 100 * ATOL, (breakage, err)
