"""The blockwise `flash` kernel computes what the `xla` reference computes, values and gradients, in memory linear in
the sequence length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import attention_inputs, value_and_grads

from one4d_jax.models import attention


@pytest.mark.parametrize("tq, tk, block", [
    (64, 64, 16),  # whole blocks
    (37, 53, 16),  # ragged: both padded internally
    (40, 7, 16),  # cross-attention shape; the key block shrinks to 8
])
def test_values_and_gradients_equal_the_xla_reference(tq, tk, block):
  q, k, v, cotangent = attention_inputs(tq, tk)
  flash = lambda q, k, v: attention.flash_attention_lse(q, k, v, block_q=block, block_k=block)[0]
  out, grads = value_and_grads(flash, q, k, v, cotangent)
  ref, ref_grads = value_and_grads(attention.get("xla"), q, k, v, cotangent)
  assert out.shape == ref.shape == (2, tq, 3, 8)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-5)


def test_registered_kernel_equals_the_xla_reference_at_default_blocks():
  q, k, v, _ = attention_inputs(600, 520)  # over one 512 block each
  np.testing.assert_allclose(jax.jit(attention.get("flash"))(q, k, v), attention.xla_attention(q, k, v), atol=1e-5)


def test_keys_beyond_kv_len_are_masked_as_padding():
  q, k, v, cotangent = attention_inputs(37, 53)
  kv_len = 30
  flash = lambda q, k, v: attention.flash_attention_lse(q, k, v, kv_len=kv_len, block_q=16, block_k=16)[0]
  out, (dq, dk, dv) = value_and_grads(flash, q, k, v, cotangent)
  ref, (rq, rk, rv) = value_and_grads(attention.get("xla"), q, k[:, :kv_len], v[:, :kv_len], cotangent)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(dq, rq, atol=1e-5)
  np.testing.assert_allclose(dk[:, :kv_len], rk, atol=1e-5)
  np.testing.assert_allclose(dv[:, :kv_len], rv, atol=1e-5)
  assert not np.any(dk[:, kv_len:]) and not np.any(dv[:, kv_len:])


def test_queries_with_every_key_masked_get_zero_output_and_weightless_finite_lse():
  q, k, v, cotangent = attention_inputs(20, 24)
  lse_loss = lambda q, k, v: attention.flash_attention_lse(q, k, v, kv_len=0, block_q=8, block_k=8)[1].sum()
  out, lse = jax.jit(lambda q, k, v: attention.flash_attention_lse(q, k, v, kv_len=0, block_q=8, block_k=8))(q, k, v)
  grads = jax.jit(jax.grad(lse_loss, (0, 1, 2)))(q, k, v)
  assert not np.any(out) and np.all(lse < -1e29)
  assert all(np.all(np.isfinite(g)) and not np.any(g) for g in grads)


def test_lse_gradient_equals_the_gradient_of_logsumexp_of_the_scores():
  q, k, v, _ = attention_inputs(37, 53)
  weights = np.random.default_rng(1).standard_normal((2, 3, 37)).astype(np.float32)  # lse is [N, H, Tq]
  flash = lambda q, k, v: attention.flash_attention_lse(q, k, v, block_q=16, block_k=16)[1]
  scores = lambda q, k: jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(q.shape[-1])
  reference = lambda q, k, v: jax.nn.logsumexp(scores(q, k), axis=-1)
  lse, grads = value_and_grads(flash, q, k, v, weights)
  ref, ref_grads = value_and_grads(reference, q, k, v, weights)
  np.testing.assert_allclose(lse, ref, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-5)


def test_forward_and_backward_memory_stays_far_below_the_full_scores():
  n, t, heads, d = 1, 4096, 2, 32
  scores_bytes = n * heads * t * t * 4
  x = jax.ShapeDtypeStruct((n, t, heads, d), jnp.float32)

  def temp_bytes(kernel):
    loss = lambda q, k, v: jnp.sum(kernel(q, k, v) ** 2)
    compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(attention.get("flash")) < scores_bytes / 4
  assert temp_bytes(attention.get("xla")) > scores_bytes
