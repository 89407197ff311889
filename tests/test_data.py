"""Readers (real clips in ../shared/data, and files written here in each dataset's documented binary format), their
errors on malformed input, and the Grain pipeline: determinism, per-host sharding, exact restore, UMC frequencies,
and a real 60-frame clip going through to batches whose pointmaps reproject consistently."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from one4d_jax import geometry as g
from one4d_jax import umc
from one4d_jax.data import READERS, ClipRecord, open_clip, write_clipfolder
from one4d_jax.data.clips import write_sintel_cam, write_sintel_dpt
from one4d_jax.data.pipeline import PipelineConfig, draw_task, make_dataset, make_iterator

H, W = 6, 8


def _synthetic_record(num_frames=12, seed=0) -> ClipRecord:
  rng = np.random.default_rng(seed)
  depth = rng.uniform(1.0, 3.0, (num_frames, H, W)).astype(np.float32)
  valid = rng.uniform(size=depth.shape) > 0.1
  K = np.tile(np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]]), (num_frames, 1, 1))
  angles = np.linspace(0, 0.3, num_frames)
  R = g.quat_to_matrix(np.stack([0 * angles, np.sin(angles / 2), 0 * angles, np.cos(angles / 2)], -1))
  c2w = g.pose_matrix(R, np.stack([angles, 0.1 * angles, -angles], -1) + [1.0, 2.0, 3.0])
  frames = rng.integers(0, 256, (num_frames, H, W, 3), dtype=np.uint8)
  return ClipRecord(frames, np.where(valid, depth, 0).astype(np.float32), valid, K, c2w, "a test clip", "synthetic",
                    "syn")


def _png16(path, values):
  Image.fromarray(np.asarray(values, np.uint16)).save(path)


@pytest.fixture
def kitchen_dir(shared_dir):
  return os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")


# ----------------------------------------------------------------------------------------------------------- readers
def test_registry_names_every_format():
  assert set(READERS) == {"clipfolder", "tum", "bonn", "sevenscenes", "align3d", "sintel", "pointodyssey",
                          "tartanair", "omniworld_game", "bedlam", "spatialvid"}
  with pytest.raises(ValueError, match="unknown clip format 'kitti'"):
    open_clip("kitti", "/tmp")


def test_sevenscenes_reader_on_the_real_clip(kitchen_dir):
  clip = open_clip("sevenscenes", kitchen_dir)
  assert clip.num_frames == 60 and clip.source == "sevenscenes"
  np.testing.assert_allclose(clip.K[0], [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
  np.testing.assert_allclose(np.linalg.det(clip.c2w[:, :3, :3]), 1.0, atol=1e-9)  # orthonormalised
  rec = clip.load([0, 59])
  assert rec.frames.shape == (2, 480, 640, 3) and rec.frames.dtype == np.uint8
  assert 0.8 < rec.valid.mean() < 0.95 and 0.7 < rec.depth[rec.valid].min() and rec.depth.max() < 3.0


def test_sevenscenes_frame_numbers_need_not_be_contiguous(tmp_path, kitchen_dir):
  for i in (100, 105, 159):
    for suffix in ("color.jpg", "depth.png", "pose.txt"):
      os.symlink(os.path.join(kitchen_dir, f"frame-{i:06d}.{suffix}"), tmp_path / f"frame-{i:06d}.{suffix}")
  np.savetxt(tmp_path / "frame-000105.K.txt", np.diag([600.0, 600.0, 1.0]))
  os.symlink(os.path.join(kitchen_dir, "camera-intrinsics.txt"), tmp_path / "camera-intrinsics.txt")
  clip = open_clip("sevenscenes", str(tmp_path))
  assert clip.num_frames == 3 and clip.frame_paths[1].endswith("frame-000105.color.jpg")
  assert clip.K[1, 0, 0] == 600 and clip.K[0, 0, 0] == 585  # per-frame *.K.txt wins over camera-intrinsics.txt


def test_align3d_reader_on_the_real_clip(shared_dir):
  clip = open_clip("align3d", os.path.join(shared_dir, "data", "rgbd_office_31f_align3d"))
  assert clip.num_frames == 31
  np.testing.assert_allclose(clip.c2w[0], np.eye(4), atol=1e-6)
  rec = clip.load([0, 15, 30])
  xyz, valid = g.pointmaps_from_depth(rec.depth, rec.K, rec.c2w, rec.valid)
  err = g.reprojection_depth_error(xyz, valid, rec.K, g.relative_poses(rec.c2w), rec.depth, rec.valid, 0, 2)
  assert err < 0.02  # SOURCE.md measured 0.94 %


@pytest.mark.parametrize("depth_format", ["npy", "png"])
def test_clipfolder_roundtrip(tmp_path, depth_format):
  rec = _synthetic_record()
  write_clipfolder(str(tmp_path / "clip"), rec, depth_format)
  clip = open_clip("clipfolder", str(tmp_path / "clip"))
  back = clip.load()
  assert clip.caption == "a test clip" and clip.num_frames == 12
  assert np.array_equal(back.frames, rec.frames) and np.array_equal(back.valid, rec.valid)
  np.testing.assert_allclose(back.depth, rec.depth, atol=1e-6 if depth_format == "npy" else 5e-4)
  np.testing.assert_allclose(back.c2w, rec.c2w, atol=1e-9)


def _write_tum(root, rec, shift=0.004, gt_rows=None):
  os.makedirs(root / "rgb")
  os.makedirs(root / "depth")
  t = 1305031102.0 + np.arange(len(rec.frames)) / 30
  for n, ts in enumerate(t):
    Image.fromarray(rec.frames[n]).save(root / "rgb" / f"{ts:.6f}.png")
    _png16(root / "depth" / f"{ts + shift:.6f}.png", np.round(rec.depth[n] * 5000))
  (root / "rgb.txt").write_text("# timestamp filename\n" + "".join(f"{ts:.6f} rgb/{ts:.6f}.png\n" for ts in t))
  (root / "depth.txt").write_text("".join(f"{ts + shift:.6f} depth/{ts + shift:.6f}.png\n" for ts in t))
  if gt_rows is None:
    q = g.matrix_to_quat(rec.c2w[:, :3, :3])
    gt_rows = [f"{ts - 0.001:.4f} " + " ".join(f"{v:.9f}" for v in (*c[:3, 3], *qq)) for ts, c, qq in
               zip(t, rec.c2w, q)]
  (root / "groundtruth.txt").write_text("# timestamp tx ty tz qx qy qz qw\n" + "\n".join(gt_rows) + "\n")


@pytest.mark.parametrize("fmt", ["tum", "bonn"])
def test_tum_and_bonn_readers_associate_timestamps(tmp_path, fmt):
  rec = _synthetic_record()
  _write_tum(tmp_path, rec)
  clip = open_clip(fmt, str(tmp_path), start=2, step=3)
  assert clip.num_frames == 4 and clip.source == fmt
  back = clip.load()
  np.testing.assert_allclose(back.depth, rec.depth[2::3], atol=1e-4)
  np.testing.assert_allclose(back.c2w, rec.c2w[2::3], atol=1e-6)
  assert back.K[0, 0, 0] == (535.4 if fmt == "tum" else 542.822841)


def test_sintel_reader_reads_dpt_and_cam(tmp_path):
  rec = _synthetic_record(num_frames=3)
  for sub in ("final/alley_1", "depth/alley_1", "camdata_left/alley_1"):
    os.makedirs(tmp_path / sub)
  for n in range(3):
    Image.fromarray(rec.frames[n]).save(tmp_path / "final" / "alley_1" / f"frame_{n + 1:04d}.png")
    write_sintel_dpt(tmp_path / "depth" / "alley_1" / f"frame_{n + 1:04d}.dpt", rec.depth[n])
    write_sintel_cam(tmp_path / "camdata_left" / "alley_1" / f"frame_{n + 1:04d}.cam", rec.K[n], rec.c2w[n])
  back = open_clip("sintel", str(tmp_path), sequence="alley_1").load()
  assert np.array_equal(back.depth, rec.depth) and np.array_equal(back.valid, rec.valid)
  np.testing.assert_allclose(back.c2w, rec.c2w, atol=1e-9)
  np.testing.assert_allclose(back.K, rec.K)


def test_pointodyssey_reader_inverts_world_to_camera(tmp_path):
  rec = _synthetic_record(num_frames=3)
  os.makedirs(tmp_path / "rgbs")
  os.makedirs(tmp_path / "depths")
  for n in range(3):
    Image.fromarray(rec.frames[n]).save(tmp_path / "rgbs" / f"rgb_{n:05d}.jpg", quality=95)
    _png16(tmp_path / "depths" / f"depth_{n:05d}.png", np.round(rec.depth[n] / 1000 * 65535))
  np.savez(tmp_path / "anno.npz", intrinsics=rec.K, extrinsics=np.linalg.inv(rec.c2w))
  back = open_clip("pointodyssey", str(tmp_path)).load()
  np.testing.assert_allclose(back.c2w, rec.c2w, atol=1e-9)
  np.testing.assert_allclose(back.depth, rec.depth, atol=0.01)


def test_tartanair_reader_converts_ned_poses(tmp_path):
  rec = _synthetic_record(num_frames=3)
  os.makedirs(tmp_path / "image_left")
  os.makedirs(tmp_path / "depth_left")
  ned = rec.c2w @ np.linalg.inv(g.ned_to_opencv_c2w(np.eye(4)))  # the same cameras with NED axes
  rows = []
  for n in range(3):
    Image.fromarray(rec.frames[n]).save(tmp_path / "image_left" / f"{n:06d}_left.png")
    np.save(tmp_path / "depth_left" / f"{n:06d}_left_depth.npy", rec.depth[n])
    rows.append([*ned[n, :3, 3], *g.matrix_to_quat(ned[n, :3, :3])])
  np.savetxt(tmp_path / "pose_left.txt", rows)
  back = open_clip("tartanair", str(tmp_path)).load()
  np.testing.assert_allclose(back.c2w, rec.c2w, atol=1e-9)
  assert np.array_equal(back.depth, rec.depth)


# ----------------------------------------------------------------------------------------------- malformed inputs
def _clipfolder(tmp_path):
  return write_clipfolder(str(tmp_path / "clip"), _synthetic_record(num_frames=3))


def _edit_cameras(path, edit):
  cams = json.load(open(os.path.join(path, "cameras.json")))
  edit(cams)
  json.dump(cams, open(os.path.join(path, "cameras.json"), "w"))


def test_clipfolder_rejects_malformed_input(tmp_path):
  path = _clipfolder(tmp_path)
  os.remove(os.path.join(path, "depth", "000001.npy"))
  with pytest.raises(ValueError, match="same frame numbers"):
    open_clip("clipfolder", path)
  np.save(os.path.join(path, "depth", "000001.npy"), np.ones((H + 1, W), np.float32))
  with pytest.raises(ValueError, match=r"depth .*000001.npy is \(7, 8\) but the image .* is \(6, 8\)"):
    open_clip("clipfolder", path).load()
  _edit_cameras(path, lambda c: c["frames"][2].__setitem__("c2w", [[1, 0, 0, "x"]] * 4))
  with pytest.raises(ValueError, match=r"frames\[2\]: needs 'K'"):
    open_clip("clipfolder", path)
  _edit_cameras(path, lambda c: c["frames"][2].__setitem__("c2w", np.eye(3).tolist()))
  with pytest.raises(ValueError, match=r"expected K 3x3 and c2w 4x4, found K \(3, 3\) and c2w \(3, 3\)"):
    open_clip("clipfolder", path)
  _edit_cameras(path, lambda c: c.pop("depth_scale"))
  with pytest.raises(ValueError, match="missing 'depth_scale'"):
    open_clip("clipfolder", path)
  _edit_cameras(path, lambda c: (c["frames"].pop(), c.__setitem__("depth_scale", 1.0)))
  with pytest.raises(ValueError, match=r"one entry per image \(3\), found 2"):
    open_clip("clipfolder", path)
  os.remove(os.path.join(path, "cameras.json"))
  with pytest.raises(FileNotFoundError, match="cameras.json not found"):
    open_clip("clipfolder", path)


def test_sevenscenes_rejects_malformed_input(tmp_path, kitchen_dir):
  for i in (100, 101):
    for suffix in ("color.jpg", "depth.png", "pose.txt"):
      os.symlink(os.path.join(kitchen_dir, f"frame-{i:06d}.{suffix}"), tmp_path / f"frame-{i:06d}.{suffix}")
  with pytest.raises(FileNotFoundError, match="no intrinsics"):
    open_clip("sevenscenes", str(tmp_path))
  np.savetxt(tmp_path / "camera-intrinsics.txt", np.eye(3))
  os.remove(tmp_path / "frame-000101.pose.txt")
  with pytest.raises(FileNotFoundError, match=r"pose not found: expected .*frame-000101.pose.txt"):
    open_clip("sevenscenes", str(tmp_path))
  (tmp_path / "frame-000101.pose.txt").write_text("1 0 0 0\n0 1 0 nan-ish\n")
  with pytest.raises(ValueError, match=r"frame-000101.pose.txt: cannot parse a 4x4 matrix"):
    open_clip("sevenscenes", str(tmp_path))
  (tmp_path / "frame-000101.pose.txt").write_text("2 0 0 0 0 2 0 0 0 0 2 0 0 0 0 1\n")
  with pytest.raises(ValueError, match="rotation block is not a rotation"):
    open_clip("sevenscenes", str(tmp_path))
  np.savetxt(tmp_path / "frame-000101.pose.txt", np.eye(4))
  os.remove(tmp_path / "frame-000101.depth.png")
  _png16(tmp_path / "frame-000101.depth.png", np.ones((240, 320)))
  with pytest.raises(ValueError, match=r"is \(240, 320\) but the image .* is \(480, 640\)"):
    open_clip("sevenscenes", str(tmp_path)).load()


def test_align3d_rejects_malformed_input(tmp_path, shared_dir):
  src = os.path.join(shared_dir, "data", "rgbd_office_31f_align3d")
  with pytest.raises(FileNotFoundError, match="frames.json not found"):
    open_clip("align3d", str(tmp_path))
  entries = json.load(open(os.path.join(src, "frames.json")))["root"][:2]
  for e in entries:
    for key in ("rgb_image", "depth_image"):
      os.symlink(os.path.join(src, e[key]), tmp_path / e[key])
  entries[1]["info"]["rt_cam"]["matrix"] = [[1, 0, 0]] * 3
  (tmp_path / "frames.json").write_text(json.dumps({"root": entries}))
  with pytest.raises(ValueError, match=r"root\[1\]: expected K 3x3 and rt_cam 4x4"):
    open_clip("align3d", str(tmp_path))
  del entries[1]["info"]["kcam"]
  (tmp_path / "frames.json").write_text(json.dumps({"root": entries}))
  with pytest.raises(ValueError, match=r"root\[1\]: needs rgb_image"):
    open_clip("align3d", str(tmp_path))


def test_tum_rejects_malformed_input(tmp_path):
  rec = _synthetic_record(num_frames=3)
  _write_tum(tmp_path, rec, gt_rows=["1305031102.0 0 0 0 0 0 0"])
  with pytest.raises(ValueError, match=r"groundtruth.txt line 2: expected 8 fields, found 7"):
    open_clip("tum", str(tmp_path))
  (tmp_path / "groundtruth.txt").write_text("1305031102.0 0 0 zero 0 0 0 1\n")
  with pytest.raises(ValueError, match="unparsable pose values"):
    open_clip("tum", str(tmp_path))
  (tmp_path / "groundtruth.txt").write_text("1305031000.0 0 0 0 0 0 0 1\n")
  with pytest.raises(ValueError, match="no RGB frame has both a depth map and a pose within 0.02 s"):
    open_clip("tum", str(tmp_path))
  os.remove(tmp_path / "depth.txt")
  with pytest.raises(FileNotFoundError, match="TUM list not found: expected .*depth.txt"):
    open_clip("bonn", str(tmp_path))


def test_sintel_pointodyssey_tartanair_reject_malformed_input(tmp_path):
  (tmp_path / "bad.dpt").write_bytes(np.array([202021.25], "<f4").tobytes() + np.array([4, 4], "<i4").tobytes())
  from one4d_jax.data.clips import read_sintel_cam, read_sintel_dpt
  with pytest.raises(ValueError, match="header says 4x4 but the file has 0 bytes of data"):
    read_sintel_dpt(str(tmp_path / "bad.dpt"))
  (tmp_path / "bad.cam").write_bytes(b"\0" * 172)
  with pytest.raises(ValueError, match="not a Sintel .cam file"):
    read_sintel_cam(str(tmp_path / "bad.cam"))
  po = tmp_path / "po"
  os.makedirs(po / "rgbs")
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(po / "rgbs" / "rgb_00000.jpg")
  np.savez(po / "anno.npz", intrinsics=np.zeros((2, 3, 3)), extrinsics=np.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match=r"expected intrinsics \[1, 3, 3\] and extrinsics \[1, 4, 4\] for 1 images"):
    open_clip("pointodyssey", str(po))
  np.savez(po / "anno.npz", trajs_2d=np.zeros(3))
  with pytest.raises(ValueError, match="needs arrays 'intrinsics'"):
    open_clip("pointodyssey", str(po))
  ta = tmp_path / "ta"
  os.makedirs(ta / "image_left")
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(ta / "image_left" / "000000_left.png")
  (ta / "pose_left.txt").write_text("0 0 0 0 0 0 1\n0 0 0 0 0 0 1\n")
  with pytest.raises(ValueError, match=r"expected 1 lines of 7 numbers .* found \(2, 7\)"):
    open_clip("tartanair", str(ta))
  (ta / "pose_left.txt").write_text("0 0 0 0 0 zero 1\n")
  with pytest.raises(ValueError, match="unparsable poses"):
    open_clip("tartanair", str(ta))
  (ta / "pose_left.txt").write_text("0 0 0 0 0 0 1\n")
  with pytest.raises(FileNotFoundError, match="TartanAir depth not found"):
    open_clip("tartanair", str(ta))


# ---------------------------------------------------------------------------------------------------------- pipeline
TINY = PipelineConfig(num_frames=5, frame_stride=2, height=4, width=6, batch_size=2, seed=7, random_crop=True)


@pytest.fixture
def tiny_clips(tmp_path):
  return [open_clip("clipfolder", write_clipfolder(str(tmp_path / f"c{n}"), _synthetic_record(12 + n, seed=n)))
          for n in range(2)]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), k


def test_pipeline_batches_have_the_documented_fields(tiny_clips):
  batch = next(make_iterator(make_dataset(tiny_clips, TINY, 0, 1)))
  assert batch["frames"].shape == batch["pointmaps"].shape == (2, 3, 5, 4, 6)
  assert batch["frames"].dtype == batch["pointmaps"].dtype == np.float32
  assert -1 <= batch["frames"].min() and batch["frames"].max() <= 1 and np.abs(batch["pointmaps"]).max() <= 1
  assert batch["valid"].shape == (2, 5, 4, 6) and batch["observed"].shape == (2, 5)
  assert batch["K"].shape == (2, 5, 3, 3) and batch["c2w"].shape == (2, 5, 4, 4) and batch["scale"].shape == (2,)
  np.testing.assert_allclose(batch["c2w"][:, 0], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-6)
  assert list(batch["caption"]) == ["a test clip"] * 2 and batch["task"].dtype == np.int32
  assert PipelineConfig().height == 352 and PipelineConfig().width == 624 and PipelineConfig().num_frames == 81


@pytest.mark.parametrize("num_threads", [0, 2])
def test_pipeline_is_deterministic_and_restores_exactly(tiny_clips, num_threads):
  ds = make_dataset(tiny_clips, TINY, 0, 1)
  it = make_iterator(ds, num_threads=num_threads)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = make_iterator(make_dataset(tiny_clips, TINY, 0, 1), num_threads=num_threads)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 3)):
    _assert_same(a, b)
  fresh = _take(make_iterator(ds), 6)
  for a, b in zip(expected, fresh[3:]):
    _assert_same(a, b)
  other_seed = next(make_iterator(make_dataset(tiny_clips, dataclasses_replace(TINY, seed=8), 0, 1)))
  assert not np.array_equal(other_seed["index"], fresh[0]["index"]) or not np.array_equal(
      other_seed["frames"], fresh[0]["frames"])


def dataclasses_replace(config, **changes):
  return dataclasses.replace(config, **changes)


def test_hosts_supply_consecutive_blocks_of_the_single_host_global_batch(tiny_clips):
  """Two hosts with batch 1 each put together exactly the global batches (same examples, same order) that one host
  with batch 2 reads: a run's batches do not depend on how many hosts feed it."""
  config = dataclasses_replace(TINY, batch_size=1)
  single = [b["index"].tolist() for b in _take(make_iterator(make_dataset(tiny_clips, TINY, 0, 1)), 3)]
  hosts = [[int(b["index"][0]) for b in _take(make_iterator(make_dataset(tiny_clips, config, p, 2)), 3)]
           for p in range(2)]
  assert [list(pair) for pair in zip(*hosts)] == single == [[0, 1], [2, 3], [4, 5]]
  host1 = next(make_iterator(make_dataset(tiny_clips, config, 1, 2)))
  first = next(make_iterator(make_dataset(tiny_clips, TINY, 0, 1)))
  _assert_same(host1, {k: v[1:2] for k, v in first.items()})  # same element, crop and task, whatever the host count


def test_every_window_once_per_epoch_and_reshuffled(tiny_clips):
  from one4d_jax.data.pipeline import WindowSource, clip_windows
  config = dataclasses_replace(TINY, num_epochs=2)
  windows = clip_windows(tiny_clips, 5, 2, 1)
  assert len(windows) == (12 - 8) + (13 - 8) and set(windows[:, 2]) == {5}
  source = WindowSource(tiny_clips, config)
  assert len(source) == 2 * len(windows)
  epochs = [[(source[e * len(windows) + j]["record"].name, source[e * len(windows) + j]["record"].frames[0].sum())
             for j in range(len(windows))] for e in range(2)]
  assert len(set(epochs[0])) == len(windows) and set(epochs[0]) == set(epochs[1]) and epochs[0] != epochs[1]
  with pytest.raises(ValueError, match=r"needs 41 frames, the longest clip has 13"):
    clip_windows(tiny_clips, 21, 2, 1, min_frames=21)
  with pytest.raises(ValueError, match="1 \\+ 4k frames"):
    clip_windows(tiny_clips, 6, 1, 1)


def test_shorter_clips_give_shorter_windows_and_every_global_batch_has_one_length(tmp_path):
  """Clips of 9, 20 and 6 frames at num_frames 9 (stride 1): windows of 9 from the first two, of 5 from the third
  (the longest 1 + 4k it holds), none lost; a clip of 4 frames gives none. Batches of 2 over 2 hosts: every global
  batch holds one length, and each epoch reads every window."""
  from one4d_jax.data.pipeline import WindowSource, clip_windows
  clips = [open_clip("clipfolder", write_clipfolder(str(tmp_path / f"c{n}"), _synthetic_record(f, seed=n)))
           for n, f in enumerate([9, 20, 6, 4])]
  windows = clip_windows(clips, 9, 1, 1)
  assert sorted({(int(c), int(n)) for c, _, n in windows}) == [(0, 9), (1, 9), (2, 5)]
  assert len(windows) == 1 + 12 + 2
  config = PipelineConfig(num_frames=9, height=4, width=6, batch_size=2, seed=1, num_epochs=1)
  source = WindowSource(clips, config, group=4)
  assert len(source) == 4 * (4 + 1)  # 13 windows of 9 in 4 groups of 4 (filled up), 2 of 5 in one
  lengths = [len(source[i]["record"].depth) for i in range(len(source))]
  assert all(len(set(lengths[g:g + 4])) == 1 for g in range(0, len(lengths), 4))
  seen = {(source[i]["record"].name, int(source[i]["record"].frames[0].sum())) for i in range(len(source))}
  assert len(seen) == len(windows)
  hosts = [make_iterator(make_dataset(clips, config, p, 2)) for p in range(2)]
  for _ in range(5):
    a, b = next(hosts[0]), next(hosts[1])
    assert a["frames"].shape[2] == b["frames"].shape[2] and a["observed"].shape[1] == a["frames"].shape[2]


def test_umc_task_frequencies_match_the_configured_ratios():
  config = PipelineConfig(num_frames=81, seed=3)
  draws = [draw_task(config, i) for i in range(3000)]
  counts = {t: sum(task == t for task, _ in draws) / len(draws) for t in umc.TASKS}
  print(counts)
  for task, p in umc.PAPER_TASK_PROBS.items():
    assert abs(counts[task] - p) < 0.03, (task, counts[task], p)
  for task, observed in draws[:200]:
    assert observed.shape == (81,) and observed[0] == (task != "text")
    if task == "sparse":
      assert observed[-1] and 2 <= observed.sum() <= round(0.5 * 81)
  with_text = dataclasses_replace(config, task_probs=(("single_image", 0.5), ("text", 0.5)))
  share = np.mean([draw_task(with_text, i)[0] == "text" for i in range(2000)])
  assert abs(share - 0.5) < 0.04


def test_real_60_frame_clip_becomes_batches_whose_pointmaps_reproject(kitchen_dir):
  clip = open_clip("sevenscenes", kitchen_dir)
  config = PipelineConfig(num_frames=17, frame_stride=3, window_step=4, height=96, width=176, batch_size=1, seed=0)
  batch = next(make_iterator(make_dataset([clip], config, 0, 1)))
  xyz = g.denormalize(batch["pointmaps"][0].transpose(1, 2, 3, 0), batch["scale"][0])  # [F, H, W, 3] metres
  valid, K, c2w = batch["valid"][0], batch["K"][0].astype(np.float64), batch["c2w"][0].astype(np.float64)
  depth = g.depth_from_pointmaps(xyz, c2w)
  errors = [g.reprojection_depth_error(xyz, valid, K, c2w, depth, valid, i, j) for i, j in [(0, 16), (16, 0), (8, 3)]]
  print("batch reprojection errors", errors, "scale", batch["scale"][0])
  assert max(errors) < 0.02 and valid.mean() > 0.8


# -------------------------------------------------------------------------------------------------------------- tfds
def test_tfds_bonn_builder_writes_array_record_read_through_grain(tmp_path):
  import grain

  from one4d_jax.data.tfds_builders import eval_data_source, prepare
  rec = _synthetic_record(num_frames=36)
  _write_tum(tmp_path / "manual" / "rgbd_bonn_crowd2", rec)
  prepare("bonn", str(tmp_path / "manual"), str(tmp_path / "out"), sequences=("crowd2",))
  assert any(p.endswith(".array_record-00000-of-00001") for p in os.listdir(tmp_path / "out" / "bonn_eval" / "1.0.0"))
  ds = grain.MapDataset.source(eval_data_source("bonn", str(tmp_path / "out")))
  assert len(ds) == 6  # the protocol's frames 30:140 of a 36-frame sequence
  for ex in ds:
    n = 30 + int(ex["frame"])
    assert ex["sequence"] == b"rgbd_bonn_crowd2" and ex["image"].dtype == np.uint8
    assert np.array_equal(ex["image"], rec.frames[n]) and np.array_equal(ex["valid"], rec.valid[n])
    np.testing.assert_allclose(ex["depth"], rec.depth[n], atol=1e-4)
    np.testing.assert_allclose(ex["c2w"], rec.c2w[n], atol=1e-6)
  with pytest.raises(FileNotFoundError, match="manual_dir must be the local folder"):
    prepare("tum_dynamics", str(tmp_path / "nowhere"), str(tmp_path / "out2"))


def test_open_clips_reads_a_clip_or_a_folder_of_clips(tmp_path):
  from one4d_jax.data import open_clips
  one = write_clipfolder(str(tmp_path / "many" / "a"), _synthetic_record(num_frames=3))
  write_clipfolder(str(tmp_path / "many" / "b"), _synthetic_record(num_frames=4, seed=1))
  (tmp_path / "many" / "notes").mkdir()  # a sub-folder the reader cannot open is skipped
  assert [n for n, _ in open_clips("clipfolder", one)] == [open_clip("clipfolder", one).name]
  assert [(n, c.num_frames) for n, c in open_clips("clipfolder", str(tmp_path / "many"))] == [("a", 3), ("b", 4)]
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="neither a clipfolder clip nor a folder of them"):
    open_clips("clipfolder", str(tmp_path / "empty"))
