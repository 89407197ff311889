"""DLC invariants: zero-init equivalence to Wan, decoupled branches, frozen base, merged weights, couplings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from one4d_jax.models import lora as lora_lib
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.train import step as train

DIT = dit.preset("tiny").replace(num_layers=3)
CFG = one4d.One4DConfig(DIT, lora_rank=4, lora_alpha=8.0, link_layers=(0, 2))


def inputs(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  shape = (batch, 16, 3, 6, 10)
  rgb, xyz = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
  cond = rng.standard_normal((batch, 20, 3, 6, 10)).astype(np.float32)
  t = np.array([700.0, 15.0][:batch], np.float32)
  text = rng.standard_normal((batch, 7, DIT.text_dim)).astype(np.float32)
  clip = rng.standard_normal((batch, 257, DIT.image_dim)).astype(np.float32)
  return rgb, xyz, cond, t, text, clip


@pytest.fixture(scope="module")
def frozen():
  return dit.init(DIT, jax.random.key(0))


def trainable_at_init(cfg=CFG):
  return one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), jax.random.key(1))


def test_rgb_branch_equals_plain_wan_at_init(frozen):
  rgb, xyz, cond, t, text, clip = inputs()
  x_rgb, x_xyz = np.concatenate([rgb, cond], 1), np.concatenate([xyz, np.zeros_like(cond)], 1)
  v_rgb, v_xyz = jax.jit(lambda f, tr: one4d.apply(f, tr, CFG, rgb, xyz, cond, t, text, clip))(
      frozen, trainable_at_init())
  # Plain Wan (no LoRA, no links) on the same branch-stacked input.
  wan = jax.jit(lambda f: dit.apply(f, DIT, np.stack([x_rgb, x_xyz]), t, text, clip))(frozen)
  assert np.abs(np.asarray(v_rgb) - np.asarray(wan[0])).max() <= 1e-6
  assert np.abs(np.asarray(v_xyz) - np.asarray(wan[1])).max() <= 1e-6
  # Plain Wan on the RGB input alone. Not bit-identical: XLA's CPU reductions (LayerNorm/RMSNorm means) round
  # differently for arrays of different shapes, and LoRA makes the text keys branch-specific ([2, ...] instead of a
  # shared [1, ...]); measured 7e-7 (above) and 1e-6 (here) on outputs of magnitude ~1.
  alone = jax.jit(lambda f: dit.forward(f, DIT, x_rgb, t, text, clip))(frozen)
  assert np.abs(np.asarray(v_rgb) - np.asarray(alone)).max() <= 1e-5


def test_default_links_are_five_evenly_spaced_blocks():
  assert one4d.One4DConfig(dit.preset("fun-inp-14b")).links == (7, 15, 23, 31, 39)
  with pytest.raises(ValueError, match="link layers"):
    one4d.One4DConfig(DIT, link_layers=(0, 3))


def cross_branch_gradients(frozen, trainable):
  """|d v_xyz / d rgb| and |d v_rgb / d xyz| summed: exactly zero iff the branches are decoupled."""
  rgb, xyz, cond, t, text, clip = inputs()
  f = lambda tr, r, x: one4d.apply(frozen, tr, CFG, r, x, cond, t, text, clip)
  grads = jax.jit(lambda tr: (jax.grad(lambda r: jnp.sum(f(tr, r, xyz)[1]))(rgb),
                              jax.grad(lambda x: jnp.sum(f(tr, rgb, x)[0]))(xyz)))
  d_xyz_d_rgb, d_rgb_d_xyz = grads(trainable)
  return float(jnp.abs(d_xyz_d_rgb).sum()), float(jnp.abs(d_rgb_d_xyz).sum())


def batch_and_rng(seed=0):
  rgb, xyz, cond, _, text, clip = inputs(seed)
  return {"rgb": rgb, "xyz": xyz, "cond": cond, "text": text, "clip": clip}, jax.random.key(seed)


@pytest.fixture(scope="module")
def trained(frozen):
  """(frozen tree as it was before training, state after 3 optimiser steps, last metrics)."""
  before = jax.tree.map(np.array, frozen)
  return (before, *run_steps(frozen))


def run_steps(frozen, steps=3, tc=train.TrainConfig(lr=1e-2, warmup_steps=1, text_drop_prob=0.0)):
  tx = train.make_optimizer(tc)
  state = train.init_state(trainable_at_init(), tx)
  step = train.jit_train_step(CFG, tc, tx)
  batch, rng = batch_and_rng()
  for _ in range(steps):
    state, metrics = step(frozen, state, batch, rng)
  return state, metrics


def test_branches_are_decoupled_at_init_and_coupled_after_training(frozen, trained):
  assert cross_branch_gradients(frozen, trainable_at_init()) == (0.0, 0.0)
  _, state, metrics = trained
  assert np.isfinite(metrics["loss"])
  xyz_from_rgb, rgb_from_xyz = cross_branch_gradients(frozen, state.trainable)
  assert xyz_from_rgb > 0 and rgb_from_xyz > 0


def test_training_leaves_the_frozen_tree_bit_identical_and_gives_it_no_optimizer_state(frozen, trained):
  before, state, _ = trained
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(frozen)))
  trainable_shapes = sorted(x.shape for x in jax.tree.leaves(state.trainable))
  state_arrays = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  # AdamW keeps exactly two moments per trainable leaf and nothing for the frozen ones
  assert sorted(x.shape for x in state_arrays) == sorted(trainable_shapes * 2)
  assert set(state.trainable) == {"lora", "links", "xyz_projections"} and set(state.trainable["lora"]) == {"rgb", "xyz"}


def test_gradient_accumulation_equals_one_big_batch(frozen):
  tc = train.TrainConfig(text_drop_prob=0.0)
  batch, rng = batch_and_rng()
  trainable = trainable_at_init()
  cfg_grad = jax.jit(lambda mb, key: jax.grad(lambda tr: train.loss_fn(tr, frozen, CFG, tc, mb, key)[0])(trainable))
  keys = jax.random.split(jax.random.fold_in(rng, 0), 2)
  halves = [jax.tree.map(lambda x: x[i:i + 1], batch) for i in range(2)]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, cfg_grad(halves[0], keys[0]), cfg_grad(halves[1], keys[1]))
  sgd = optax.sgd(1.0)
  accumulating = train.TrainConfig(text_drop_prob=0.0, accum_steps=2)
  accumulating_step = jax.jit(functools.partial(train.train_step, cfg=CFG, tc=accumulating, tx=sgd))
  new_state, _ = accumulating_step(frozen, train.init_state(trainable, sgd), batch, rng)
  got = jax.tree.map(lambda new, old: old - new, new_state.trainable, trainable)
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, atol=1e-6)


@pytest.mark.parametrize("branch", ["rgb", "xyz"])
def test_merged_lora_weights_compute_the_branch(frozen, branch):
  trainable = trainable_at_init()
  keys = iter(jax.random.split(jax.random.key(5), 1000))
  randomize_b = lambda tree: jax.tree_util.tree_map_with_path(
      lambda p, a: 0.2 * jax.random.normal(next(keys), a.shape) if p[-1].key == "b" else a, tree)
  trainable["lora"] = {k: randomize_b(v) for k, v in trainable["lora"].items()}  # links stay zero
  rgb, xyz, cond, t, text, clip = inputs()
  v = one4d.apply(frozen, trainable, CFG, rgb, xyz, cond, t, text, clip)[0 if branch == "rgb" else 1]
  merged = lora_lib.merge(frozen, trainable["lora"][branch], CFG.lora_alpha / CFG.lora_rank)
  x = np.concatenate([rgb, cond] if branch == "rgb" else [xyz, np.zeros_like(cond)], axis=1)
  plain = dit.forward(merged, DIT, x, t, text, clip)
  assert np.abs(np.asarray(v) - np.asarray(plain)).max() > 0  # B is not zero: the LoRA does something ...
  np.testing.assert_allclose(v, plain, atol=2e-5)  # ... and it is exactly the merged weights


def test_merged_lora_mode_computes_what_the_factored_mode_computes_values_and_gradients(frozen):
  """lora_mode='merged' (inference) forms W + s A_k B_k per branch; factored (training) adds (x A_k) B_k."""
  trainable = trainable_at_init()
  keys = iter(jax.random.split(jax.random.key(6), 1000))
  trainable = jax.tree_util.tree_map_with_path(
      lambda p, a: 0.2 * jax.random.normal(next(keys), a.shape) if p[-1].key in ("b", "kernel") else a, trainable)
  merged_cfg = CFG.replace(dit=DIT.with_policy(lora_mode="merged"))
  args = inputs()

  def value_and_grad(cfg):
    loss = lambda tr: sum(jnp.sum(jnp.square(v)) for v in one4d.apply(frozen, tr, cfg, *args))
    return jax.jit(jax.value_and_grad(loss))(trainable)

  (loss_f, grad_f), (loss_m, grad_m) = value_and_grad(CFG), value_and_grad(merged_cfg)
  np.testing.assert_allclose(loss_m, loss_f, rtol=1e-5)
  for path, gm in jax.tree_util.tree_flatten_with_path(grad_m)[0]:
    gf = functools.reduce(lambda node, k: node[k.key], path, grad_f)
    np.testing.assert_allclose(gm, gf, rtol=1e-4, atol=1e-5 * float(np.abs(gf).max()), err_msg=jax.tree_util.keystr(path))
  with pytest.raises(ValueError, match="lora_mode must be one of"):
    DIT.with_policy(lora_mode="fused")
  # auto merges exactly when merging costs fewer FLOPs: K in out r  <  K rows (in + out) r
  auto = lora_lib.Dense(8, (None, None), lora_mode="auto")
  assert not auto._merge(rows=767, fan_in=1536, fan_out=1536) and auto._merge(rows=769, fan_in=1536, fan_out=1536)
  assert not lora_lib.Dense(8, (None, None))._merge(rows=10**6, fan_in=4, fan_out=4)  # factored never merges


def test_default_lora_targets_every_linear_layer_of_the_blocks():
  tree = trainable_at_init()["lora"]["rgb"]
  assert set(tree) == {"blocks"}
  assert set(tree["blocks"]) == {"self_attn", "cross_attn", "ffn_1", "ffn_2"}
  assert set(tree["blocks"]["self_attn"]) == {"q", "k", "v", "o"}
  assert set(tree["blocks"]["cross_attn"]) == {"q", "k", "v", "o", "k_img", "v_img"}
  a, b = tree["blocks"]["ffn_1"]["a"], tree["blocks"]["ffn_1"]["b"]
  assert a.shape == (3, DIT.dim, 4) and b.shape == (3, 4, DIT.ffn_dim) and not np.any(b)
  assert np.abs(a).max() <= 1 / np.sqrt(DIT.dim)  # PEFT's kaiming_uniform(a=sqrt(5)) bound


def test_all_target_set_adds_the_linears_outside_the_blocks_but_not_the_patch_embedding():
  tree = trainable_at_init(CFG.replace(lora_targets=one4d.TARGET_SETS["all"]))["lora"]["rgb"]
  assert set(tree["embed"]) == {"text_embedding_1", "text_embedding_2", "time_embedding_1", "time_embedding_2",
                                "time_projection", "img_linear_1", "img_linear_2"}
  assert set(tree["head"]) == {"linear"}


def test_summary_counts_match_the_paper_for_the_14b_model():
  from launch import summary
  counts = summary.groups(one4d.One4DConfig(dit.preset("fun-inp-14b")))
  assert counts["base"] == 16_394_878_784
  assert counts["lora.rgb"] == counts["lora.xyz"] == 359_137_280
  assert (counts["lora.rgb"] + counts["lora.xyz"]) / 2**20 == 685.0  # the paper's "685M"
  assert counts["links"] == 5 * 2 * (5120 * 5120 + 5120)  # 250.05 Mi
  assert counts["xyz_projections"] == (64 * 5120 + 5120) + (5120 * 64 + 64)  # patch embedding 16 x 1x2x2, head
  trainable = sum(n for name, n in counts.items() if name != "base")
  assert round(trainable / 2**20, 1) == 935.7  # the paper's 935.7M
  assert round((counts["links"] + counts["xyz_projections"]) / 2**20, 1) == 250.7  # the paper's "250.7M" links
  off = summary.groups(one4d.One4DConfig(dit.preset("fun-inp-14b"), xyz_projections=False))
  assert "xyz_projections" not in off and off["links"] == counts["links"]


def test_xyz_projections_are_the_xyz_branchs_own_patch_embedding_and_head(frozen):
  """With random projections (LoRA and links zero), the XYZ velocity equals plain Wan whose patch embedding (its 16
  latent channels) and head carry the differences; the RGB velocity stays plain Wan's."""
  rgb, xyz, cond, t, text, clip = inputs()
  trainable = trainable_at_init()
  rng = np.random.default_rng(3)
  proj = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), jnp.float32),
                      trainable["xyz_projections"])
  v_rgb, v_xyz = jax.jit(lambda f, tr: one4d.apply(f, tr, CFG, rgb, xyz, cond, t, text, clip))(
      frozen, {**trainable, "xyz_projections": proj})
  patch, head = frozen["embed"]["patch_embedding"], frozen["head"]["linear"]
  n = proj["patch_embedding"]["kernel"].shape[0]
  assert n == 16 * 4 and patch["kernel"].shape[0] == 36 * 4  # the XYZ latent channels lead each patch vector
  xyz_wan = {**frozen,
             "embed": {**frozen["embed"], "patch_embedding": {
                 "kernel": patch["kernel"].at[:n].add(proj["patch_embedding"]["kernel"]),
                 "bias": patch["bias"] + proj["patch_embedding"]["bias"]}},
             "head": {**frozen["head"], "linear": {"kernel": head["kernel"] + proj["head"]["kernel"],
                                                   "bias": head["bias"] + proj["head"]["bias"]}}}
  x_rgb, x_xyz = np.concatenate([rgb, cond], 1), np.concatenate([xyz, np.zeros_like(cond)], 1)
  want_xyz = jax.jit(lambda f: dit.apply(f, DIT, np.stack([x_rgb, x_xyz]), t, text, clip))(xyz_wan)[1]
  want_rgb = jax.jit(lambda f: dit.apply(f, DIT, np.stack([x_rgb, x_xyz]), t, text, clip))(frozen)[0]
  assert np.abs(np.asarray(v_xyz) - np.asarray(want_xyz)).max() <= 1e-5
  assert np.abs(np.asarray(v_rgb) - np.asarray(want_rgb)).max() <= 1e-6
  assert np.abs(np.asarray(v_xyz) - np.asarray(jax.jit(lambda f: dit.apply(
      f, DIT, np.stack([x_rgb, x_xyz]), t, text, clip))(frozen)[1])).max() > 1e-2  # the projections act


@pytest.mark.parametrize("coupling", ["channel_concat", "spatial_concat"])
def test_ablation_couplings_train_one_shared_lora(frozen, coupling):
  cfg = CFG.replace(coupling=coupling)
  trainable = trainable_at_init(cfg)
  assert set(trainable["lora"]) == {"shared"}
  rgb, xyz, cond, t, text, clip = inputs()
  v_rgb, v_xyz = one4d.apply(frozen, trainable, cfg, rgb, xyz, cond, t, text, clip)
  assert v_rgb.shape == v_xyz.shape == rgb.shape
  if coupling == "channel_concat":  # the extra XYZ channels are zero-initialised: RGB output is plain Wan's
    wan = dit.forward(frozen, DIT, np.concatenate([rgb, cond], 1), t, text, clip)
    assert np.abs(np.asarray(v_rgb) - np.asarray(wan)).max() <= 1e-5
    assert not np.any(np.asarray(v_xyz))
  grads = jax.grad(lambda tr: jnp.sum(one4d.apply(frozen, tr, cfg, rgb, xyz, cond, t, text, clip)[1]))(trainable)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


def test_bad_latent_shapes_are_named(frozen):
  rgb, xyz, cond, t, text, clip = inputs()
  with pytest.raises(ValueError, match="expected rgb and xyz latents"):
    one4d.apply(frozen, trainable_at_init(), CFG, rgb, xyz[:, :8], cond, t, text, clip)
