"""Attention kernels behind one registry, so the model code never names a backend.

Every kernel takes q [N, Tq, heads, d], k and v [N, Tk, heads, d] and returns [N, Tq, heads, d] with the default
1/sqrt(d) scale and no mask. `xla` (`jax.nn.dot_product_attention`) is the reference every other kernel is tested
against; `auto` (the default of DiTConfig) picks a kernel for the backend at trace time (`auto_kernel`). `flash`
is blockwise attention in pure JAX, memory linear in the sequence length on any backend; its `flash_attention_lse`
form also returns the log-sum-exp that context parallelism (context_parallel.py) merges by. `splash` is JAX's Pallas
TPU splash attention (Pallas interpret mode elsewhere, for tests); GSPMD cannot partition a Pallas call, so under a
mesh the model runs it per shard inside `jax.shard_map` (`runs_per_shard`, dit._attend).
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.experimental.pallas.ops.tpu import splash_attention as splash

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_KERNELS: dict[str, AttentionFn] = {}


def register(name: str) -> Callable[[AttentionFn], AttentionFn]:
  def add(fn: AttentionFn) -> AttentionFn:
    _KERNELS[name] = fn
    return fn
  return add


def get(name: str) -> AttentionFn:
  if name not in _KERNELS:
    raise ValueError(f"unknown attention kernel {name!r}; registered: {sorted(_KERNELS)}")
  return _KERNELS[name]


@register("xla")
def xla_attention(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@register("cudnn")
def cudnn_attention(q, k, v):
  """cuDNN flash attention (GPU only, bf16/fp16), through `even_lengths`: JAX 0.10.2 differentiates it only at even
  sequence lengths (its placeholder bias counts as a bias in check_is_flash_attention), and I2V cross-attention
  attends to 257 CLIP tokens."""
  return even_lengths(functools.partial(jax.nn.dot_product_attention, implementation="cudnn"), q, k, v)


def even_lengths(attend, q, k, v):
  """attend(q, k, v) with Tq and Tk padded to even lengths: the padded keys are masked by `key_value_seq_lengths`
  and the padded query rows sliced off (their zero cotangents add nothing to dk, dv). `attend` takes
  `jax.nn.dot_product_attention`'s arguments; already even lengths call it unchanged."""
  tq, tk = q.shape[1], k.shape[1]
  if tq % 2 == 0 and tk % 2 == 0:
    return attend(q, k, v)
  even = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  # Both lengths given, and computed from q, so that under vmap (layers.stacked's init) they are batched like q, as
  # JAX's cuDNN batching rule assumes: constant ones (or JAX's default query lengths) fail there with "cannot reshape
  # array of shape (1,) (size 1) into shape (30,)".
  lengths = lambda n: jnp.where(jnp.isnan(q[:, 0, 0, 0]), n, n)
  return attend(even(q), even(k), even(v), query_seq_lengths=lengths(tq + tq % 2),
                key_value_seq_lengths=lengths(tk))[:, :tq]


@register("per_head")
def per_head_attention(q, k, v):
  """The same maths one (batch, head) pair at a time under `lax.map`, normalising after the PV product: a head's
  [Lq, Lk] scores stay in cache instead of writing, transposing and re-reading all heads' probabilities. About 2x
  faster than `xla` for the attention kernel on CPU (benchmarks/dit_forward.py --attention per_head). The backward
  recomputes each head's probabilities from its log-sum-exp (FlashAttention's trick), so a training step keeps
  q, k, v and the output, not the [Lq, Lk] probabilities of every head. The map runs the pairs sequentially, so
  keep `xla` where batch or heads are sharded across devices."""
  n, lq, heads, d = q.shape
  by_head = lambda x: x.transpose(0, 2, 1, 3).reshape(n * heads, x.shape[1], d)
  out = _per_head(by_head(q), by_head(k), by_head(v))
  return out.reshape(n, heads, lq, d).transpose(0, 2, 1, 3)


def _head_scores(qh, kh):
  return jnp.einsum("qd,kd->qk", qh, kh, preferred_element_type=jnp.float32) / math.sqrt(qh.shape[-1])


def _head_forward(qkv):
  """One head: q [Lq, d], k and v [Lk, d] -> (out [Lq, d] in q.dtype, lse [Lq] float32)."""
  qh, kh, vh = qkv
  s = _head_scores(qh, kh)
  m = s.max(-1)
  p = jnp.exp(s - m[:, None])
  l = p.sum(-1)
  o = jnp.einsum("qk,kd->qd", p.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
  return (o / l[:, None]).astype(qh.dtype), m + jnp.log(l)


@jax.custom_vjp
def _per_head(q, k, v):
  """q [P, Lq, d], k and v [P, Lk, d] -> out [P, Lq, d], one pair P at a time."""
  return jax.lax.map(_head_forward, (q, k, v))[0]


def _per_head_forward(q, k, v):
  out, lse = jax.lax.map(_head_forward, (q, k, v))
  return out, (q, k, v, out, lse)


def _per_head_backward(residuals, dout):
  """dS = P * (dP - rowsum(dO * O)), with P recomputed from the saved lse, one head at a time."""
  q, k, v, out, lse = residuals

  def one(xs):
    qh, kh, vh, oh, lse_h, doh = xs
    p = jnp.exp(_head_scores(qh, kh) - lse_h[:, None])
    delta = jnp.einsum("qd,qd->q", doh.astype(jnp.float32), oh.astype(jnp.float32))
    dp = jnp.einsum("qd,kd->qk", doh, vh, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None]) / math.sqrt(qh.shape[-1])
    dq = jnp.einsum("qk,kd->qd", ds.astype(kh.dtype), kh, preferred_element_type=jnp.float32)
    dk = jnp.einsum("qk,qd->kd", ds.astype(qh.dtype), qh, preferred_element_type=jnp.float32)
    dv = jnp.einsum("qk,qd->kd", p.astype(doh.dtype), doh, preferred_element_type=jnp.float32)
    return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype)

  return jax.lax.map(one, (q, k, v, out, lse, dout))


_per_head.defvjp(_per_head_forward, _per_head_backward)


def auto_kernel(dtype, backend: str | None = None) -> str:
  """The kernel `auto` runs for `backend` (default: JAX's) and dtype: per_head on CPU, the fastest measured there
  (benchmarks/dit_forward.py, dlc_forward.py); splash on TPU, JAX's own TPU kernel (unmeasured: no TPU here); cuDNN
  flash attention on GPU in bf16/fp16; xla elsewhere (GPU float32)."""
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return "per_head"
  if backend == "tpu":
    return "splash"
  if backend in ("gpu", "cuda", "rocm") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "xla"


@register("auto")
def auto_attention(q, k, v):
  """The kernel `auto_kernel` names for the backend, chosen at trace time."""
  return get(auto_kernel(q.dtype))(q, k, v)


def runs_per_shard(name: str, dtype) -> bool:
  """Whether kernel `name` (at this dtype) is a Pallas call, which GSPMD cannot partition ("Mosaic kernels cannot be
  automatically partitioned"): under a mesh it must run inside `jax.shard_map` (dit._attend does)."""
  return (auto_kernel(dtype) if name == "auto" else name) == "splash"


# ------------------------------------------------------------------------------------------------ flash attention

_MASKED = -1e30  # finite: a masked score minus a running max of _MASKED is 0, never inf - inf = NaN


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def flash_attention_lse(q, k, v, *, kv_len=None, block_q: int = 512, block_k: int = 512):
  """Attention in [block_q, block_k] tiles with an online softmax, so memory is linear in the sequence length (the
  [Tq, Tk] scores of a head never exist, in the forward or, through the custom VJP, the backward).

  q [N, Tq, H, d], k and v [N, Tk, H, d] -> (out [N, Tq, H, d] in q.dtype, lse [N, H, Tq] float32), where lse is
  the log-sum-exp of each query's scaled scores: ring attention merges partial results by it, so it is
  differentiable. Keys at positions >= kv_len (an int, a traced int scalar, or None) are masked as padding; a query
  with no unmasked key gets out 0 and lse = _MASKED, which weighs nothing in a merge. Any Tq, Tk: the sequences are
  padded to whole blocks here, and blocks longer than a sequence shrink to it (rounded up to a multiple of 8)."""
  tq, tk = q.shape[1], k.shape[1]
  bq, bk = min(block_q, _round_up(tq, 8)), min(block_k, _round_up(tk, 8))
  blocks = lambda x, b: rearrange(jnp.pad(x, ((0, 0), (0, -x.shape[1] % b), (0, 0), (0, 0))),
                                  "n (c t) h d -> c n h t d", t=b)
  unmasked = kv_len is None or (isinstance(kv_len, int) and kv_len >= tk)
  kv_valid = None if unmasked and tk % bk == 0 else jnp.minimum(tk if kv_len is None else kv_len, tk)
  out, lse = _flash(blocks(q, bq), blocks(k, bk), blocks(v, bk), kv_valid)
  return (rearrange(out, "c n h t d -> n (c t) h d")[:, :tq],
          rearrange(lse, "c n h t -> n h (c t)")[:, :, :tq])


@register("flash")
def flash_attention(q, k, v):
  """Blockwise attention in pure JAX: memory linear in the sequence length on any backend."""
  return flash_attention_lse(q, k, v)[0]


def _scores(qi, kj, j, kv_valid):
  """Scaled scores [n, h, bq, bk] (float32) of query block qi [n, h, bq, d] against key block j, kj [n, h, bk, d],
  masked to _MASKED beyond kv_valid; and the key mask [bk] (None when nothing is masked)."""
  s = jnp.einsum("nhqd,nhkd->nhqk", qi, kj, preferred_element_type=jnp.float32) / math.sqrt(qi.shape[-1])
  if kv_valid is None:
    return s, None
  keep = j * kj.shape[2] + jnp.arange(kj.shape[2]) < kv_valid
  return jnp.where(keep, s, _MASKED), keep


def _probs(s, keep, lse):
  """exp(s - lse) with masked keys exactly 0, even in a row where every key is masked (s = lse = _MASKED)."""
  p = jnp.exp(s - lse[..., None])
  return p if keep is None else jnp.where(keep, p, 0.0)


@jax.custom_vjp
def _flash(qb, kb, vb, kv_valid):
  """Blocked q [cq, n, h, bq, d], k and v [ck, n, h, bk, d] -> (out [cq, n, h, bq, d], lse [cq, n, h, bq])."""
  return _flash_forward(qb, kb, vb, kv_valid)[0]


def _flash_forward(qb, kb, vb, kv_valid):
  def query_block(qi):
    def key_step(carry, kvj):
      m, l, acc = carry
      kj, vj, j = kvj
      s, keep = _scores(qi, kj, j, kv_valid)
      m_new = jnp.maximum(m, s.max(-1))
      p, rescale = _probs(s, keep, m_new), jnp.exp(m - m_new)
      pv = jnp.einsum("nhqk,nhkd->nhqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
      return (m_new, rescale * l + p.sum(-1), rescale[..., None] * acc + pv), None

    # Carries start from qi (full_like) so inside shard_map they vary over the same mesh axes as the data.
    init = (jnp.full_like(qi[..., 0], _MASKED, jnp.float32), jnp.zeros_like(qi[..., 0], jnp.float32),
            jnp.zeros_like(qi, jnp.float32))
    (m, l, acc), _ = jax.lax.scan(key_step, init, (kb, vb, jnp.arange(kb.shape[0])))
    l = jnp.where(l > 0, l, 1.0)  # 0 only where every key is masked: out 0, lse = m = _MASKED
    return (acc / l[..., None]).astype(qi.dtype), m + jnp.log(l)

  out, lse = jax.lax.map(query_block, qb)
  return (out, lse), (qb, kb, vb, out, lse, kv_valid)


def _flash_backward(residuals, cotangents):
  """FlashAttention-2 backward: scores recomputed tile by tile from the saved lse. With D = rowsum(dO * O) - dlse,
  dS = P * (dP - D); the -dlse term is lse's own cotangent (d lse_i / d s_ij = P_ij)."""
  qb, kb, vb, out, lse, kv_valid = residuals
  dout, dlse = cotangents
  delta = jnp.einsum("cnhqd,cnhqd->cnhq", dout.astype(jnp.float32), out.astype(jnp.float32)) - dlse
  scale = 1 / math.sqrt(qb.shape[-1])

  def key_block(dq, kvj):
    kj, vj, j = kvj

    def query_step(carry, xs):
      dk, dv = carry
      qi, doi, lse_i, delta_i = xs
      s, keep = _scores(qi, kj, j, kv_valid)
      p = _probs(s, keep, lse_i)
      dp = jnp.einsum("nhqd,nhkd->nhqk", doi, vj, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i[..., None]) * scale
      dv = dv + jnp.einsum("nhqk,nhqd->nhkd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("nhqk,nhqd->nhkd", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
      dqi = jnp.einsum("nhqk,nhkd->nhqd", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
      return (dk, dv), dqi

    init = (jnp.zeros_like(kj, jnp.float32), jnp.zeros_like(vj, jnp.float32))
    (dk, dv), dq_j = jax.lax.scan(query_step, init, (qb, dout, lse, delta))
    return dq + dq_j, (dk.astype(kj.dtype), dv.astype(vj.dtype))

  dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros_like(qb, jnp.float32), (kb, vb, jnp.arange(kb.shape[0])))
  return dq.astype(qb.dtype), dk, dv, None


_flash.defvjp(_flash_forward, _flash_backward)


# ------------------------------------------------------------------------------------------------ splash attention

_LANES = 128  # TPU vector lanes: splash's blocks (and segment-id tiles) are multiples of this


def splash_attention(q, k, v, *, kv_len: int | None = None, block: int = 512, interpret: bool | None = None):
  """JAX's Pallas splash attention (FlashAttention-2 on TPU, with its own dq and dkv backward kernels).

  Any Tq, Tk: each is padded to whole blocks of `block` (shrunk to the sequence rounded up to 128 lanes: 512 for
  512 text tokens, 384 for 257 CLIP tokens). Padded keys, and keys at positions >= kv_len (a static int >= 1, as
  Ulysses pads a ragged sequence; None = all), get segment id 1 and every query segment 0: no query attends to
  padding, and every query, padded ones too, has real keys, so no softmax row is empty (splash's mask value is
  finite: an empty row would average all keys, not NaN). Padded queries' outputs are sliced off, so their zero
  cotangents add nothing to dk, dv. Splash applies no scale: q is scaled here.

  `interpret` runs the kernel in the Pallas interpreter (slow; for tests). None (the default) decides when the program
  is lowered (`lax.platform_dependent`): the Mosaic kernel for TPU, also when compiled ahead of time on a CPU host for
  a TPU topology, the interpreter for any other platform."""
  if interpret is None:
    run = lambda interpret: functools.partial(splash_attention, kv_len=kv_len, block=block, interpret=interpret)
    return jax.lax.platform_dependent(q, k, v, tpu=run(False), default=run(True))
  n, tq, heads, d = q.shape
  tk = k.shape[1]
  bq, bk = min(block, _round_up(tq, _LANES)), min(block, _round_up(tk, _LANES))
  tq_pad, tk_pad = _round_up(tq, bq), _round_up(tk, bk)
  kernel = splash.make_splash_mha(
      splash.MultiHeadMask([splash.FullMask((tq_pad, tk_pad))] * heads), head_shards=1, q_seq_shards=1,
      block_sizes=splash.BlockSizes(block_q=bq, block_kv=bk, block_q_dkv=bq, block_kv_dkv=bk, block_q_dq=bq,
                                    block_kv_dq=bk),
      interpret=interpret)
  valid = tk if kv_len is None else min(kv_len, tk)
  segments = None if valid == tk_pad else splash.SegmentIds(
      q=jnp.zeros(tq_pad, jnp.int32), kv=(jnp.arange(tk_pad) >= valid).astype(jnp.int32))
  heads_first = lambda x, t: rearrange(jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0), (0, 0))),
                                       "n t h d -> n h t d")
  out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(
      heads_first(q * (1 / math.sqrt(d)), tq_pad), heads_first(k, tk_pad), heads_first(v, tk_pad))
  return rearrange(out, "n h t d -> n t h d")[:, :tq]


@register("splash")
def splash_attention_kernel(q, k, v):
  """Pallas splash attention (`splash_attention`): the TPU kernel, Pallas interpret mode on other platforms."""
  return splash_attention(q, k, v)
