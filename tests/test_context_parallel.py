"""Context-parallel self-attention (sequence split over the `context` mesh axis) computes what the `xla` reference
computes on the whole sequence, values and gradients, for both ulysses and ring, ragged lengths included."""

import jax
import numpy as np
import pytest

from one4d_jax.models import attention, context_parallel

AXES = ("data", "fsdp", "context", "tensor")


def _mesh(shape):
  return jax.sharding.Mesh(np.array(jax.devices()).reshape(shape), AXES)


def _inputs(t, heads, n=2, d=8, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal((n, t, heads, d)).astype(np.float32) for _ in range(4))


def _value_and_grads(fn, q, k, v, cotangent):
  """fn(q, k, v) and the gradients of <fn(q, k, v), cotangent> w.r.t. q, k, v, in one jitted call."""
  def run(q, k, v):
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(cotangent)
  return jax.jit(run)(q, k, v)


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
@pytest.mark.parametrize("mesh_shape, t, heads", [
    ((1, 2, 4, 1), 32, 4),  # batch over fsdp, sequence over context
    ((1, 2, 4, 1), 30, 4),  # ragged: padded to 32, the two padded keys masked
    ((1, 1, 4, 2), 30, 8),  # heads over tensor too (ulysses: 4 local heads on 4 context devices)
])
def test_equals_the_xla_reference(mode, mesh_shape, t, heads):
  q, k, v, cotangent = _inputs(t, heads)
  ref, ref_grads = _value_and_grads(attention.get("xla"), q, k, v, cotangent)
  with jax.set_mesh(_mesh(mesh_shape)):
    out, grads = _value_and_grads(lambda q, k, v: context_parallel.attention(q, k, v, mode=mode), q, k, v, cotangent)
  assert out.shape == (2, t, heads, 8)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-5)


def test_ulysses_names_a_head_count_the_context_axis_cannot_split():
  q, k, v, _ = _inputs(32, heads=2)
  with jax.set_mesh(_mesh((1, 2, 4, 1))):
    with pytest.raises(ValueError, match="the 2 local heads .* not divisible by 4; use mode='ring'"):
      jax.jit(lambda q, k, v: context_parallel.attention(q, k, v, mode="ulysses"))(q, k, v)


def test_without_a_mesh_the_error_says_to_set_one():
  q, k, v, _ = _inputs(32, heads=4)
  with pytest.raises(ValueError, match=r"needs an ambient mesh: call it inside `with jax.set_mesh\(mesh\):`"):
    jax.jit(lambda q, k, v: context_parallel.attention(q, k, v, mode="ring"))(q, k, v)


def test_ragged_length_needs_a_kernel_that_masks_padding():
  q, k, v, _ = _inputs(30, heads=4)
  with jax.set_mesh(_mesh((1, 2, 4, 1))):
    with pytest.raises(ValueError, match="T=30 is not divisible by the 4 devices .* kernel 'xla' cannot"):
      jax.jit(lambda q, k, v: context_parallel.attention(q, k, v, mode="ulysses", kernel="xla"))(q, k, v)
