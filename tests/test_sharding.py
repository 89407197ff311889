"""Sharding: the config's rules are the one vocabulary for parameters and activations (a missing name is an error),
the partition specs of every tree are the checked-in golden ones, and a training step on any mesh computes what it
computes on one device.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_sharding.py`, and
review the diff.
"""

import difflib
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import one4d as one4d_config
from one4d_jax import pipeline, sharding
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.train import step as train_lib

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def config(variant="tiny", **model):
  c = one4d_config.get_config(f"variant={variant}")
  for k, v in model.items():
    setattr(c.model, k, v)
  return c


def test_mesh_takes_all_devices_and_rejects_impossible_shapes():
  assert jax.device_count() == 8, "conftest must force 8 CPU devices"
  mesh = sharding.make_mesh(fsdp=-1, tensor=2)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  with pytest.raises(ValueError, match="needs 6 devices, have 8"):
    sharding.make_mesh(fsdp=3, tensor=2)
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    sharding.make_mesh(fsdp=-1, tensor=-1)


def test_a_logical_name_without_a_rule_is_an_error_naming_it():
  rules = pipeline.sharding_rules(config())
  with pytest.raises(ValueError, match="logical axis 'embd' has no sharding rule"):
    sharding.logical_to_spec(("layers", "embd"), rules)
  without_mlp = tuple(r for r in rules if r[0] != "mlp")
  with pytest.raises(ValueError, match="'mlp' has no sharding rule"):
    sharding.logical_to_shardings(dit.logical_axes(dit.preset("tiny")), sharding.make_mesh(), without_mlp,
                                  dit.abstract_params(dit.preset("tiny")))
  with pytest.raises(ValueError, match="not a mesh axis"):
    sharding.as_rules([("embed", "fsdpp")])
  # activations too: a typo in the model's names would fail at trace time, under a mesh
  cfg = pipeline.dit_config(config())
  cfg = cfg.with_policy(sharding_rules=tuple(r for r in rules if r[0] != "activation_mlp"))
  x = np.zeros((1, 1, cfg.in_dim, 1, 2, 2), np.float32)
  with jax.set_mesh(sharding.make_mesh()), pytest.raises(ValueError, match="'activation_mlp' has no sharding rule"):
    jax.eval_shape(lambda p: dit.apply(p, cfg, x, np.zeros(1, np.float32), np.zeros((1, 3, cfg.text_dim)),
                                       np.zeros((1, 1, cfg.image_dim))), dit.abstract_params(cfg))


def test_activation_rules_split_the_batch_over_every_data_parallel_axis():
  rules = pipeline.sharding_rules(config())
  assert sharding.logical_to_spec(dit.TOKENS, rules) == P(None, ("data", "fsdp"), "context", None)
  mesh = sharding.make_mesh(data=2, fsdp=4)
  assert sharding.data_parallel_size(mesh, rules) == 8
  assert sharding.batch_sharding(mesh, rules).spec == P(("data", "fsdp"))


# ---------------------------------------------------------------------------------------------- golden specs


def spec_table(variant: str) -> str:
  """One line per leaf of the frozen, trainable and optimiser trees: path, shape, partition spec."""
  c = config(variant)
  cfg = pipeline.model_config(c)
  tx = train_lib.make_optimizer(train_lib.TrainConfig())
  state = train_lib.abstract_state(cfg, tx)
  mesh = sharding.make_mesh(fsdp=4, context=2)  # a dimension that does not divide over its axes keeps fewer
  trees = {
      "frozen": (dit.abstract_params(cfg.dit), train_lib.frozen_shardings(cfg, mesh)),
      "state": (state, train_lib.state_shardings(cfg, tx, mesh)),
  }
  lines = []
  for name, (shapes, shardings) in trees.items():
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    flat_specs = jax.tree.leaves(shardings)
    assert len(flat_shapes) == len(flat_specs)
    for (path, leaf), s in zip(flat_shapes, flat_specs):
      lines.append(f"{name}{jax.tree_util.keystr(path)}  {list(leaf.shape)}  {s.spec}")
  return "\n".join(lines) + "\n"


@pytest.mark.parametrize("variant", ["tiny", "14b"])
def test_partition_specs_are_the_golden_ones(variant):
  path = os.path.join(GOLDEN, f"partition_specs_{variant}.txt")
  got = spec_table(variant)
  if os.environ.get("UPDATE_GOLDEN"):
    os.makedirs(GOLDEN, exist_ok=True)
    with open(path, "w") as f:
      f.write(got)
  want = open(path).read()
  if got != want:
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now", n=0))
    pytest.fail(f"partition specs of the {variant} trees changed ({path}); if intended, regenerate with "
                f"UPDATE_GOLDEN=1:\n{diff[:6000]}")


def test_golden_specs_say_what_the_design_says():
  """Spot checks that make the golden file's meaning explicit: FSDP over embed, heads/MLP over tensor, LoRA and
  links sharded like the weights they attach to, optimiser moments like their parameters."""
  table = dict(line.split("  ", 1) for line in spec_table("14b").splitlines())
  fsdp = "('fsdp', 'context')"
  assert table["frozen['blocks']['self_attn']['q']['kernel']"] == f"[40, 5120, 5120]  P(None, {fsdp}, 'tensor')"
  assert table["frozen['blocks']['ffn_2']['kernel']"] == f"[40, 13824, 5120]  P(None, 'tensor', {fsdp})"
  lora_a = "state.trainable['lora']['rgb']['blocks']['self_attn']['q']['a']"
  assert table[lora_a] == f"[40, 5120, 64]  P(None, {fsdp}, None)"
  lora_b = lora_a.replace("['a']", "['b']")  # its output axis is on `tensor`: the rank axis takes the FSDP axes
  assert table[lora_b] == f"[40, 64, 5120]  P(None, {fsdp}, 'tensor')"
  assert table["state.trainable['links']['rgb_from_xyz']['kernel']"] == f"[5, 5120, 5120]  P(None, {fsdp}, 'tensor')"
  moments = [v for k, v in table.items() if k.startswith("state.opt_state") and k.endswith(lora_a[len("state.trainable"):])]
  assert moments == [table[lora_a]] * 2  # mu and nu
  tiny = dict(line.split("  ", 1) for line in spec_table("tiny").splitlines())  # rank 4 does not divide over 8
  assert tiny[lora_b] == "[2, 4, 32]  P(None, 'fsdp', 'tensor')"


# ------------------------------------------------------------------------------------- sharded == unsharded


def batch_and_rng(cfg, n=8, seed=0):
  rng = np.random.default_rng(seed)
  shape = (n, 16, 3, 6, 10)  # 3 x 3 x 5 = 45 tokens per branch: ragged on a context axis of 4
  return {"rgb": rng.standard_normal(shape).astype(np.float32), "xyz": rng.standard_normal(shape).astype(np.float32),
          "cond": rng.standard_normal((n, 20, 3, 6, 10)).astype(np.float32),
          "text": rng.standard_normal((n, 7, cfg.dit.text_dim)).astype(np.float32),
          "clip": rng.standard_normal((n, 5, cfg.dit.image_dim)).astype(np.float32)}, jax.random.key(seed)


def one_step(mesh_axes: dict | None, **model):
  """Loss, gradient norm and the state after one optimiser step of a tiny One4D whose LoRA B and links are
  non-zero (so every branch and link matters), on `mesh_axes` or on one device."""
  c = config(**model)
  c.one4d.link_layers = (0,)
  cfg = pipeline.model_config(c)
  cfg = cfg.replace(dit=cfg.dit.replace(num_heads=4))  # 4 heads of 8: Ulysses can split them over context 4
  tc = train_lib.TrainConfig(warmup_steps=1, lr=1e-2)
  tx = train_lib.make_optimizer(tc)
  frozen = dit.init(cfg.dit, jax.random.key(0))
  trainable = one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), jax.random.key(1))
  trainable = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), trainable)
  state = train_lib.init_state(trainable, tx)
  batch, rng = batch_and_rng(cfg)
  if mesh_axes is None:
    return train_lib.jit_train_step(cfg, tc, tx)(frozen, state, batch, rng)
  mesh = sharding.make_mesh(**mesh_axes)
  planned = train_lib.state_shardings(cfg, tx, mesh)
  frozen = jax.device_put(frozen, train_lib.frozen_shardings(cfg, mesh))
  state = jax.device_put(state, planned)
  with jax.set_mesh(mesh):
    new_state, metrics = train_lib.jit_train_step(cfg, tc, tx, planned)(
        frozen, state, sharding.global_batch(batch, mesh, cfg.dit.policy.sharding_rules), rng)
  assert jax.tree.map(lambda x: x.sharding, new_state) == planned, "the step keeps the state where it was planned"
  return new_state, metrics


@pytest.fixture(scope="module")
def unsharded():
  return one_step(None)


@pytest.mark.parametrize("mesh_axes,context_parallel", [
    (dict(fsdp=8), "none"),
    (dict(fsdp=4, tensor=2), "none"),
    (dict(fsdp=2, context=4), "ulysses"),
    (dict(fsdp=2, context=4), "ring"),
], ids=["fsdp8", "fsdp4-tensor2", "fsdp2-context4-ulysses", "fsdp2-context4-ring"])
def test_a_sharded_training_step_equals_the_single_device_step(unsharded, mesh_axes, context_parallel):
  """Forward (the loss of each modality), gradients (their norm and, through AdamW, every updated leaf) and the
  optimiser step agree with the single-device run within 1e-5 in float32."""
  state, metrics = one_step(mesh_axes, context_parallel=context_parallel)
  ref_state, ref_metrics = unsharded
  for k in ("loss", "loss_rgb", "loss_xyz", "grad_norm"):
    np.testing.assert_allclose(float(metrics[k]), float(ref_metrics[k]), rtol=1e-5, err_msg=k)
  for path, a, b in zip(jax.tree_util.tree_flatten_with_path(state.trainable)[0], jax.tree.leaves(state.trainable),
                        jax.tree.leaves(ref_state.trainable)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=jax.tree_util.keystr(path[0]))
