"""Video-depth metrics with the exact alignments of MonST3R / Geo4D (`depth_evaluation`) and DepthCrafter.

Why exact copies: the published numbers depend on quirks, not on the ideal estimator. MonST3R's "scale & shift"
(`align_with_lad2`) is 1000 Adam steps at lr 1e-4 on the *sum* of absolute errors from the lower-median ratio, which
stops far from the L1 optimum; Geo4D runs the same loop at lr 1e-2 for 5000 steps. torch.median takes the lower middle
element. Abs Rel is computed before the 1e-5 clamp, delta after it. See shared/reference/eval_protocol.md, section 1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

ALIGNMENTS = ("median", "lad2", "lstsq", "scale", "none")
METRIC_KEYS = ("Abs Rel", "Sq Rel", "RMSE", "Log RMSE", "δ < 1.25", "δ < 1.25^2", "δ < 1.25^3")

# Named settings of the reference scripts (section 1 of eval_protocol.md).
PROTOCOLS = {
  "monst3r_sintel": dict(align="lad2", max_depth=70.0, post_clip_max=70.0, lr=1e-4, max_iters=1000),
  "monst3r_bonn": dict(align="lad2", max_depth=70.0, post_clip_max=None, lr=1e-4, max_iters=1000),
  "monst3r_median": dict(align="median", max_depth=70.0, post_clip_max=None),
  "geo4d": dict(align="lad2", max_depth=70.0, post_clip_max=70.0, lr=1e-2, max_iters=5000),
  "lstsq": dict(align="lstsq", max_depth=70.0, post_clip_max=None),
}


def lower_median(x):
  """torch.median semantics: the lower of the two middle elements for an even count."""
  x = np.sort(np.asarray(x).ravel())
  return x[(x.size - 1) // 2]


def torch_order_sum(x, lanes=8):
  """float32 sum of a 1-D array in the order of torch's single-threaded CPU kernel (ATen SumKernel.cpp).

  Why: the scale-only IRLS weights pixels by 1/(|r| + 1e-8), so a near-zero residual carries weight ~1e8 and the
  rounding of the sums decides s; numpy's pairwise order lands up to 7e-4 from the reference. The kernel splits the
  row into `lanes`-wide vectors, sums them as 4 interleaved rows with a 4-level cascade of 2^p-row chunks, then folds
  the leftovers, the 4 rows, the scalar tail and the lanes. torch 2.13 accumulates 8 lanes under every
  ATEN_CPU_CAPABILITY (default, avx2, avx512; tests/test_eval.py checks bit equality up to 1e6 elements). With more
  than one thread torch splits arrays above 32768 elements into per-thread sums, which this does not model.
  """
  x = np.asarray(x, np.float32).ravel()
  n_vec = x.size // lanes
  vecs = x[:n_vec * lanes].reshape(n_vec, lanes)
  n_rows = n_vec // 4
  rows = vecs[:n_rows * 4].reshape(n_rows, 4, lanes)
  power = max(4, (n_rows - 1).bit_length() // 4) if n_rows > 2 else 4
  step, levels = 1 << power, 4
  acc = np.zeros((levels, 4, lanes), np.float32)
  i = 0
  chunk_sums = np.add.reduce(rows[:n_rows - n_rows % step].reshape(-1, step, 4, lanes), axis=1)  # sequential
  for chunk in chunk_sums:
    acc[0] = chunk
    i += step
    for j in range(1, levels):
      acc[j] += acc[j - 1]
      acc[j - 1] = 0
      if i & ((step - 1) << (j * power)):
        break
  acc[0] = np.add.reduce(rows[i:], axis=0)
  for j in range(1, levels):
    acc[0] += acc[j]
  partial = acc[0]
  for v in vecs[n_rows * 4:]:
    partial[0] += v
  for k in range(1, 4):
    partial[0] += partial[k]
  total = np.float32(0)
  for v in x[n_vec * lanes:]:
    total += v
  for v in partial[0]:
    total += v
  return np.float32(total)


@functools.partial(jax.jit, static_argnames=("max_iters",))
def _lad_adam(pred, gt, s_init, lr, max_iters, tol=1e-6):
  b1, b2, eps = 0.9, 0.999, 1e-8

  def loss_fn(p):
    return jnp.sum(jnp.abs(p[0] * pred + p[1] - gt))

  def cond(state):
    i, _, _, _, _, done = state
    return (i < max_iters) & ~done

  def body(state):
    i, p, m, v, prev, _ = state
    loss, g = jax.value_and_grad(loss_fn)(p)
    step = (i + 1).astype(jnp.float32)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = jnp.sqrt(v) / jnp.sqrt(1 - b2 ** step) + eps
    p = p - (lr / (1 - b1 ** step)) * m / denom
    done = (i > 0) & (jnp.abs(prev - loss) < tol)
    return i + 1, p, m, v, loss, done

  p0 = jnp.stack([s_init, jnp.zeros((), jnp.float32)])
  z = jnp.zeros(2, jnp.float32)
  _, p, _, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), p0, z, z, jnp.float32(0), jnp.bool_(False)))
  return p


def fit_alignment(pred, gt, align="median", lr=1e-4, max_iters=1000):
  """(s, t) with gt ~= s * pred + t on the given valid pixels (1-D float32 arrays), by the named reference method."""
  pred = np.asarray(pred, np.float32)
  gt = np.asarray(gt, np.float32)
  if align == "none":
    return 1.0, 0.0
  if pred.size == 0:
    return 1.0, 0.0
  if align == "median":
    return float(np.float32(lower_median(gt) / lower_median(pred))), 0.0
  if align == "lad2":
    s0 = np.float32(lower_median(gt) / lower_median(pred))
    p = _lad_adam(jnp.asarray(pred), jnp.asarray(gt), jnp.float32(s0), jnp.float32(lr), max_iters=int(max_iters))
    return float(p[0]), float(p[1])
  if align == "lstsq":
    a = np.stack([pred, np.ones_like(pred)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, gt, rcond=None)
    return float(s), float(t)
  if align == "scale":
    # MonST3R `align_with_scale`, in torch's float32 order (see `torch_order_sum`).
    s = (torch_order_sum(gt) / np.float32(gt.size)) / (torch_order_sum(pred) / np.float32(pred.size))
    for _ in range(10):
      w = np.float32(1.0) / (np.abs(s * pred - gt) + np.float32(1e-8))
      s = torch_order_sum(w * pred * gt) / torch_order_sum(w * (pred * pred))
    return float(max(s, np.float32(1e-3))), 0.0
  raise ValueError(f"unknown alignment {align!r}; expected one of {ALIGNMENTS}")


def _metrics(p, g):
  p = p.astype(np.float32)
  g = g.astype(np.float32)
  out = {"Abs Rel": float(np.mean(np.abs(p - g) / g)), "Sq Rel": float(np.mean((p - g) ** 2 / g)),
         "RMSE": float(np.sqrt(np.mean((p - g) ** 2)))}
  p = np.maximum(p, np.float32(1e-5))
  out["Log RMSE"] = float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)))
  ratio = np.maximum(p / g, g / p)
  for k, name in ((1, "δ < 1.25"), (2, "δ < 1.25^2"), (3, "δ < 1.25^3")):
    out[name] = float(np.mean(ratio < 1.25 ** k))
  return out


def depth_evaluation(pred, gt, align="median", max_depth=None, post_clip_min=None, post_clip_max=None, lr=1e-4,
                     max_iters=1000, align_mask=None, custom_mask=None):
  """Metrics of one sequence, with one (s, t) fitted over all its frames (MonST3R / Geo4D `depth_evaluation`).

  pred, gt: same shape (e.g. [T, H, W]), GT <= 0 invalid; pred already at GT resolution. align_mask (Geo4D) restricts
  the fit only; custom_mask restricts the metrics only. Non-finite predictions on valid GT pixels raise (they would
  silently poison every metric). Returns the metric dict (+ 'valid_pixels', 's', 't') and the aligned prediction map.
  """
  pred = np.asarray(pred, np.float32)
  gt = np.asarray(gt, np.float32)
  if pred.shape != gt.shape:
    raise ValueError(f"prediction {pred.shape} and GT {gt.shape} differ; resize the prediction to GT resolution first")
  valid = (gt > 0) & (gt < max_depth) if max_depth is not None else gt > 0
  if not np.all(np.isfinite(pred[valid])):
    raise ValueError(f"{int((~np.isfinite(pred[valid])).sum())} predicted depths on valid GT pixels are NaN/inf")
  fit = valid if align_mask is None else valid & np.asarray(align_mask, bool).reshape(gt.shape)
  s, t = fit_alignment(pred[fit], gt[fit], align, lr, max_iters)
  aligned = (np.float32(s) * pred + np.float32(t)).astype(np.float32)
  if post_clip_min is not None or post_clip_max is not None:
    aligned = np.clip(aligned, post_clip_min, post_clip_max)
  keep = valid if custom_mask is None else valid & np.asarray(custom_mask, bool).reshape(gt.shape)
  n = int(keep.sum())
  out = _metrics(aligned[keep], gt[keep]) if n > 0 else {k: 0.0 for k in METRIC_KEYS}
  out.update(valid_pixels=n, s=s, t=t)
  return out, aligned


def pixel_weighted_average(per_seq, keys=METRIC_KEYS):
  """Dataset number of MonST3R / Geo4D: average of per-sequence metrics (`keys` of each dict) weighted by their
  valid-pixel counts."""
  w = np.array([m["valid_pixels"] for m in per_seq], np.float64)
  if w.sum() <= 0:
    raise ValueError("no valid GT pixel in any sequence")
  return {k: float(np.sum(w * np.array([m[k] for m in per_seq])) / w.sum()) for k in keys}


def depthcrafter_evaluation(pred_disparity, gt_depth, max_depth, return_aligned=False):
  """DepthCrafter `eval_single(domain='depth')`: LS scale+shift in disparity space, per-frame metrics, frame mean.

  Returns {'abs_relative_difference', 'rmse_linear', 'delta1_acc'} for one sequence (and, if `return_aligned`, the
  aligned depth video); the dataset number is the unweighted mean over sequences. Frames without valid pixels are
  dropped.
  """
  pred = np.asarray(pred_disparity, np.float64)
  gt = np.asarray(gt_depth, np.float64)
  if pred.shape != gt.shape or gt.ndim != 3:
    raise ValueError(f"expected disparity and depth videos [T, H, W] of one shape, got {pred.shape} and {gt.shape}")
  valid = (gt > 1e-3) & (gt < max_depth)
  pred = np.clip(pred, 1e-3, None)
  a = np.stack([pred[valid], np.ones(valid.sum())], axis=1)
  (s, t), *_ = np.linalg.lstsq(a, 1.0 / gt[valid], rcond=None)
  depth = np.clip(1.0 / np.clip(s * pred + t, 1e-3, None), 1e-3, max_depth)
  rows = []
  for d, g, v in zip(depth, gt, valid):
    if v.sum() == 0:
      continue
    p, q = d[v], g[v]
    rows.append((np.mean(np.abs(p - q) / q), np.sqrt(np.mean((p - q) ** 2)), np.mean(np.maximum(p / q, q / p) < 1.25)))
  if not rows:
    raise ValueError("no frame has a valid GT pixel")
  r = np.mean(np.array(rows), axis=0)
  out = {"abs_relative_difference": float(r[0]), "rmse_linear": float(r[1]), "delta1_acc": float(r[2])}
  return (out, depth.astype(np.float32)) if return_aligned else out
