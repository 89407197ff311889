"""Geometry: pointmaps <-> depth/K/poses, per-clip normalisation, resize/crop with consistent K, rotations."""

from one4d_jax.geometry.pointmaps import (center_crop_offsets, cover_size, crop_intrinsics, denormalize,
                                          depth_from_pointmaps, normalize_pointmaps, normalize_poses,
                                          pointmaps_from_depth, project, relative_poses, reprojection_depth_error,
                                          resize_crop_depth, resize_crop_frames, resize_crop_intrinsics,
                                          resize_intrinsics, transform_points, unproject)
from one4d_jax.geometry.rotations import (matrix_to_quat, ned_to_opencv_c2w, orthonormalize, pose_matrix,
                                          quat_to_matrix, rotation_angle_deg)
