"""Camera metrics as MonST3R's `vo_eval.eval_metrics` computes them with evo, in float64 numpy.

ATE = RMSE of position errors after a Sim(3) Umeyama alignment of the predicted positions onto the GT (evo APE,
translation part, align=True, correct_scale=True). RPE over consecutive pairs (delta = 1 frame) on the aligned poses:
E_i = (Q_i^-1 Q_{i+1})^-1 (P_i^-1 P_{i+1}); RPE-T = RMSE ||trans(E_i)||, RPE-R = RMSE angle(rot(E_i)) in degrees.
The pure formulas avoid evo (GPL, and its 1.37+ API broke MonST3R's call); the tests cross-check them against evo.
"""

import numpy as np
from scipy.spatial.transform import Rotation

from one4d_jax.geometry.sim3 import apply_sim3_to_c2w, umeyama


def tum_to_c2w(tum_n7):
  """`x y z qw qx qy qz` rows (MonST3R's `c2w_to_tumpose` layout) -> camera-to-world [N, 4, 4] float64."""
  tum = np.asarray(tum_n7, dtype=np.float64)
  if tum.ndim != 2 or tum.shape[1] != 7:
    raise ValueError(f"expected TUM poses [N, 7] (x y z qw qx qy qz), got shape {tum.shape}")
  c2w = np.tile(np.eye(4), (tum.shape[0], 1, 1))
  c2w[:, :3, :3] = Rotation.from_quat(tum[:, [4, 5, 6, 3]]).as_matrix()
  c2w[:, :3, 3] = tum[:, :3]
  return c2w


def c2w_to_tum(c2w_n44):
  """Camera-to-world [N, 4, 4] -> `x y z qw qx qy qz` rows."""
  c2w = np.asarray(c2w_n44, dtype=np.float64)
  q = Rotation.from_matrix(c2w[:, :3, :3]).as_quat()
  return np.concatenate([c2w[:, :3, 3], q[:, [3, 0, 1, 2]]], axis=1)


def _check_poses(name, c2w):
  if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
    raise ValueError(f"{name} must be camera-to-world poses [N, 4, 4], got shape {c2w.shape}")
  if not np.all(np.isfinite(c2w)):
    raise ValueError(f"{name} contains NaN or inf poses; drop or repair those frames before evaluating")


def align_trajectory(pred_c2w, gt_c2w):
  """Sim(3)-aligns predicted poses onto GT by their positions (evo `align(correct_scale=True)`); returns poses."""
  s, r, t = umeyama(pred_c2w[:, :3, 3], gt_c2w[:, :3, 3], with_scale=True)
  return apply_sim3_to_c2w(s, r, t, pred_c2w)


def camera_metrics(pred_c2w, gt_c2w):
  """{'ate', 'rpe_t', 'rpe_r'} for one sequence; ate / rpe_t in GT units (metres), rpe_r in degrees.

  Raises ValueError on mismatched lengths, non-finite poses, fewer than 3 frames, or GT positions whose
  covariance has rank < 2 (all at one point or on one line), where evo raises "Degenerate covariance rank" and
  MonST3R skips the sequence.
  """
  pred = np.asarray(pred_c2w, dtype=np.float64)
  gt = np.asarray(gt_c2w, dtype=np.float64)
  _check_poses("pred_c2w", pred)
  _check_poses("gt_c2w", gt)
  if pred.shape != gt.shape:
    raise ValueError(f"pred has {pred.shape[0]} poses and GT {gt.shape[0]}; they must be associated 1:1 first")
  if pred.shape[0] < 3:
    raise ValueError(f"camera metrics need at least 3 poses, got {pred.shape[0]}")
  centred = gt[:, :3, 3] - gt[:, :3, 3].mean(0)
  if np.linalg.matrix_rank(centred.T @ centred / len(gt)) < 2:
    raise ValueError("degenerate GT positions (covariance rank < 2): Sim(3) alignment is undefined")
  aligned = align_trajectory(pred, gt)
  ate = np.sqrt(np.mean(np.sum((aligned[:, :3, 3] - gt[:, :3, 3]) ** 2, axis=1)))
  rel_gt = np.linalg.inv(gt[:-1]) @ gt[1:]
  rel_pred = np.linalg.inv(aligned[:-1]) @ aligned[1:]
  err = np.linalg.inv(rel_gt) @ rel_pred
  rpe_t = np.sqrt(np.mean(np.sum(err[:, :3, 3] ** 2, axis=1)))
  angles = np.degrees(np.linalg.norm(Rotation.from_matrix(err[:, :3, :3]).as_rotvec(), axis=1))
  rpe_r = np.sqrt(np.mean(angles ** 2))
  return {"ate": float(ate), "rpe_t": float(rpe_t), "rpe_r": float(rpe_r)}


def relative_pose_loss(c2w_a, c2w_b, translation_weight=1.0):
  """MonST3R's temporal term per pair: ||R_rel - I||_F + w ||t_rel||, rel = c2w_a^-1 c2w_b (numpy, for reporting)."""
  rel = np.linalg.inv(c2w_a) @ c2w_b
  rot_err = np.linalg.norm(rel[..., :3, :3] - np.eye(3), axis=(-2, -1))
  return rot_err + translation_weight * np.linalg.norm(rel[..., :3, 3], axis=-1)


def mean_over_sequences(per_seq):
  """MonST3R's dataset number: the unweighted mean over sequences of each metric."""
  if not per_seq:
    raise ValueError("no sequence produced camera metrics")
  keys = per_seq[0].keys()
  return {k: float(np.mean([m[k] for m in per_seq])) for k in keys}
