"""Readers of the three further One4D training sets (OmniWorld-Game, BEDLAM, SpatialVID) on tiny files written here
in each dataset's official layout and encodings, their conversions to the clip conventions (metres, K with pixel
centres at integers, camera-to-world with OpenCV axes), captions, and their named errors on malformed input; and the
OpenEXR decoder on a file written by the OpenEXR library itself."""

import base64
import json
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from one4d_jax.data import READERS, open_clip, open_clips
from one4d_jax.data.readers import read_exr_channel

H, W = 8, 12
N = 3

# 18x5 ZIP-compressed OpenEXR written by OpenEXR 3.5.3 (Python) exactly as BEDLAM's exr_save_depth_masks.py writes
# depth: OpenEXR.Header(5, 18) (default ZIP compression) with FLOAT 'Depth' = 150 + 2.5 x + 10 y, plus the HALF
# 'Z' = 100 / Depth that SpatialVID's cvd_opt.py writes. Chunk 0 (16 rows) is deflated, chunk 1 (2 rows) stored raw.
OPENEXR_FILE = (
    "di8xAQIAAABjaGFubmVscwBjaGxpc3QAKQAAAERlcHRoAAIAAAAAAAAAAQAAAAEAAABaAAEAAAAAAAAAAQAAAAEAAAAAY29tcHJlc3Np"
    "b24AY29tcHJlc3Npb24AAQAAAANkYXRhV2luZG93AGJveDJpABAAAAAAAAAAAAAAAAQAAAARAAAAZGlzcGxheVdpbmRvdwBib3gyaQAQ"
    "AAAAAAAAAAAAAAAEAAAAEQAAAGxpbmVPcmRlcgBsaW5lT3JkZXIAAQAAAABwaXhlbEFzcGVjdFJhdGlvAGZsb2F0AAQAAAAAAIA/c2Ny"
    "ZWVuV2luZG93Q2VudGVyAHYyZgAIAAAAAAAAAAAAAABzY3JlZW5XaW5kb3dXaWR0aABmbG9hdAAEAAAAAACAPwA7AQAAAAAAAH4CAAAA"
    "AAAAAAAAADsBAAB4XmOYljUjY3bq3OQFW7OysnMaFiQsilsavTxyVVhObl7e6VVha0LWB27038KYl19QwLfFZ5vXTvfdrvu2FBQWFnnt"
    "czrgcNj2qPWJvKKi4uKGExanzM4anze8pJeenpHx6JLeFZ3rmjfV7xzKyszKtrqjck/pofxj2WcJ2dk5ud3PpF5IvBZ9K/yBNRdo0dUP"
    "Ap/4vnJ/5/y1MS8/P1/qF9sflv+MDAxMKQUFhQWRTP+Y/7L8Yf3NrlBYVFg0mf0nxw/O71zfeB6C7D3J84X3M98n/o+Cy4qLS4r/CL4X"
    "eif8VuSNWF5JSWmJttgr8ZcSLySfS1uVAkH44b3OtmBc1gAE7ghuPZDrAeeWgmSJ5oL0esK5JSBZVG69F5xbDJLFyv3LDOfWNu91hnLr"
    "G7zh3CKQLElcAHlr6bYQAAAAPAAAAAAAm0MAQJxDAICdQwDAnkMAAKBDKTUfNRQ1CjUANQAAoEMAQKFDAICiQwDAo0MAAKVDADX2NOw0"
    "4zTZNA=="
)


# ------------------------------------------------------------------------------------- writers for the fixtures
def _exr_bytes(channels: dict, compression: int = 3) -> bytes:
  """A single-part scanline OpenEXR file (ZIP-coded by default) following openexr.com "OpenEXR File Layout"."""
  names = sorted(channels)
  height, width = channels[names[0]].shape
  ptype = {np.dtype(np.float16): 1, np.dtype(np.float32): 2}

  def attr(name, kind, value):
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

  chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", ptype[channels[n].dtype], 0, 1, 1) for n in names)
  box = struct.pack("<4i", 0, 0, width - 1, height - 1)
  header = (struct.pack("<iI", 20000630, 2) + attr("channels", "chlist", chlist + b"\0")
            + attr("compression", "compression", bytes([compression])) + attr("dataWindow", "box2i", box)
            + attr("displayWindow", "box2i", box) + attr("lineOrder", "lineOrder", b"\0")
            + attr("pixelAspectRatio", "float", struct.pack("<f", 1)) + attr("screenWindowCenter", "v2f", bytes(8))
            + attr("screenWindowWidth", "float", struct.pack("<f", 1)) + b"\0")
  lines = 16 if compression == 3 else 1
  chunks = []
  for y in range(0, height, lines):
    raw = b"".join(channels[n][r].tobytes() for r in range(y, min(y + lines, height)) for n in names)
    data = raw
    if compression:
      b = np.frombuffer(raw, np.uint8).astype(np.int64)
      t = np.concatenate([b[0::2], b[1::2]])  # interleave: even bytes first, then odd
      t[1:] = (np.diff(t) + 128) % 256  # byte-delta predictor
      data = zlib.compress(t.astype(np.uint8).tobytes())
      data = data if len(data) < len(raw) else raw
    chunks.append(struct.pack("<ii", y, len(data)) + data)
  offsets = np.cumsum([len(header) + 8 * len(chunks)] + [len(c) for c in chunks[:-1]])
  return header + struct.pack(f"<{len(chunks)}Q", *offsets) + b"".join(chunks)


def _frames(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (N, H, W, 3), dtype=np.uint8)


def _depth(seed=0):
  return np.random.default_rng(seed + 1).uniform(1.0, 3.0, (N, H, W))


def _c2w():
  """Three camera-to-world poses with non-trivial rotations and translations."""
  R = Rotation.from_euler("xyz", [[10, -20, 30], [-35, 15, 5], [60, 40, -25]], degrees=True).as_matrix()
  out = np.tile(np.eye(4), (N, 1, 1))
  out[:, :3, :3], out[:, :3, 3] = R, [[1.0, -2.0, 0.5], [0.3, 0.2, -1.0], [-4.0, 1.5, 2.5]]
  return out


# ------------------------------------------------------------------------------------------------- OmniWorld-Game
def _omniworld_scene(root, frames_idx=(5, 6, 7)):
  """A scene as yangzhou24/OmniWorld's README and scripts/utils.py describe it; split 0 = frames_idx, split 1 = 2
  frames without a text caption."""
  scene = root / "b04f88d1f85a"
  for d in ("color", "depth", "camera", "text"):
    os.makedirs(scene / d)
  split1 = [20, 21]
  (scene / "split_info.json").write_text(json.dumps({"split_num": 2, "split": [list(frames_idx), split1]}))
  frames, depth, c2w = _frames(), _depth(), _c2w()
  d = 0.004 * 1000 * depth / (1 + 0.004 * 999 * depth)  # inverse of load_depth's reversed-Z decoding
  raw = np.round(d * 65535).astype(np.uint16)
  raw[:, 0, 0], raw[:, 0, 1] = 0, 65535  # too close / sky: invalid
  for n, i in enumerate(list(frames_idx) + split1):
    Image.fromarray(frames[n % N]).save(scene / "color" / f"{i:06d}.png")
    Image.fromarray(raw[n % N]).save(scene / "depth" / f"{i:06d}.png")
  w2c = np.linalg.inv(c2w)
  q = Rotation.from_matrix(w2c[:, :3, :3]).as_quat()  # x, y, z, w
  cam = {"focals": [9.0, 9.5, 10.0], "cx": 6.0, "cy": 4.0, "quats": q[:, [3, 0, 1, 2]].tolist(),
         "trans": w2c[:, :3, 3].tolist()}
  (scene / "camera" / "split_0.json").write_text(json.dumps(cam))
  cam1 = dict(cam, focals=[9.0, 9.0], quats=cam["quats"][:2], trans=cam["trans"][:2])
  (scene / "camera" / "split_1.json").write_text(json.dumps(cam1))
  (scene / "text" / f"{frames_idx[0]:06d}_{frames_idx[-1]:06d}.json").write_text(
      json.dumps({"captions": {"Video_Caption": "A red car drives down a wet street."}}))
  (scene / "caption.txt").write_text("a scene caption\n")
  return scene, frames, depth, raw, c2w


def test_registry_has_the_training_set_readers():
  assert {"omniworld_game", "bedlam", "spatialvid"} <= set(READERS)


def test_omniworld_game_reader_follows_the_official_layout(tmp_path):
  scene, frames, depth, _, c2w = _omniworld_scene(tmp_path)
  clip = open_clip("omniworld_game", str(scene))
  assert clip.num_frames == N and clip.name == "b04f88d1f85a_split0" and clip.source == "omniworld_game"
  assert clip.frame_paths[0].endswith(os.path.join("color", "000005.png"))
  np.testing.assert_allclose(clip.c2w, c2w, atol=1e-9)  # (w, x, y, z) world-to-camera, inverted
  np.testing.assert_allclose(clip.K[1], [[9.5, 0, 5.5], [0, 9.5, 3.5], [0, 0, 1]])  # pixel centres u + 0.5 there
  assert clip.caption == "A red car drives down a wet street."
  rec = pickle.loads(pickle.dumps(clip)).load()
  assert np.array_equal(rec.frames, frames)
  assert not rec.valid[:, 0, :2].any() and rec.valid[:, 1:].all()
  np.testing.assert_allclose(rec.depth[:, 1:], depth[:, 1:], atol=2e-3)  # one 16-bit step is < 1e-3 m here
  assert (rec.depth[~rec.valid] == 0).all()
  scaled = open_clip("omniworld_game", str(scene), metric_scale=2.0).load([0])
  np.testing.assert_allclose(scaled.depth[0, 1:], 2 * rec.depth[0, 1:], rtol=1e-6)
  clips = dict(open_clips("omniworld_game", str(scene)))
  assert sorted(clips) == ["b04f88d1f85a_split0", "b04f88d1f85a_split1"]
  assert clips["b04f88d1f85a_split1"].caption == "a scene caption"  # no text/ segment: caption.txt
  assert sorted(dict(open_clips("omniworld_game", str(tmp_path)))) == sorted(clips)  # a folder of scenes


def test_omniworld_game_reader_rejects_malformed_input(tmp_path):
  scene = _omniworld_scene(tmp_path)[0]
  with pytest.raises(ValueError, match="split 2 requested but the scene has 2 splits"):
    open_clip("omniworld_game", str(scene), split=2)
  (scene / "text" / "000005_000007.json").write_text(json.dumps({"caption": "x"}))
  with pytest.raises(ValueError, match=r"000005_000007.json: no caption at captions.Video_Caption .*\['caption'\]"):
    open_clip("omniworld_game", str(scene))
  assert open_clip("omniworld_game", str(scene), caption_keys=()).caption == "a scene caption"
  cam_path = scene / "camera" / "split_0.json"
  cam = json.loads(cam_path.read_text())
  cam_path.write_text(json.dumps(dict(cam, quats=[q[:3] for q in cam["quats"]])))
  with pytest.raises(ValueError, match=r"split_0.json: expected quats \[3, 4\] and trans \[3, 3\]"):
    open_clip("omniworld_game", str(scene), caption_keys=())
  cam_path.write_text(json.dumps(dict(cam, quats=[[0, 0, 0, 0]] + cam["quats"][1:])))
  with pytest.raises(ValueError, match="split_0.json: quats must be finite non-zero"):
    open_clip("omniworld_game", str(scene), caption_keys=())
  cam_path.write_text(json.dumps(dict(cam, focals=[9.0, 9.0])))
  with pytest.raises(ValueError, match="split_0.json: needs 'focals'"):
    open_clip("omniworld_game", str(scene), caption_keys=())
  cam_path.write_text(json.dumps(cam))
  os.remove(scene / "depth" / "000006.png")
  with pytest.raises(FileNotFoundError, match=r"OmniWorld-Game depth not found: expected .*000006.png"):
    open_clip("omniworld_game", str(scene), caption_keys=())
  os.remove(scene / "split_info.json")
  with pytest.raises(FileNotFoundError, match="split_info.json not found"):
    open_clip("omniworld_game", str(scene))


# ---------------------------------------------------------------------------------------------------------- BEDLAM
YAW_PITCH_ROLL = [[1.468127, -2.905068, 2.813995], [30.0, 10.0, -5.0], [-120.0, 40.0, 70.0]]
XYZ_CM = [[5.058579, -9.743741, 168.953232], [120.0, -40.0, 150.0], [-300.0, 75.0, 90.0]]


def _bedlam_scene(root):
  """A scene as pixelite1201/BEDLAM df_full_body.py and bedlam_render's exr_save_depth_masks.py lay it out."""
  scene, seq = root / "20221010_3_1000_batch01hand", "seq_000000"
  for d in (f"png/{seq}", f"depth/{seq}", "ground_truth/camera"):
    os.makedirs(scene / d)
  frames, depth = _frames(1), _depth(1)
  rows = ["name,x,y,z,yaw,pitch,roll,focal_length,sensor_width,sensor_height,hfov"]
  for n in range(N):
    name = f"{seq}_{n:04d}.png"
    Image.fromarray(frames[n]).save(scene / "png" / seq / name)
    (scene / "depth" / seq / name.replace(".png", "_depth.exr")).write_bytes(
        _exr_bytes({"Depth": (depth[n] * 100).astype(np.float32)}))  # Unreal units: cm
    rows.append(",".join(map(str, [name, *XYZ_CM[n], *YAW_PITCH_ROLL[n], 36.905 + n, 36, 20.25, 52])))
  (scene / "ground_truth" / "camera" / f"{seq}_camera.csv").write_text("\n".join(rows) + "\n")
  (scene / "png" / seq / "caption.txt").write_text("people walking in a park\n")
  return scene, seq, frames, depth


def _bedlam_official_w2c(yaw, pitch, roll, xyz_cm):
  """df_full_body.py: world-to-camera rotation get_cam_rotmat(-pitch, -yaw, -roll) via Rodrigues, camera position
  unreal2cv2(xyz) / 100."""
  rod = lambda v: Rotation.from_rotvec(v).as_matrix()
  R = rod([0, 0, np.radians(-roll)]) @ rod([np.radians(-pitch), 0, 0]) @ rod([0, np.radians(-yaw), 0])
  centre = np.roll(np.asarray(xyz_cm, float)[None] / 100, 2, 1)[0] * [1.0, -1.0, 1.0]
  return R, centre


def test_bedlam_reader_converts_unreal_cameras(tmp_path):
  scene, seq, frames, depth = _bedlam_scene(tmp_path)
  clip = open_clip("bedlam", str(scene), sequence=seq)
  assert clip.num_frames == N and clip.name == f"20221010_3_1000_batch01hand_{seq}" and clip.source == "bedlam"
  for n in range(N):
    R, centre = _bedlam_official_w2c(*YAW_PITCH_ROLL[n], XYZ_CM[n])
    np.testing.assert_allclose(clip.c2w[n, :3, :3], R.T, atol=1e-12)
    np.testing.assert_allclose(clip.c2w[n, :3, 3], centre, atol=1e-12)
  forward = clip.c2w[0, :3, 2]  # unreal_coordinate_system.md: yaw +1.47 turns right, pitch -2.9 looks down
  assert forward[0] > 0 and forward[1] > 0 and forward[2] > 0.99
  np.testing.assert_allclose(clip.K[2], [[(36.905 + 2) / 36 * W, 0, 5.5], [0, (36.905 + 2) / 20.25 * H, 3.5],
                                         [0, 0, 1]])
  assert clip.caption == "people walking in a park"
  rec = pickle.loads(pickle.dumps(clip)).load()
  assert np.array_equal(rec.frames, frames) and rec.valid.all()
  np.testing.assert_allclose(rec.depth, depth, rtol=1e-6)  # cm -> m
  assert open_clip("bedlam", str(scene)).name == clip.name  # the only sequence
  assert [n for n, _ in open_clips("bedlam", str(scene))] == [clip.name]
  assert [n for n, _ in open_clips("bedlam", str(tmp_path))] == [clip.name]


def test_bedlam_reader_rejects_malformed_input(tmp_path):
  scene, seq = _bedlam_scene(tmp_path)[:2]
  csv_path = scene / "ground_truth" / "camera" / f"{seq}_camera.csv"
  good = csv_path.read_text()
  csv_path.write_text(good.replace("-2.905068", "minus3"))
  with pytest.raises(ValueError, match=r"seq_000000_camera.csv: needs numeric columns x, y, z, yaw"):
    open_clip("bedlam", str(scene), sequence=seq)
  csv_path.write_text(good.replace("36.905,", "0,"))
  with pytest.raises(ValueError, match="camera values must be finite, focal_length and sensor sizes positive"):
    open_clip("bedlam", str(scene), sequence=seq)
  csv_path.write_text("\n".join(good.splitlines()[:-1]) + "\n")
  with pytest.raises(ValueError, match=r"no camera row for 1 of the 3 images, e.g. seq_000000_0002.png"):
    open_clip("bedlam", str(scene), sequence=seq)
  csv_path.write_text(good)
  exr = scene / "depth" / seq / f"{seq}_0001_depth.exr"
  exr.write_bytes(_exr_bytes({"R": np.ones((H, W), np.float32)}))
  with pytest.raises(ValueError, match=r"_0001_depth.exr: no OpenEXR channel 'Depth' \(channels: \['R'\]\)"):
    open_clip("bedlam", str(scene), sequence=seq).load([1])
  exr.write_bytes(b"not an exr file")
  with pytest.raises(ValueError, match="_0001_depth.exr: not an OpenEXR file"):
    open_clip("bedlam", str(scene), sequence=seq).load([1])
  os.remove(exr)
  with pytest.raises(FileNotFoundError, match=r"BEDLAM depth not found: expected .*seq_000000_0001_depth.exr"):
    open_clip("bedlam", str(scene), sequence=seq)
  with pytest.raises(FileNotFoundError, match="BEDLAM camera ground truth not found"):
    open_clip("bedlam", str(scene), sequence="seq_000001")


# ------------------------------------------------------------------------------------------------------ SpatialVID
CLIP_ID = "0a00f99d-9d9a-5265-9548-e97a34c1302c"


def _spatialvid_clip(root):
  """A SpatialVID-HQ clip as the HF card and NJU-3DV/SpatialVID utils (pack_clip_assets.py, read_depth.py,
  cvd_opt.py save_depth) lay it out, with frames extracted by utils/extract_frames.py into img/."""
  ann = root / "annotations" / "group_0001" / CLIP_ID
  os.makedirs(ann / "img")
  os.makedirs(root / "depths" / "group_0001")
  c2w = _c2w()
  frames = np.stack([np.full((H, W, 3), [30 + 60 * n, 200 - 50 * n, 90], np.uint8) for n in range(N)])  # JPEG-safe
  video_frames = [0, 3, 6]
  for n, i in enumerate(video_frames):
    Image.fromarray(frames[n]).save(ann / "img" / f"frame_{i:06d}.jpg", quality=95)
  (ann / "indexes.txt").write_text("".join(f"{n} {i}\n" for n, i in enumerate(video_frames)))
  w2c = np.linalg.inv(c2w)
  np.save(ann / "poses.npy", np.concatenate([w2c[:, :3, 3], Rotation.from_matrix(w2c[:, :3, :3]).as_quat()], 1))
  np.save(ann / "intrinsics.npy", np.array([[0.8, 1.2, 0.5, 0.5], [0.9, 1.3, 0.5, 0.5], [1.0, 1.4, 0.5, 0.5]]))
  (ann / "caption.json").write_text(json.dumps({"CamMotion": "The camera pans left.",
                                                "SceneDesc": "A quiet harbour at dusk.", "SceneTags": ["harbour"]}))
  depth_lo = np.random.default_rng(5).uniform(0.5, 5.0, (N, H // 2, W // 2))  # MegaSaM's lower resolution
  inverse = (1 / depth_lo).astype(np.float16)
  inverse[:, 0, 0] = 0  # no depth there
  inverse[:, 0, 1] = 1e-4  # farther than 100 m: clipped
  with zipfile.ZipFile(root / "depths" / "group_0001" / f"{CLIP_ID}.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for n in range(N):
      z.writestr(f"{n:05d}.exr", _exr_bytes({"Z": inverse[n]}))
  return ann, frames, c2w, inverse


def test_spatialvid_reader_follows_the_official_layout(tmp_path):
  ann, frames, c2w, inverse = _spatialvid_clip(tmp_path)
  clip = open_clip("spatialvid", str(ann))
  assert clip.num_frames == N and clip.name == CLIP_ID and clip.source == "spatialvid"
  assert clip.frame_paths[1].endswith(os.path.join("img", "frame_000003.jpg"))
  np.testing.assert_allclose(clip.c2w, c2w, atol=1e-9)  # lietorch (t, qx qy qz qw) world-to-camera, inverted
  np.testing.assert_allclose(clip.K[1], [[0.9 * W, 0, 5.5], [0, 1.3 * H, 3.5], [0, 0, 1]])
  assert clip.caption == "A quiet harbour at dusk."
  assert open_clip("spatialvid", str(ann), caption_key="CamMotion").caption == "The camera pans left."
  rec = pickle.loads(pickle.dumps(clip)).load()
  assert rec.frames.shape == (N, H, W, 3) and np.abs(rec.frames.astype(int) - frames).max() <= 3  # JPEG
  up = lambda a: a.repeat(2, 1).repeat(2, 2)  # nearest resampling onto the 2x frame grid
  valid = up(inverse > 0)
  expected = up(np.clip(1 / np.where(inverse > 0, inverse, 1).astype(np.float64), 1e-3, 100))
  assert np.array_equal(rec.valid, valid) and not rec.valid[:, :2, :2].any()
  np.testing.assert_allclose(rec.depth[valid], expected[valid], rtol=1e-6)
  assert (rec.depth[:, 0, 2:4] == 100).all()  # read_depth.py clips at 100 m
  assert [n for n, _ in open_clips("spatialvid", str(ann.parent))] == [CLIP_ID]  # a group folder


def test_spatialvid_reader_rejects_malformed_input(tmp_path):
  ann = _spatialvid_clip(tmp_path)[0]
  (ann / "caption.json").write_text(json.dumps({"CamMotion": "x"}))
  with pytest.raises(ValueError, match=r"caption.json: no caption at SceneDesc .*\['CamMotion'\]"):
    open_clip("spatialvid", str(ann))
  assert open_clip("spatialvid", str(ann), caption_key=None).caption == ""
  poses = np.load(ann / "poses.npy")
  np.save(ann / "poses.npy", poses[:, :6])
  with pytest.raises(ValueError, match=r"expected poses.npy \[3, 7\] and intrinsics.npy \[3, 4\] .* found \(3, 6\)"):
    open_clip("spatialvid", str(ann), caption_key=None)
  bad = poses.copy()
  bad[1, 3:] = 0
  np.save(ann / "poses.npy", bad)
  with pytest.raises(ValueError, match="poses.npy: poses must be finite with non-zero"):
    open_clip("spatialvid", str(ann), caption_key=None)
  np.save(ann / "poses.npy", poses)
  (ann / "indexes.txt").write_text("0 0\n1 three\n2 6\n")
  with pytest.raises(ValueError, match=r"indexes.txt line 2: expected 'annotation_index video_frame_index'"):
    open_clip("spatialvid", str(ann), caption_key=None)
  (ann / "indexes.txt").write_text("0 0\n1 3\n2 6\n")
  os.remove(ann / "img" / "frame_000000.jpg")
  with pytest.raises(FileNotFoundError, match=r"extract_frames.py\) not found: expected .*frame_000000.jpg"):
    open_clip("spatialvid", str(ann), caption_key=None)
  os.remove(ann / "poses.npy")
  with pytest.raises(FileNotFoundError, match="SpatialVID poses.npy not found"):
    open_clip("spatialvid", str(ann))


def test_spatialvid_reader_checks_the_depth_archive(tmp_path):
  ann = _spatialvid_clip(tmp_path)[0]
  archive = tmp_path / "depths" / "group_0001" / f"{CLIP_ID}.zip"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("00000.exr", _exr_bytes({"Z": np.ones((4, 6), np.float16)}))
  with pytest.raises(ValueError, match=r"\.zip: 1 \.exr depth maps for the 3 annotated frames"):
    open_clip("spatialvid", str(ann))
  os.remove(archive)
  with pytest.raises(FileNotFoundError, match=r"SpatialVID depth archive not found: expected .*depths/group_0001"):
    open_clip("spatialvid", str(ann))


# ---------------------------------------------------------------------------------------------------------- OpenEXR
def test_exr_decoder_reads_a_file_written_by_openexr():
  data = base64.b64decode(OPENEXR_FILE)
  yy, xx = np.mgrid[0:18, 0:5]
  depth_cm = (150.0 + 2.5 * xx + 10.0 * yy).astype(np.float32)
  assert np.array_equal(read_exr_channel(data, "Depth", "tiny.exr"), depth_cm)
  assert np.array_equal(read_exr_channel(data, "Z", "tiny.exr"), (100 / depth_cm).astype(np.float16).astype(np.float32))
  with pytest.raises(ValueError, match="tiny.exr: truncated OpenEXR file"):
    read_exr_channel(data[:400], "Depth", "tiny.exr")
  for compression in (0, 2, 3):  # none, ZIPS, ZIP from the fixture writer agree with the decoder
    z = np.random.default_rng(compression).uniform(0, 1, (H, W)).astype(np.float16)
    assert np.array_equal(read_exr_channel(_exr_bytes({"Z": z}, compression), "Z", "x"), z.astype(np.float32))
