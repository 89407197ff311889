"""Rotation helpers the readers and evaluation share: quaternions (Hamilton, scalar last as in TUM/TartanAir files),
SVD orthonormalisation of slightly drifted rotation blocks, and the NED -> OpenCV camera axis change."""

import numpy as np

# Rows map NED camera axes (x forward, y right, z down; TartanAir) to OpenCV ones (x right, y down, z forward).
NED_TO_OPENCV = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
  """Unit (or not: it is normalised) quaternions [..., 4] as (qx, qy, qz, qw) -> rotation matrices [..., 3, 3]."""
  q = np.asarray(q_xyzw, np.float64)
  norm = np.linalg.norm(q, axis=-1, keepdims=True)
  if not np.all(np.isfinite(q)) or np.any(norm < 1e-8):
    raise ValueError("quaternions must be finite and non-zero")
  x, y, z, w = np.moveaxis(q / norm, -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
      np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
      np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
  """Rotation matrices [..., 3, 3] -> quaternions [..., 4] (qx, qy, qz, qw) with qw >= 0."""
  R = np.asarray(R, np.float64)
  m = R.reshape(-1, 3, 3)
  out = np.empty((m.shape[0], 4))
  for n, r in enumerate(m):  # Shepperd's method: pick the largest diagonal term for stability
    t = np.trace(r)
    if t > 0:
      s = 2 * np.sqrt(1 + t)
      q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4]
    else:
      i = int(np.argmax(np.diag(r)))
      j, k = (i + 1) % 3, (i + 2) % 3
      s = 2 * np.sqrt(1 + r[i, i] - r[j, j] - r[k, k])
      q = [0.0] * 4
      q[i], q[j], q[k], q[3] = s / 4, (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s, (r[k, j] - r[j, k]) / s
    out[n] = q if q[3] >= 0 else -np.asarray(q)
  return out.reshape(R.shape[:-2] + (4,))


def orthonormalize(R: np.ndarray) -> np.ndarray:
  """The nearest rotation (SVD, det +1) to each [..., 3, 3] block, e.g. KinectFusion poses with det 0.9995."""
  u, _, vt = np.linalg.svd(np.asarray(R, np.float64))
  d = np.sign(np.linalg.det(u @ vt))
  u[..., :, 2] *= d[..., None]
  return u @ vt


def pose_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Rotations [..., 3, 3] and translations [..., 3] -> 4x4 transforms [..., 4, 4]."""
  R = np.asarray(R, np.float64)
  out = np.zeros(R.shape[:-2] + (4, 4))
  out[..., :3, :3] = R
  out[..., :3, 3] = t
  out[..., 3, 3] = 1.0
  return out


def ned_to_opencv_c2w(c2w_ned: np.ndarray) -> np.ndarray:
  """Camera-to-world poses whose camera axes are NED -> the same cameras with OpenCV axes (world frame unchanged)."""
  change = pose_matrix(NED_TO_OPENCV.T, np.zeros(3))  # OpenCV camera coordinates -> NED camera coordinates
  return np.asarray(c2w_ned, np.float64) @ change


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
  """Angle of rotation matrices [..., 3, 3] in degrees."""
  cos = (np.trace(np.asarray(R, np.float64), axis1=-2, axis2=-1) - 1) / 2
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
