"""Parameters are sharded by their logical axis names, and a sharded model computes what the unsharded one does."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from one4d_jax import sharding
from one4d_jax.models.wan import dit

CFG = dit.preset("tiny")


def test_mesh_takes_all_devices_and_rejects_impossible_shapes():
  assert jax.device_count() == 8, "conftest must force 8 CPU devices"
  mesh = sharding.make_mesh(fsdp=-1, tensor=2)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  with pytest.raises(ValueError, match="needs 6 devices, have 8"):
    sharding.make_mesh(fsdp=3, tensor=2)
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    sharding.make_mesh(fsdp=-1, tensor=-1)


def test_parameter_shardings_follow_the_default_rules():
  mesh = sharding.make_mesh(fsdp=4, tensor=2)
  specs = jax.tree.map(lambda s: s.spec, sharding.logical_to_shardings(dit.logical_axes(CFG), mesh))
  blocks = specs["blocks"]
  assert blocks["self_attn"]["q"]["kernel"] == P(None, "fsdp", "tensor")
  assert blocks["self_attn"]["o"]["kernel"] == P(None, "tensor", "fsdp")
  assert blocks["cross_attn"]["k_img"]["kernel"] == P(None, "fsdp", "tensor")
  assert blocks["ffn_1"]["kernel"] == P(None, "fsdp", "tensor")
  assert blocks["ffn_2"]["kernel"] == P(None, "tensor", "fsdp")
  assert blocks["modulation"] == P(None, None, "fsdp")
  assert blocks["self_attn"]["norm_q"]["scale"] == P(None, "tensor")
  assert specs["embed"]["patch_embedding"]["kernel"] == P(None, "fsdp")
  assert specs["head"]["linear"]["kernel"] == P("fsdp", None)
  # every parameter has a logical name per dimension
  flat_axes = jax.tree.leaves(dit.logical_axes(CFG), is_leaf=lambda x: isinstance(x, P))
  flat_params = jax.tree.leaves(dit.abstract_params(CFG))
  assert [len(a) for a in flat_axes] == [len(p.shape) for p in flat_params]


def test_sharded_forward_equals_unsharded():
  params = dit.init(CFG, jax.random.key(0))
  mesh = sharding.make_mesh(fsdp=4, tensor=2)
  sharded = jax.device_put(params, sharding.logical_to_shardings(dit.logical_axes(CFG), mesh))
  assert sharded["blocks"]["ffn_1"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, CFG.in_dim, 3, 6, 10)).astype(np.float32)
  t = np.array([999.0, 3.0], np.float32)
  text = rng.standard_normal((2, 9, CFG.text_dim)).astype(np.float32)
  image = rng.standard_normal((2, 257, CFG.image_dim)).astype(np.float32)
  fwd = jax.jit(lambda p, *a: dit.forward(p, CFG, *a))
  np.testing.assert_allclose(fwd(sharded, x, t, text, image), fwd(params, x, t, text, image), atol=2e-6)
