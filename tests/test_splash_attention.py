"""The `splash` kernel (JAX's Pallas TPU splash attention, here in Pallas interpret mode on CPU) computes what the
`xla` reference computes, values and gradients, for ragged lengths and cross-attention, alone and per shard under a
mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import attention_inputs, value_and_grads
from jax.sharding import PartitionSpec as P

from one4d_jax import sharding
from one4d_jax.models import attention, context_parallel
from one4d_jax.models.wan import dit


def _inputs(tq, tk, **kw):
  """Two heads: the Pallas interpreter is slow."""
  return attention_inputs(tq, tk, **{"heads": 2, **kw})


def _assert_equal_to_xla(fn, q, k, v, cotangent):
  out, grads = value_and_grads(fn, q, k, v, cotangent)
  ref, ref_grads = value_and_grads(attention.get("xla"), q, k, v, cotangent)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("tq, tk, block", [
    (100, 100, 512),  # ragged self-attention: blocks shrink to 128, the 28 padded keys masked
    (100, 37, 512),  # cross-attention, Tk != Tq: each padded to its own block
    (130, 257, 128),  # 2 query blocks x 3 key blocks, both ragged
])
def test_values_and_gradients_equal_the_xla_reference(tq, tk, block):
  _assert_equal_to_xla(lambda q, k, v: attention.splash_attention(q, k, v, block=block), *_inputs(tq, tk))


def test_auto_is_unchanged_off_tpu_and_only_splash_runs_per_shard():
  assert jax.default_backend() == "cpu" and attention.auto_kernel(jnp.bfloat16) == "per_head"
  assert attention.runs_per_shard("splash", jnp.float32)
  assert not any(attention.runs_per_shard(name, jnp.float32) for name in ("auto", "xla", "flash", "per_head"))


def test_dit_runs_splash_per_shard_under_a_mesh():
  """Under a mesh dit._attend runs splash inside shard_map, each device with its examples (fsdp), queries (context)
  and heads (tensor) against all their keys, and equals the mesh-less xla."""
  cfg = dit.preset("tiny").with_policy(sharding_rules=(
      ("activation_branch", None), ("activation_batch", "fsdp"), ("activation_length", "context"),
      ("activation_heads", "tensor")))
  rng = np.random.default_rng(0)
  q, cotangent = (rng.standard_normal((2, 2, 40, cfg.dim)).astype(np.float32) for _ in range(2))
  k, v = (rng.standard_normal((1, 2, 7, cfg.dim)).astype(np.float32) for _ in range(2))  # shared text context
  attend = lambda name: lambda q, k, v: dit._attend(cfg.with_policy(attention=name), q, k, v)
  ref, ref_grads = value_and_grads(attend("xla"), q, k, v, cotangent)
  mesh = sharding.make_mesh(fsdp=2, context=2, tensor=2)
  with jax.set_mesh(mesh):
    out, grads = value_and_grads(attend("splash"), q, k, v, cotangent)
    jaxpr = jax.make_jaxpr(attend("splash"))(q, k, v)
  (specs,) = [eqn.params["in_specs"][-3:] for eqn in jaxpr.eqns if eqn.primitive.name == "shard_map"]
  assert specs == (P("fsdp", "context", "tensor"), P("fsdp", None, "tensor"), P("fsdp", None, "tensor"))
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-5)


@pytest.mark.parametrize("t", [64, 62])  # 62: padded to 64 over the 4 context devices, the 2 padded keys masked
def test_ulysses_context_parallelism_runs_splash_inside_its_shard_map(t):
  q, k, v, cotangent = _inputs(t, t, heads=4)
  mesh = sharding.make_mesh(fsdp=2, context=4)
  with jax.set_mesh(mesh):
    ulysses = lambda q, k, v: context_parallel.attention(q, k, v, mode="ulysses", kernel="splash",
                                                         batch_axes="fsdp")
    _assert_equal_to_xla(ulysses, q, k, v, cotangent)


@pytest.mark.parametrize("mode, backend_kernel, expected", [("ulysses", "splash", "splash"), ("ring", "splash", "flash"),
                                                            ("ulysses", "per_head", "flash")])
def test_auto_under_context_parallelism_picks_the_backends_masking_kernel(monkeypatch, mode, backend_kernel,
                                                                           expected):
  """On TPU (auto = splash) Ulysses runs splash inside its shard_map; ring needs flash's log-sum-exp; off TPU flash."""
  seen = []
  monkeypatch.setattr(attention, "auto_kernel", lambda dtype: backend_kernel)
  monkeypatch.setattr(context_parallel, "attention", lambda q, k, v, *, kernel, **kw: seen.append(kernel) or q)
  cfg = dit.preset("tiny").with_policy(context_parallel=mode, sharding_rules=(
      ("activation_branch", None), ("activation_batch", "fsdp"), ("activation_length", "context"),
      ("activation_heads", "tensor")))
  q = np.zeros((2, 16, 2, 8), np.float32)
  with jax.set_mesh(sharding.make_mesh(fsdp=2, context=2, tensor=2)):
    dit._context_parallel(cfg, q, q, q)
  assert seen == [expected]
