"""Umeyama similarity alignment, written once for numpy (float64 metrics, bit-compatible with evo) and JAX (jit).

The array module follows the input: numpy in, numpy out; jax in, jax out. evo's `umeyama_alignment` is the reference:
positions are aligned pred -> gt with one scale, one rotation and one translation (Umeyama 1991, Eqs. 38-42).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def umeyama(src_n3, dst_n3, weights_n=None, with_scale=True):
  """Least-squares (s, R, t) with dst ~= s * R @ src + t.

  src_n3, dst_n3: [N, 3]; weights_n: optional [N] non-negative weights (zero weight = ignored point, NaN-safe).
  Returns (s scalar, R [3, 3], t [3]). With numpy inputs this equals evo's `geometry.umeyama_alignment`.
  """
  xp = _xp(src_n3)
  if src_n3.shape != dst_n3.shape or src_n3.ndim != 2 or src_n3.shape[-1] != 3:
    raise ValueError(f"umeyama expects two [N, 3] arrays of equal shape, got {src_n3.shape} and {dst_n3.shape}")
  if weights_n is None:
    weights_n = xp.ones(src_n3.shape[0], dtype=src_n3.dtype)
  ok = weights_n > 0
  w = xp.where(ok, weights_n, 0)
  src = xp.where(ok[:, None], src_n3, 0)
  dst = xp.where(ok[:, None], dst_n3, 0)
  wsum = xp.maximum(w.sum(), 1e-30)
  mu_s = (w[:, None] * src).sum(0) / wsum
  mu_d = (w[:, None] * dst).sum(0) / wsum
  cs = xp.where(ok[:, None], src - mu_s, 0)
  cd = xp.where(ok[:, None], dst - mu_d, 0)
  var_s = (w * (cs ** 2).sum(-1)).sum() / wsum
  cov = (w[:, None, None] * cd[:, :, None] * cs[:, None, :]).sum(0) / wsum
  u, d, vt = xp.linalg.svd(cov)
  sign = xp.where(xp.linalg.det(u) * xp.linalg.det(vt) < 0, -1.0, 1.0)
  smat = xp.stack([xp.ones_like(sign), xp.ones_like(sign), sign])
  rot = (u * smat[None, :]) @ vt
  scale = (d * smat).sum() / xp.maximum(var_s, 1e-30) if with_scale else xp.ones((), dtype=src_n3.dtype)
  trans = mu_d - scale * rot @ mu_s
  return scale, rot, trans


def apply_sim3_to_c2w(scale, rot, trans, c2w_f44):
  """Left-multiplies camera-to-world poses by a Sim(3), as evo's `align(correct_scale=True)` does.

  Positions become s*R@p + t, rotations R@R_i; poses stay rigid (the scale only acts on positions).
  """
  xp = _xp(c2w_f44)
  r = xp.einsum("ij,fjk->fik", rot, c2w_f44[:, :3, :3])
  p = scale * xp.einsum("ij,fj->fi", rot, c2w_f44[:, :3, 3]) + trans
  top = xp.concatenate([r, p[:, :, None]], axis=-1)
  bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=c2w_f44.dtype), (c2w_f44.shape[0], 1, 4))
  return xp.concatenate([top, bottom], axis=1)
