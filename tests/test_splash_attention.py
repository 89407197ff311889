"""The `splash` kernel (JAX's Pallas TPU splash attention, here in Pallas interpret mode on CPU) computes what the
`xla` reference computes, values and gradients, for ragged lengths and cross-attention."""

import jax
import numpy as np
import pytest

from one4d_jax.models import attention


def _inputs(tq, tk, n=2, heads=2, d=8, seed=0):
  rng = np.random.default_rng(seed)
  q, cotangent = (rng.standard_normal((n, tq, heads, d)).astype(np.float32) for _ in range(2))
  k, v = (rng.standard_normal((n, tk, heads, d)).astype(np.float32) for _ in range(2))
  return q, k, v, cotangent


def _value_and_grads(fn, q, k, v, cotangent):
  """fn(q, k, v) and the gradients of <fn(q, k, v), cotangent> w.r.t. q, k, v, in one jitted call."""
  def run(q, k, v):
    out, pullback = jax.vjp(fn, q, k, v)
    return out, pullback(cotangent)
  return jax.jit(run)(q, k, v)


def _assert_equal_to_xla(fn, q, k, v, cotangent):
  out, grads = _value_and_grads(fn, q, k, v, cotangent)
  ref, ref_grads = _value_and_grads(attention.get("xla"), q, k, v, cotangent)
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
