"""Every registered attention kernel computes what the `xla` reference computes."""

import jax
import numpy as np
import pytest
from conftest import attention_inputs, value_and_grads

from one4d_jax.models import attention


@pytest.mark.parametrize("name", ["per_head", "auto", "splash"])
def test_kernel_equals_the_xla_reference(name):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((3, 37, 4, 16)).astype(np.float32)
  k, v = (rng.standard_normal((3, 53, 4, 16)).astype(np.float32) for _ in range(2))  # Lk != Lq, as in cross-attention
  ref = jax.jit(attention.get("xla"))(q, k, v)
  out = jax.jit(attention.get(name))(q, k, v)
  assert out.shape == ref.shape == (3, 37, 4, 16)
  np.testing.assert_allclose(out, ref, atol=2e-6)


def test_unknown_kernel_is_named():
  with pytest.raises(ValueError, match="unknown attention kernel 'nope'; registered: "):
    attention.get("nope")


def test_per_head_gradients_equal_the_xla_reference():
  """per_head's custom backward (probabilities recomputed from the log-sum-exp) against autodiff of `xla`."""
  q, k, v, cotangent = attention_inputs(29, 41, seed=1)
  grads = lambda name: value_and_grads(attention.get(name), q, k, v, cotangent)[1]
  for g, r in zip(grads("per_head"), grads("xla")):
    np.testing.assert_allclose(g, r, atol=2e-5)
