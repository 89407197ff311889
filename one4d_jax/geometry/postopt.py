"""Post-optimisation: per-frame cameras (K, c2w) and depth from One4D's pointmaps in frame 0's camera.

One4D minimises a1 * L1(X(D, K, R, o) - X_hat) + a2 * sum_i (||R_i^T R_{i+1} - I||_F + ||o_{i+1} - o_i||), which is
MonST3R / Geo4D's global alignment for a single window (eval_protocol.md 3.3). We keep their parameterisation (log-depth
per pixel, camera-to-world unit quaternion + signed-log1p translation, focal stored as 20 ln f, principal point fixed
at (W/2, H/2), integer pixel coordinates) and their "L1" (the per-point Euclidean norm, optionally weighted).

Unlike MonST3R's MST + PnP-RANSAC init, the init here is closed form and jit-compiled, so few iterations are needed:
focal by least squares on frame 0 (its pointmap is in its own camera), then per frame a linear DLT for [R | t] with
known K (the pixel ray must be parallel to R X + t), projected onto SO(3); focal re-fitted on all frames, DLT again;
depth = z of each frame's points in its own camera. Invalid points (NaN, inf, masked, z <= 0) get zero weight and are
replaced before any arithmetic, so they cannot produce NaN. A frame with fewer than `min_points` valid points takes
the pose of its nearest valid frame and is then held only by the smoothness term (documented handling).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class PostOptConfig:
  """Objective and optimiser. Defaults: MonST3R's (smoothness 0.01, Adam(0.9, 0.9), lr 0.01 -> 1e-3 linear)."""
  iters: int = 300
  optimizer: str = "adam"  # "adam" (MonST3R schedule) or "lbfgs" (optax.lbfgs with zoom line search)
  lr: float = 0.01
  lr_min: float = 1e-3
  data_weight: float = 1.0  # a1
  smooth_weight: float = 0.01  # a2
  translation_weight: float = 1.0
  shared_focal: bool = True
  focal_break: float = 20.0
  min_points: int = 12  # fewer valid points than this: the frame's init pose is borrowed from its nearest valid frame


class PostOptResult(NamedTuple):
  depth: jax.Array  # [F, H, W] metres (the pointmaps' units), along each camera's optical axis
  K: jax.Array  # [F, 3, 3]
  c2w: jax.Array  # [F, 4, 4] camera-to-world, world = frame 0's camera as the pointmaps define it
  losses: jax.Array  # [iters] objective before each step
  init_c2w: jax.Array  # [F, 4, 4] the closed-form initialisation
  init_focal: jax.Array  # [F]


def signed_log1p(x):
  return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def signed_expm1(x):
  return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def quat_to_matrix(q_f4):
  """wxyz quaternions (any norm) [F, 4] -> rotations [F, 3, 3]."""
  q = q_f4 / jnp.sqrt(jnp.sum(q_f4 ** 2, -1, keepdims=True) + _EPS)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  return jnp.stack([
    jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
    jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
    jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def matrix_to_quat(r_f33):
  """Rotations [F, 3, 3] -> wxyz unit quaternions [F, 4] (Shepperd: the best-conditioned of four formulas)."""
  m = r_f33
  tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
  cands = jnp.stack([
    jnp.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
    jnp.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0],
               m[..., 0, 2] + m[..., 2, 0]], -1),
    jnp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr,
               m[..., 1, 2] + m[..., 2, 1]], -1),
    jnp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
               1 + 2 * m[..., 2, 2] - tr], -1)], -2)  # [F, 4 cases, 4]
  best = jnp.argmax(jnp.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1), -1)
  q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
  q = q / jnp.sqrt(jnp.sum(q ** 2, -1, keepdims=True))
  return q * jnp.where(q[..., :1] < 0, -1.0, 1.0)


def _pixel_offsets(h, w, pp):
  """(u - cx, v - cy) [H, W] each, integer pixel coordinates as MonST3R's xy_grid."""
  v, u = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  return u - pp[0], v - pp[1]


def _ls_focal(pts_fhw3, w_fhw, du, dv, per_frame):
  """Least-squares f with (u - cx, v - cy) ~= f (x / z, y / z) on points in their own camera."""
  z = pts_fhw3[..., 2]
  ok = (w_fhw > 0) & (z > 1e-6)
  zs = jnp.where(ok, z, 1.0)
  a, b = pts_fhw3[..., 0] / zs, pts_fhw3[..., 1] / zs
  w = jnp.where(ok, w_fhw, 0.0)
  axes = (1, 2) if per_frame else (0, 1, 2)
  num = jnp.sum(w * (du * a + dv * b), axis=axes)
  den = jnp.sum(w * (a * a + b * b), axis=axes)
  return num / jnp.maximum(den, _EPS)


def _dlt_poses(xyz_fhw3, w_fhw, du, dv, focal_f):
  """World-to-camera [R | t] per frame from world points and known intrinsics (normalised linear DLT + SO(3) proj)."""
  wsum = jnp.maximum(w_fhw.sum((1, 2)), _EPS)
  centre = jnp.einsum("fhw,fhwi->fi", w_fhw, xyz_fhw3) / wsum[:, None]
  spread = jnp.sqrt(jnp.einsum("fhw,fhw->f", w_fhw, jnp.sum((xyz_fhw3 - centre[:, None, None]) ** 2, -1)) / wsum)
  spread = jnp.maximum(spread, 1e-8)
  xn = (xyz_fhw3 - centre[:, None, None]) / spread[:, None, None, None]
  xh = jnp.concatenate([xn, jnp.ones_like(xn[..., :1])], -1).reshape(xn.shape[0], -1, 4)
  mx = (du[None] / focal_f[:, None, None]).reshape(xn.shape[0], -1)
  my = (dv[None] / focal_f[:, None, None]).reshape(xn.shape[0], -1)
  w = w_fhw.reshape(xn.shape[0], -1)
  coefs = jnp.stack([w, w * mx, w * my, w * (mx * mx + my * my)], 1)  # [F, 4, N]
  s = jnp.einsum("fkn,fni,fnj->fkij", coefs, xh, xh)
  s1, sx, sy, sr = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
  z = jnp.zeros_like(s1)
  m = jnp.concatenate([jnp.concatenate([s1, z, -sx], -1), jnp.concatenate([z, s1, -sy], -1),
                       jnp.concatenate([-sx, -sy, sr], -1)], -2)  # [F, 12, 12]
  _, vecs = jnp.linalg.eigh(m)
  p_norm = vecs[..., 0].reshape(-1, 3, 4)
  t_norm = jnp.concatenate([jnp.eye(3)[None] / spread[:, None, None], -centre[:, :, None] / spread[:, None, None]], -1)
  t_norm = jnp.concatenate([t_norm, jnp.broadcast_to(jnp.array([[[0.0, 0.0, 0.0, 1.0]]]), (xn.shape[0], 1, 4))], 1)
  p = p_norm @ t_norm
  p = p * jnp.sign(jnp.linalg.det(p[:, :, :3]))[:, None, None]
  u, sv, vt = jnp.linalg.svd(p[:, :, :3])
  fix = jnp.stack([jnp.ones_like(sv[:, 0]), jnp.ones_like(sv[:, 0]), jnp.linalg.det(u @ vt)], -1)
  rot = (u * fix[:, None, :]) @ vt
  trans = p[:, :, 3] / jnp.mean(sv, -1, keepdims=True)
  return rot, trans


def _nearest_valid(ok_f):
  idx = jnp.arange(ok_f.shape[0])
  dist = jnp.abs(idx[:, None] - idx[None, :]) + jnp.where(ok_f[None, :], 0, 10 ** 6)
  return jnp.argmin(dist, axis=1)


def clean_inputs(xyz, valid, conf):
  """(xyz with invalid points zeroed, weights [F, H, W]): NaN / inf / masked / non-positive-confidence -> weight 0."""
  ok = valid & jnp.all(jnp.isfinite(xyz), -1)
  w = jnp.where(ok, 1.0 if conf is None else jnp.where(jnp.isfinite(conf), conf, 0.0), 0.0)
  w = jnp.maximum(w, 0.0)
  return jnp.where((w > 0)[..., None], xyz, 0.0), w


def closed_form_init(xyz, w, pp, cfg):
  """Initial parameters (log_depth, quat, tlog, focal_param) from cleaned pointmaps and weights."""
  f, h, wd = w.shape
  du, dv = _pixel_offsets(h, wd, pp)
  ok_f = (w > 0).sum((1, 2)) >= cfg.min_points
  # pointmaps that no pinhole camera explains (points behind the camera, a generated clip far from geometry) give a
  # least-squares focal <= 0 or NaN: start from a 53-degree field of view instead, so the cameras stay finite
  prior = float(max(h, wd))
  plausible = lambda focal: jnp.where(jnp.isfinite(focal) & (focal > 1e-3 * prior), focal, prior)
  f0 = plausible(_ls_focal(xyz[:1], w[:1], du, dv, per_frame=False))
  focal = jnp.full((f,), f0)
  for _ in range(2):
    rot, trans = _dlt_poses(xyz, w, du, dv, focal)
    src = _nearest_valid(ok_f)
    rot, trans = rot[src], trans[src]
    cam = jnp.einsum("fij,fhwj->fhwi", rot, xyz) + trans[:, None, None]
    focal_pf = _ls_focal(cam, w, du, dv, per_frame=True)
    focal_pf = jnp.where(ok_f, plausible(focal_pf), f0)
    wf = ok_f * w.sum((1, 2))
    shared = jnp.sum(wf * focal_pf) / jnp.maximum(wf.sum(), _EPS)
    focal = jnp.full((f,), shared) if cfg.shared_focal else focal_pf
  z = cam[..., 2]
  zok = (w > 0) & (z > 1e-6)
  logz = jnp.log(jnp.where(zok, z, 1.0))
  fill = jnp.sum(jnp.where(zok, logz, 0.0), (1, 2)) / jnp.maximum(zok.sum((1, 2)), 1)
  fill = jnp.where(zok.sum((1, 2)) > 0, fill, jnp.sum(jnp.where(zok, logz, 0.0)) / jnp.maximum(zok.sum(), 1))
  log_depth = jnp.where(zok, logz, fill[:, None, None])
  c2w_rot = jnp.swapaxes(rot, -1, -2)
  centre = -jnp.einsum("fij,fj->fi", c2w_rot, trans)
  focal_param = cfg.focal_break * jnp.log(focal[:1] if cfg.shared_focal else focal)
  return {"log_depth": log_depth, "quat": matrix_to_quat(c2w_rot), "tlog": signed_log1p(centre),
          "focal": focal_param}


def _cameras(params, cfg, n_frames):
  rot = quat_to_matrix(params["quat"])
  centre = signed_expm1(params["tlog"])
  focal = jnp.broadcast_to(jnp.exp(params["focal"] / cfg.focal_break), (n_frames,))
  return rot, centre, focal


def objective(params, xyz, w, pp, cfg):
  """a1 * sum_i mean_px w ||X_i(D, K, R, o) - X_hat_i||_2 + a2 * sum_i (||R_i^T R_i+1 - I||_F + tw ||o_i+1 - o_i||).

  The data term sums per-frame (weighted) means, so its weight against the smoothness grows with the clip like
  MonST3R's sum over pair edges; a plain mean over all pixels lets the 0.01 smoothness bias real camera motion.
  xyz: [F, H, W, 3].
  """
  return _objective_planar(params, jnp.moveaxis(xyz, -1, 0), w, pp, cfg)


def _objective_planar(params, xyz_3fhw, w, pp, cfg):
  """`objective` on coordinate planes [3, F, H, W]: X = D (R (du / f, dv / f, 1)) + o written per coordinate, so XLA
  fuses the whole data term into one elementwise loop instead of a [F, H, W, 3] batched matmul."""
  f, h, wd = w.shape
  rot, centre, focal = _cameras(params, cfg, f)
  du, dv = _pixel_offsets(h, wd, pp)
  d = jnp.exp(params["log_depth"])
  a, b = du[None] / focal[:, None, None], dv[None] / focal[:, None, None]
  sq = 0.0
  for i in range(3):
    r = rot[:, i]
    ray = r[:, 0, None, None] * a + r[:, 1, None, None] * b + r[:, 2, None, None]
    sq = sq + (d * ray + centre[:, i, None, None] - xyz_3fhw[i]) ** 2
  dist = jnp.sqrt(sq + _EPS)
  data = jnp.sum(jnp.sum(w * dist, (1, 2)) / jnp.maximum(w.sum((1, 2)), _EPS))
  rel = jnp.einsum("fji,fjk->fik", rot[:-1], rot[1:]) - jnp.eye(3)
  smooth = jnp.sum(jnp.sqrt(jnp.sum(rel ** 2, (-2, -1)) + _EPS))
  smooth += cfg.translation_weight * jnp.sum(jnp.sqrt(jnp.sum((centre[1:] - centre[:-1]) ** 2, -1) + _EPS))
  return cfg.data_weight * data + cfg.smooth_weight * smooth


def _optimizer(cfg):
  if cfg.optimizer == "adam":
    return optax.adam(optax.linear_schedule(cfg.lr, cfg.lr_min, max(cfg.iters, 1)), b1=0.9, b2=0.9)
  if cfg.optimizer == "lbfgs":
    return optax.lbfgs()
  raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'lbfgs'")


# Iterations per compiled call. Python handles Ctrl-C only between calls, so this bounds how long an interrupt waits
# (300 iterations at 81x352x624 took ~130 s as one call); the optimiser state carries over, so chunking changes nothing.
CHUNK = 10


@functools.partial(jax.jit, static_argnames=("cfg", "steps"))
def optimize_steps(params, state, xyz, w, pp, cfg, steps):
  """`steps` optimiser steps from (params, optimiser state) on cleaned pointmaps (xyz with invalid points zeroed,
  weights w); returns (params, state, the objective before each step [steps]). One jit-compiled lax.scan."""
  opt = _optimizer(cfg)
  loss_fn = functools.partial(_objective_planar, xyz_3fhw=jnp.moveaxis(xyz, -1, 0), w=w, pp=pp, cfg=cfg)
  lbfgs = cfg.optimizer == "lbfgs"
  value_and_grad = optax.value_and_grad_from_state(loss_fn) if lbfgs else jax.value_and_grad(loss_fn)

  def step(carry, _):
    p, state = carry
    if lbfgs:
      loss, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=loss, grad=grad, value_fn=loss_fn)
    else:
      loss, grad = value_and_grad(p)
      updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state), loss

  (params, state), losses = jax.lax.scan(step, (params, state), None, length=steps)
  return params, state, losses


def init_state(params, cfg):
  return _optimizer(cfg).init(params)


def optimize(params, xyz, w, pp, cfg, progress: bool = False):
  """cfg.iters optimiser steps from `params`, in compiled chunks of CHUNK (interruptible between them); returns
  (params, losses [iters], the objective before each step)."""
  state, losses = init_state(params, cfg), []
  bar = tqdm(total=cfg.iters, desc="post-optimisation", disable=not progress, leave=False)
  with bar:
    for done in range(0, cfg.iters, CHUNK):
      params, state, chunk = optimize_steps(params, state, xyz, w, pp, cfg=cfg, steps=min(CHUNK, cfg.iters - done))
      losses.append(chunk)
      bar.set_postfix(objective=f"{float(chunk[-1]):.4f}")
      bar.update(len(chunk))
  return params, jnp.concatenate(losses) if losses else jnp.zeros((0,), jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prepare(xyz, valid, conf, pp, cfg):
  xyz, w = clean_inputs(xyz, valid, conf)
  return xyz, w, closed_form_init(xyz, w, pp, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "f"))
def _outputs(params, init, pp, cfg, f):
  rot, centre, focal = _cameras(params, cfg, f)
  irot, icentre, ifocal = _cameras(init, cfg, f)
  return params, rot, centre, focal, irot, icentre, ifocal


def _intrinsics(focal, pp):
  k = jnp.zeros((focal.shape[0], 3, 3))
  k = k.at[:, 0, 0].set(focal).at[:, 1, 1].set(focal)
  return k.at[:, 0, 2].set(pp[0]).at[:, 1, 2].set(pp[1]).at[:, 2, 2].set(1.0)


def _c2w(rot, centre):
  top = jnp.concatenate([rot, centre[:, :, None]], -1)
  return jnp.concatenate([top, jnp.broadcast_to(jnp.array([[[0.0, 0.0, 0.0, 1.0]]]), (rot.shape[0], 1, 4))], 1)


def post_optimize(xyz, valid=None, conf=None, cfg=PostOptConfig(), pp=None, progress: bool = False):
  """Cameras and depth from pointmaps xyz [F, H, W, 3] in frame 0's camera.

  valid: optional bool [F, H, W] (non-finite points are always invalid); conf: optional non-negative weights
  [F, H, W]; pp: principal point (cx, cy), default (W / 2, H / 2). Raises ValueError on wrong shapes or when no frame
  has `cfg.min_points` valid points; frames below that count borrow their nearest valid frame's initial pose.
  `progress`: a progress bar over the iterations. Ctrl-C stops it within CHUNK iterations.
  """
  xyz = jnp.asarray(xyz, jnp.float32)
  if xyz.ndim != 4 or xyz.shape[-1] != 3:
    raise ValueError(f"pointmaps must be [F, H, W, 3], got shape {xyz.shape}")
  f, h, w = xyz.shape[:3]
  valid = jnp.ones((f, h, w), bool) if valid is None else jnp.asarray(valid, bool)
  if valid.shape != (f, h, w):
    raise ValueError(f"valid mask must be {(f, h, w)} to match the pointmaps, got {valid.shape}")
  if conf is not None:
    conf = jnp.asarray(conf, jnp.float32)
    if conf.shape != (f, h, w):
      raise ValueError(f"confidence must be {(f, h, w)} to match the pointmaps, got {conf.shape}")
  counts = np.asarray(jnp.sum(valid & jnp.all(jnp.isfinite(xyz), -1) & (True if conf is None else conf > 0), (1, 2)))
  if not np.any(counts >= cfg.min_points):
    raise ValueError(f"no frame has {cfg.min_points} valid finite points (counts per frame: {counts.tolist()}); "
                     "nothing to recover cameras from")
  pp = jnp.asarray((w / 2.0, h / 2.0) if pp is None else pp, jnp.float32)
  xyz, w, init = _prepare(xyz, valid, conf, pp, cfg)
  params, losses = optimize(init, xyz, w, pp, cfg, progress)
  params, rot, centre, focal, irot, icentre, ifocal = _outputs(params, init, pp, cfg, f)
  return PostOptResult(depth=jnp.exp(params["log_depth"]), K=_intrinsics(focal, pp), c2w=_c2w(rot, centre),
                       losses=losses, init_c2w=_c2w(irot, icentre), init_focal=ifocal)
