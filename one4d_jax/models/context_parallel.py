"""Context (sequence) parallel self-attention: the tokens of one sequence split over a mesh axis, for sequences whose
activations or scores do not fit one device (a 14B One4D clip is ~18k tokens per branch).

`ulysses` (DeepSpeed-Ulysses) swaps the sequence split for a head split with two all-to-alls, runs any registry kernel
on whole sequences, and swaps back: 4 all-to-alls of the local q/k/v/out, each moving (c-1)/c of it; it needs the
local head count divisible by c. `ring` keeps queries in place and passes K/V blocks around the ring of c devices
(c-1 ppermutes each of K and V), merging the partial results of the flash kernel by their log-sum-exp; any head
count works. `none` runs the kernel under GSPMD and lets XLA gather what it needs.
"""

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.sharding import PartitionSpec as P

from one4d_jax.models import attention as kernels

MODES = ("none", "ulysses", "ring")
# Kernels that mask keys beyond a static kv_len: the padding of a sequence not divisible by the context size.
_MASKING = {"flash": lambda q, k, v, kv_len: kernels.flash_attention_lse(q, k, v, kv_len=kv_len)[0],
            "splash": kernels.splash_attention}


def attention(q, k, v, *, mode: str, kernel: str = "flash", batch_axes=("data", "fsdp"), heads_axes="tensor",
              axis: str = "context"):
  """q, k, v [N, T, H, d] (self-attention: same T) inside jit under an ambient mesh set with `jax.set_mesh(mesh)`;
  the sequence axis T is split over mesh axis `axis`, N over `batch_axes`, H over `heads_axes` (None = unsharded;
  a tuple = several mesh axes). Returns [N, T, H, d] sharded the same way.

  A T not divisible by the size c of `axis` is padded to a multiple of c here and the padded keys are masked, which
  only the `flash` and `splash` kernels can do (ring always uses flash: it needs the log-sum-exp)."""
  if mode not in MODES:
    raise ValueError(f"unknown context-parallel mode {mode!r}; expected one of {MODES}")
  if mode == "none":
    return kernels.get(kernel)(q, k, v)
  if q.shape != k.shape or k.shape != v.shape:
    raise ValueError(f"context-parallel attention is self-attention: q, k, v must share [N, T, H, d]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if mode == "ring" and kernel != "flash":
    raise ValueError(f"ring attention merges partial results by their log-sum-exp, which only kernel='flash' "
                     f"returns; got kernel={kernel!r}")
  mesh = jax.sharding.get_abstract_mesh()
  _check_axes(mesh, axis, batch_axes, heads_axes)
  c, t = mesh.shape[axis], q.shape[1]
  padded = -t % c
  if padded and kernel not in _MASKING:
    raise ValueError(f"T={t} is not divisible by the {c} devices of mesh axis {axis!r}: the padded keys must be "
                     f"masked, which kernel {kernel!r} cannot do; use kernel='flash' or 'splash', or a T divisible "
                     f"by {c}")
  kv_len = t if padded else None
  if mode == "ulysses":
    heads = q.shape[2] // _size(mesh, heads_axes)
    if heads % c:
      raise ValueError(f"ulysses attention splits the {heads} local heads (H={q.shape[2]} over heads_axes="
                       f"{heads_axes!r}) across the {c} devices of mesh axis {axis!r}: {heads} is not divisible by "
                       f"{c}; use mode='ring' or a mesh whose {axis!r} size divides {heads}")
    local = lambda q, k, v: _ulysses(q, k, v, kernel=kernel, kv_len=kv_len, axis=axis)
  else:
    local = lambda q, k, v: _ring(q, k, v, kv_len=kv_len, axis=axis, size=c)
  spec = P(batch_axes, axis, heads_axes, None)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, padded), (0, 0), (0, 0)))
  # A Pallas kernel (splash) does not say which mesh axes its outputs vary over: it runs unchecked.
  out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                      check_vma=not kernels.runs_per_shard(kernel, q.dtype))(pad(q), pad(k), pad(v))
  return out[:, :t]


def _ulysses(q, k, v, *, kernel, kv_len, axis):
  """Local [n, T/c, h, d] -> all-to-all -> [n, T, h/c, d], attention over the whole sequence, and back."""
  to_heads = lambda x: jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)
  q, k, v = to_heads(q), to_heads(k), to_heads(v)
  out = kernels.get(kernel)(q, k, v) if kv_len is None else _MASKING[kernel](q, k, v, kv_len=kv_len)
  return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)


def _ring(q, k, v, *, kv_len, axis, size):
  """Local queries [n, T/c, h, d] against the K/V block of every device in turn, merged by log-sum-exp.

  A Python loop, not fori_loop: c is a small static number, the last step needs no ppermute, and unrolled steps
  leave XLA free to overlap each ppermute with the previous step's attention. Gradients come from autodiff (a
  ppermute transposes to the reverse permutation); it keeps each visiting K/V block for the backward pass, so the
  residuals hold the whole sequence's K/V per device: linear in T, not T/c."""
  me, block = jax.lax.axis_index(axis), q.shape[1]
  ring = [(i, (i + 1) % size) for i in range(size)]
  out = lse = None
  for step in range(size):
    # Step s holds the block of device me - s: its keys beyond the true length are padding.
    valid = None if kv_len is None else jnp.clip(kv_len - ((me - step) % size) * block, 0, block)
    out_s, lse_s = kernels.flash_attention_lse(q, k, v, kv_len=valid)
    out_s = out_s.astype(jnp.float32)
    if out is None:
      out, lse = out_s, lse_s
    else:
      merged = jnp.logaddexp(lse, lse_s)
      weight = lambda x: rearrange(jnp.exp(x - merged), "n h t -> n t h 1")
      out, lse = weight(lse) * out + weight(lse_s) * out_s, merged
    if step < size - 1:
      k, v = jax.lax.ppermute(k, axis, ring), jax.lax.ppermute(v, axis, ring)
  return out.astype(q.dtype)


def _names(axes) -> tuple:
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _size(mesh, axes) -> int:
  size = 1
  for name in _names(axes):
    size *= mesh.shape[name]
  return size


def _check_axes(mesh, axis, batch_axes, heads_axes):
  if mesh.empty:
    raise ValueError("context-parallel attention needs an ambient mesh: call it inside `with jax.set_mesh(mesh):`")
  if axis not in mesh.axis_names:
    raise ValueError(f"context axis {axis!r} is not in the mesh axes {mesh.axis_names}")
  missing = [a for a in _names(batch_axes) + _names(heads_axes) if a not in mesh.axis_names]
  if missing:
    raise ValueError(f"batch_axes={batch_axes!r} / heads_axes={heads_axes!r} name {missing}, not in the mesh axes "
                     f"{mesh.axis_names}")
