"""Every registered attention kernel computes what the `xla` reference computes."""

import functools

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


@pytest.mark.parametrize("tq,tk", [(48, 257), (47, 256), (49, 257)])
def test_even_lengths_padding_equals_unpadded_attention(tq, tk):
  """The cudnn kernel's padding (`even_lengths`) around the `xla` implementation: the wrapped call sees even lengths
  and the padded keys masked, and values and gradients equal plain `xla` at odd lengths."""
  seen = []

  def attend(q, k, v, **lengths):
    seen.append((q.shape[1], k.shape[1], sorted(lengths)))
    return jax.nn.dot_product_attention(q, k, v, implementation="xla", **lengths)

  q, k, v, cotangent = attention_inputs(tq, tk, seed=2)
  out, grads = value_and_grads(functools.partial(attention.even_lengths, attend), q, k, v, cotangent)
  ref, ref_grads = value_and_grads(attention.get("xla"), q, k, v, cotangent)
  assert seen == [(tq + tq % 2, tk + tk % 2, ["key_value_seq_lengths", "query_seq_lengths"])]
  assert out.shape == ref.shape == (2, tq, 3, 8)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  for g, r in zip(grads, ref_grads):
    assert g.shape == r.shape
    np.testing.assert_allclose(g, r, atol=1e-6)


def test_even_lengths_call_the_kernel_unchanged():
  calls = []
  q, k, v, _ = attention_inputs(6, 10)
  attention.even_lengths(lambda *args, **kwargs: calls.append((args, kwargs)) or args[0], q, k, v)
  assert len(calls) == 1 and calls[0][0] == (q, k, v) and calls[0][1] == {}
