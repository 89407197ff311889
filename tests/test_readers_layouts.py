"""Every public layout the README's format table promises, written here in miniature (tiny PNGs, text files in each
source's own spelling) and read back: the tsdf-fusion demo folders (both versions), 3DMatch's RGB-D scenes, 7-Scenes'
seq-NN folders, TUM RGB-D per Kinect, Bonn, and MPI Sintel with or without its `training` parent. A folder matching
no variant is an error naming every candidate the reader looked for."""

import os

import numpy as np
import pytest
from PIL import Image

from one4d_jax import geometry as g
from one4d_jax.data import open_clip
from one4d_jax.data.clips import write_sintel_cam, write_sintel_dpt
from one4d_jax.data.readers import (
  BONN_K,
  SEVENSCENES_K,
  TUM_CAMERAS,
  TUM_FR3_K,
  open_clips,
)

H, W = 4, 6


def _poses(n, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n, 4))
  return g.pose_matrix(g.quat_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True)), rng.normal(size=(n, 3)))


def _depth_mm(n, seed=0):
  mm = np.random.default_rng(seed).integers(500, 4000, (n, H, W)).astype(np.uint16)
  mm[:, 0, 0], mm[:, 0, 1] = 0, 65535  # 0 is missing everywhere; 65535 is 7-Scenes' invalid marker
  return mm


def _write_frames(folder, numbers, color_ext, seed=0):
  """frame-NNNNNN.{color.<ext>, depth.png, pose.txt} as 7-Scenes / 3DMatch / tsdf-fusion write them."""
  os.makedirs(folder, exist_ok=True)
  c2w, mm = _poses(len(numbers), seed), _depth_mm(len(numbers), seed)
  for k, i in enumerate(numbers):
    Image.fromarray(np.full((H, W, 3), 10 * k, np.uint8)).save(os.path.join(folder, f"frame-{i:06d}.color.{color_ext}"))
    Image.fromarray(mm[k]).save(os.path.join(folder, f"frame-{i:06d}.depth.png"))
    np.savetxt(os.path.join(folder, f"frame-{i:06d}.pose.txt"), c2w[k], fmt="%.9e", delimiter="\t")
  return c2w, mm


def _K(f, cx, cy):
  return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def _check(clip, c2w, mm, K, n):
  rec = clip.load()
  assert rec.depth.shape == (n, H, W)
  np.testing.assert_allclose(rec.c2w, c2w, atol=1e-7)
  np.testing.assert_allclose(rec.K, np.broadcast_to(K, (n, 3, 3)))
  assert not rec.valid[:, 0, :2].any() and rec.valid[:, 1:].all()
  np.testing.assert_allclose(rec.depth[:, 1:], mm[:, 1:] / 1000.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------ sevenscenes
def test_tsdf_fusion_python_data_folder(tmp_path):
  """andyzeng/tsdf-fusion-python data/: frame-N.color.jpg, camera-intrinsics.txt beside the frames."""
  c2w, mm = _write_frames(tmp_path, range(3), "jpg")
  np.savetxt(tmp_path / "camera-intrinsics.txt", _K(585, 320, 240), fmt="%.18e")
  _check(open_clip("sevenscenes", str(tmp_path)), c2w, mm, _K(585, 320, 240), 3)


def test_tsdf_fusion_rgbd_frames_with_intrinsics_one_folder_up(tmp_path):
  """andyzeng/tsdf-fusion data/rgbd-frames/frame-000150... with data/camera-intrinsics.txt (also 3dmatch-toolbox
  data/sample/depth-fusion-demo)."""
  c2w, mm = _write_frames(tmp_path / "rgbd-frames", range(150, 153), "png")
  np.savetxt(tmp_path / "camera-intrinsics.txt", _K(585, 320, 240), delimiter="\t")
  clip = open_clip("sevenscenes", str(tmp_path / "rgbd-frames"))
  assert clip.name == "rgbd-frames"
  _check(clip, c2w, mm, _K(585, 320, 240), 3)


def test_tsdf_fusion_old_version_intrinsics_k_txt(tmp_path):
  """andyzeng/tsdf-fusion old-version/data/sample: intrinsics.K.txt, every other frame number (15, 17, ...)."""
  c2w, mm = _write_frames(tmp_path, (15, 17, 19), "png")
  K = _K(615.1951904296875, 298.44268798828125, 247.51919555664062)
  np.savetxt(tmp_path / "intrinsics.K.txt", K)
  _check(open_clip("sevenscenes", str(tmp_path)), c2w, mm, K, 3)


def test_the_frames_own_intrinsics_file_wins_over_the_parents(tmp_path):
  _write_frames(tmp_path / "frames", range(2), "png")
  np.savetxt(tmp_path / "camera-intrinsics.txt", _K(500, 1, 2))
  np.savetxt(tmp_path / "frames" / "camera-intrinsics.txt", _K(600, 3, 4))
  assert open_clip("sevenscenes", str(tmp_path / "frames")).K[0, 0, 0] == 600


def test_3dmatch_scene_with_seq_folders_and_root_intrinsics(tmp_path):
  """3dmatch-toolbox README 'Additional Setup': <scene>/seq-01, seq-02, camera-intrinsics.txt at the scene root."""
  scene = tmp_path / "sun3d-hotel_umd-maryland_hotel3"
  first = _write_frames(scene / "seq-01", range(3), "png", seed=1)
  second = _write_frames(scene / "seq-02", range(2), "png", seed=2)
  K = _K(570.342, 320, 240)
  np.savetxt(scene / "camera-intrinsics.txt", K)
  clips = open_clips("sevenscenes", str(scene))
  assert [name for name, _ in clips] == [f"{scene.name}_seq-01", f"{scene.name}_seq-02"]
  _check(clips[0][1], *first, K, 3)
  _check(clips[1][1], *second, K, 2)
  assert [name for name, _ in open_clips("sevenscenes", str(tmp_path))] == [name for name, _ in clips]


def test_7scenes_sequences_take_the_published_intrinsics(tmp_path):
  """7-Scenes chess.zip: seq-NN folders (color png, no intrinsics file) beside TrainSplit.txt / TestSplit.txt; the
  project page gives focal 585 and principal point (320, 240)."""
  chess = tmp_path / "chess"
  c2w, mm = _write_frames(chess / "seq-01", range(2), "png")
  _write_frames(chess / "seq-03", range(2), "png")
  (chess / "TrainSplit.txt").write_text("sequence1\n")
  (chess / "TestSplit.txt").write_text("sequence3\n")
  clip = open_clip("sevenscenes", str(chess / "seq-01"))
  assert clip.name == "chess_seq-01"
  _check(clip, c2w, mm, np.array(SEVENSCENES_K), 2)
  assert [name for name, _ in open_clips("sevenscenes", str(tmp_path))] == ["chess_seq-01", "chess_seq-03"]


def test_a_folder_matching_no_intrinsics_variant_names_every_candidate(tmp_path):
  _write_frames(tmp_path / "seq-01", range(2), "png")  # a seq-NN folder, but no 7-Scenes split files beside it
  with pytest.raises(FileNotFoundError) as e:
    open_clip("sevenscenes", str(tmp_path / "seq-01"))
  seq = tmp_path / "seq-01"
  for candidate in ("frame-000000.K.txt", str(seq / "camera-intrinsics.txt"), str(seq / "intrinsics.K.txt"),
                    str(tmp_path / "camera-intrinsics.txt"), "TrainSplit.txt or TestSplit.txt", "intrinsics="):
    assert candidate in str(e.value), candidate
  K = _K(525, 319.5, 239.5)
  assert np.array_equal(open_clip("sevenscenes", str(tmp_path / "seq-01"), intrinsics=K).K[1], K)
  with pytest.raises(FileNotFoundError, match=r"no frame-NNNNNN\.color\.jpg\|png files"):
    open_clip("sevenscenes", str(tmp_path))


# --------------------------------------------------------------------------------------------------------- TUM, Bonn
def _write_tum(folder, n=3, seed=0):
  """A TUM RGB-D sequence as its tgz unpacks: rgb/, depth/ (5000 per metre), rgb.txt, depth.txt, groundtruth.txt."""
  os.makedirs(folder / "rgb")
  os.makedirs(folder / "depth")
  c2w = _poses(n, seed)
  raw = np.random.default_rng(seed).integers(1, 20000, (n, H, W)).astype(np.uint16)
  t = 1341846313.55 + np.arange(n) / 30
  for k, ts in enumerate(t):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "rgb" / f"{ts:.6f}.png")
    Image.fromarray(raw[k]).save(folder / "depth" / f"{ts + 0.01:.6f}.png")
  (folder / "rgb.txt").write_text("# color images\n# timestamp filename\n" +
                                  "".join(f"{ts:.6f} rgb/{ts:.6f}.png\n" for ts in t))
  (folder / "depth.txt").write_text("# depth maps\n" +
                                    "".join(f"{ts + .01:.6f} depth/{ts + .01:.6f}.png\n" for ts in t))
  q = g.matrix_to_quat(c2w[:, :3, :3])
  (folder / "groundtruth.txt").write_text("# ground truth trajectory\n# timestamp tx ty tz qx qy qz qw\n" + "".join(
      f"{ts - 0.003:.4f} " + " ".join(f"{v:.9f}" for v in (*c[:3, 3], *qq)) + "\n" for ts, c, qq in zip(t, c2w, q)))
  return c2w, raw


@pytest.mark.parametrize("camera", ["freiburg1", "freiburg2", "freiburg3", None])
def test_tum_sequences_take_the_intrinsics_of_the_kinect_they_name(tmp_path, camera):
  folder = tmp_path / (f"rgbd_dataset_{camera}_xyz" if camera else "my_sequence")
  c2w, raw = _write_tum(folder)
  rec = open_clip("tum", str(folder)).load()
  np.testing.assert_allclose(rec.K[0], TUM_CAMERAS[camera] if camera else TUM_FR3_K)
  np.testing.assert_allclose(rec.c2w, c2w, atol=1e-7)
  np.testing.assert_allclose(rec.depth, raw / 5000.0, rtol=1e-6)
  assert np.array_equal(open_clip("tum", str(folder), intrinsics=np.eye(3)).K[0], np.eye(3))


def test_tum_cameras_are_the_three_kinects():
  assert [TUM_CAMERAS[c][0][0] for c in ("freiburg1", "freiburg2", "freiburg3")] == [517.3, 520.9, 535.4]


def test_bonn_sequences_and_a_folder_of_them(tmp_path):
  """rgbd_bonn_dataset/rgbd_bonn_<name>/: the TUM layout with Bonn's intrinsics."""
  c2w, _ = _write_tum(tmp_path / "rgbd_bonn_dataset" / "rgbd_bonn_balloon", seed=1)
  _write_tum(tmp_path / "rgbd_bonn_dataset" / "rgbd_bonn_crowd2", seed=2)
  clips = open_clips("bonn", str(tmp_path / "rgbd_bonn_dataset"))
  assert [name for name, _ in clips] == ["rgbd_bonn_balloon", "rgbd_bonn_crowd2"]
  rec = clips[0][1].load()
  np.testing.assert_allclose(rec.K[0], BONN_K)
  np.testing.assert_allclose(rec.c2w, c2w, atol=1e-7)


def test_a_folder_without_tum_lists_names_them(tmp_path):
  with pytest.raises(FileNotFoundError, match="looked for rgb.txt, depth.txt, groundtruth.txt"):
    open_clip("tum", str(tmp_path))
  _write_tum(tmp_path / "s")
  with pytest.raises(ValueError, match=r"\[5:None:1\] selects none of the 3 frames"):
    open_clip("bonn", str(tmp_path / "s"), start=5)


# ------------------------------------------------------------------------------------------------------------- Sintel
def _write_sintel(training, sequence="alley_2", passes=("final", "clean"), n=2):
  """MPI-Sintel-training_images.zip (training/{final,clean}/<seq>/frame_NNNN.png) + MPI-Sintel-depth-training
  (training/depth/<seq>/*.dpt, training/camdata_left/<seq>/*.cam), frames numbered from 1."""
  c2w, K = _poses(n), _K(688.0, 511.5, 217.5)
  depth = np.random.default_rng(0).uniform(1, 50, (n, H, W)).astype(np.float32)
  for sub in (*passes, "depth", "camdata_left"):
    os.makedirs(training / sub / sequence)
  for k in range(n):
    for p in passes:
      Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(training / p / sequence / f"frame_{k + 1:04d}.png")
    write_sintel_dpt(training / "depth" / sequence / f"frame_{k + 1:04d}.dpt", depth[k])
    write_sintel_cam(training / "camdata_left" / sequence / f"frame_{k + 1:04d}.cam", K, c2w[k])
  return c2w, K, depth


@pytest.mark.parametrize("given", ["training", "root"])
def test_sintel_reads_the_training_folder_or_its_parent(tmp_path, given):
  c2w, K, depth = _write_sintel(tmp_path / "training")
  path = str(tmp_path / "training" if given == "training" else tmp_path)
  rec = open_clip("sintel", path, sequence="alley_2", render_pass="clean").load()
  np.testing.assert_allclose(rec.c2w, c2w, atol=1e-9)
  np.testing.assert_allclose(rec.K, np.broadcast_to(K, (2, 3, 3)))
  np.testing.assert_array_equal(rec.depth, depth)
  assert [name for name, _ in open_clips("sintel", path)] == ["alley_2"]


def test_a_folder_that_is_no_sintel_training_folder_names_both_places(tmp_path):
  os.makedirs(tmp_path / "training" / "depth")
  with pytest.raises(FileNotFoundError) as e:
    open_clip("sintel", str(tmp_path), sequence="alley_2")
  assert "looked for camdata_left and depth/" in str(e.value)
  assert f"in {tmp_path} and in {tmp_path / 'training'}" in str(e.value)
