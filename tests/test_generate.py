"""launch.generate: an image, sparse frames, a video or a folder of images, or nothing, to a folder a person can open
(videos, PLY point cloud and frusta, cameras.json), with every input checked before any model loads.

End-to-end runs use the tiny variant with random weights at 32 x 48, 5 frames, 2 Euler steps: all compile the same
programs, so only the first pays for compilation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import one4d as one4d_config_lib
from launch import cli
from launch import generate as gen
from one4d_jax import export, media, observations, pipeline
from one4d_jax.geometry import pointmaps as pm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW = (32, 48)
FAST = dict(height=HW[0], width=HW[1], steps=2, postopt_iters=10)


def tiny():
  return one4d_config_lib.get_config("variant=tiny")  # 5-frame window, random DiT and VAE


def numbered_image(n: int, hw=(40, 60)) -> np.ndarray:
  """An image whose red channel says its number (survives resizing) over a gradient (something to reconstruct)."""
  image = np.zeros((*hw, 3), np.uint8)
  image[..., 0] = 20 * n
  image[..., 1] = np.linspace(0, 255, hw[1]).astype(np.uint8)[None]
  image[..., 2] = np.linspace(0, 255, hw[0]).astype(np.uint8)[:, None]
  return image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """image.png (40x60), a folder of 10 images named 1.png .. 10.png (natural order differs from text order), a
  9-frame mp4, an unreadable 'image' and 'video', an empty folder."""
  root = tmp_path_factory.mktemp("inputs")
  Image.fromarray(numbered_image(1)).save(root / "image.png")
  (root / "folder").mkdir()
  for n in range(1, 11):
    Image.fromarray(numbered_image(n)).save(root / "folder" / f"{n}.png")
  media.write_mp4(str(root / "clip.mp4"), np.stack([numbered_image(n, (48, 64)) for n in range(9)]))
  (root / "broken.png").write_text("not an image")
  (root / "broken.mp4").write_text("not a video")
  (root / "empty").mkdir()
  return root


@pytest.fixture(scope="module")
def load_once():
  """pipeline.load, but each (size, workdir, lora) built once for the module: random initialisation compiles anew on
  every call, and every end-to-end test here asks for the same model."""
  models, real = {}, pipeline.load

  def load(c, workdir="", lora=""):
    key = (c.data.height, c.data.width, workdir, lora)
    if key not in models:
      models[key] = real(c, workdir, lora)
    return models[key]
  return load


def read_ply(path: str) -> dict:
  """A minimal binary little-endian PLY reader (scalar properties and uchar-counted int lists of fixed length 3):
  {element: structured array}, independent of the writer."""
  types = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4", "uint": "<u4"}
  data = open(path, "rb").read()
  end = data.index(b"end_header\n") + len(b"end_header\n")
  header = data[:end].decode("ascii").splitlines()
  assert header[:2] == ["ply", "format binary_little_endian 1.0"], header[:2]
  elements = []
  for line in header:
    words = line.split()
    if words[0] == "element":
      elements.append((words[1], int(words[2]), []))
    elif words[0] == "property" and words[1] == "list":
      elements[-1][2].extend([("count", types[words[2]]), (words[4], types[words[3]], (3,))])
    elif words[0] == "property":
      elements[-1][2].append((words[2], types[words[1]]))
  out, offset = {}, end
  for name, count, fields in elements:
    out[name] = np.frombuffer(data, np.dtype(fields), count, offset)
    offset += count * np.dtype(fields).itemsize
  assert offset == len(data), "trailing bytes after the last element"
  return out


def test_image_to_4d_writes_every_file_and_each_reads_back(inputs, tmp_path, capsys, monkeypatch, load_once):
  monkeypatch.setattr(pipeline, "load", load_once)
  out = tmp_path / "out"
  gen.generate(tiny(), str(out), image=str(inputs / "image.png"), **FAST)
  printed = capsys.readouterr().out
  assert sorted(os.listdir(out)) == sorted(export.FILES)

  # one line per phase, in order; what was read and how it was fitted
  phases = ["input: image", "size: 40x60 (HxW) cover-resized to 32x48", "frames: 5 = 1 + 4k", "loading:",
            "encoding: 1 observed frames through the VAE", "sampling: 2 Euler steps", "decoding:", "post-optimisation:",
            "post-optimisation: objective", "writing:", "wrote "]
  at = [printed.find(p) for p in phases]
  assert -1 not in at and at == sorted(at), printed

  d = np.load(out / "depth.npz")
  p = np.load(out / "pointmaps.npz")
  f, (h, w) = 5, HW
  assert d["depth"].shape == d["valid"].shape == (f, h, w) and d["K"].shape == (f, 3, 3)
  assert p["pointmaps"].shape == (f, h, w, 3) and p["frames"].dtype == np.uint8
  assert d["observed"].tolist() == [True, False, False, False, False] and d["source_index"].tolist() == [0] + [-1] * 4
  assert d["valid"].any() and np.isfinite(d["depth"]).all() and (d["depth"][d["valid"]] > 0).all()
  np.testing.assert_allclose(d["c2w"][0], np.eye(4), atol=1e-9)  # world = frame 0's camera

  # cameras.json holds exactly the npz cameras
  cams = json.load(open(out / "cameras.json"))
  assert (cams["height"], cams["width"]) == HW and len(cams["frames"]) == f and "OpenCV" in cams["convention"]
  np.testing.assert_array_equal([c["K"] for c in cams["frames"]], d["K"])
  np.testing.assert_array_equal([c["c2w"] for c in cams["frames"]], d["c2w"])

  # scene.ply: every valid depth pixel (5 frames: stride 1), as the cameras place it
  ply = read_ply(str(out / "scene.ply"))["vertex"]
  assert len(ply) == d["valid"].sum()
  xyz = np.stack([ply["x"], ply["y"], ply["z"]], -1)
  assert np.isfinite(xyz).all()
  expected = export.world_points(d["depth"], d["K"], d["c2w"])[d["valid"]]
  np.testing.assert_allclose(xyz, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.stack([ply["red"], ply["green"], ply["blue"]], -1), p["frames"][d["valid"]])

  # cameras.ply: a pyramid per camera, apex at the camera centre
  frusta = read_ply(str(out / "cameras.ply"))
  assert (len(frusta["vertex"]), len(frusta["face"]), len(frusta["edge"])) == (5 * f, 4 * f, 8 * f)
  apex = np.stack([frusta["vertex"][a][::5] for a in "xyz"], -1)
  np.testing.assert_allclose(apex, d["c2w"][:, :3, 3], atol=1e-6)
  assert frusta["edge"]["vertex2"].max() < 5 * f and (frusta["face"]["count"] == 3).all()

  # the videos decode back to every frame at the model's size
  for name in ("rgb.mp4", "xyz.mp4", "depth.mp4"):
    video = media.read_video(str(out / name), range(100))
    assert video.shape == (f, h, w, 3), name
  rgb = media.read_video(str(out / "rgb.mp4"), range(f)).astype(float)
  assert np.corrcoef(rgb.ravel(), p["frames"].ravel())[0, 1] > 0.8  # lossy H.264 of noise-like frames, still them

  summary = (out / "summary.txt").read_text()
  for needed in ("input: image", "observed frames: [0]", "sampler: 2 Euler steps", "mean point residual",
                 *export.FILES):
    assert needed in summary, needed


def test_the_quick_start_demo_writes_every_file_and_says_the_weights_are_random(tmp_path, capsys, monkeypatch,
                                                                               load_once):
  """--demo (README's first command): no input file, every output, one K and one pose per frame, decodable videos."""
  monkeypatch.setattr(pipeline, "load", load_once)
  out = tmp_path / "demo"
  scene = gen.generate(tiny(), str(out), demo=True, **FAST)
  assert "weights are random, so its outputs are noise" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == sorted(export.FILES) and scene.observed.tolist() == [True] + [False] * 4
  np.testing.assert_array_equal(observations.from_demo(5, HW).frames[0], observations.demo_image(HW))
  cams = json.load(open(out / "cameras.json"))["frames"]
  assert len(cams) == 5 and all(np.shape(c["K"]) == (3, 3) and np.shape(c["c2w"]) == (4, 4) for c in cams)
  for name in ("rgb.mp4", "xyz.mp4", "depth.mp4"):
    assert media.read_video(str(out / name), range(100)).shape == (5, *HW, 3), name
  assert len(read_ply(str(out / "scene.ply"))["vertex"]) == scene.depth_valid.sum() > 0
  assert len(read_ply(str(out / "cameras.ply"))["vertex"]) == 5 * 5
  with pytest.raises(ValueError, match="--demo runs the tiny variant"):
    gen.generate(one4d_config_lib.get_config("variant=1.3b"), str(tmp_path / "x"), demo=True)
  with pytest.raises(ValueError, match="give one input, found --image and --demo"):
    gen.generate(tiny(), str(tmp_path / "x"), demo=True, image="a.png")


def test_a_folder_of_plain_images_is_reconstructed_without_cameras(inputs, tmp_path, monkeypatch, load_once):
  """No cameras.json, no depth: frames 1, 3, 5, 7, 9 of 1.png .. 10.png (natural order), all observed."""
  monkeypatch.setattr(pipeline, "load", load_once)
  assert not os.path.exists(inputs / "folder" / "cameras.json")
  out = tmp_path / "out"
  scene = gen.generate(tiny(), str(out), video=str(inputs / "folder"), start=1, stride=2, progress=False, **FAST)
  assert scene.observed.all() and scene.source.tolist() == [1, 3, 5, 7, 9]
  assert np.load(out / "depth.npz")["source_index"].tolist() == [1, 3, 5, 7, 9]
  assert [c["source_index"] for c in json.load(open(out / "cameras.json"))["frames"]] == [1, 3, 5, 7, 9]
  assert "frames 1, 3, ..., 9 (every 2) of its 10 images" in (out / "summary.txt").read_text()


def test_text_only_generates_from_nothing(tmp_path, monkeypatch, load_once):
  monkeypatch.setattr(pipeline, "load", load_once)
  out = tmp_path / "out"
  scene = gen.generate(tiny(), str(out), progress=False, **FAST)
  assert not scene.observed.any() and (scene.source == -1).all() and sorted(os.listdir(out)) == sorted(export.FILES)
  assert "text-to-4D" in (out / "summary.txt").read_text()


def test_garbage_is_refused_and_nothing_is_written(inputs, tmp_path, monkeypatch):
  """Pointmaps without a plausible point (NaN) never reach the writers: an error, and no OUT."""
  bad = pipeline.Sample(np.zeros((5, *HW, 3), np.uint8), np.full((5, *HW, 3), np.nan, np.float32),
                        np.zeros((5, *HW), bool), [(0, 5)])
  monkeypatch.setattr(pipeline, "load", lambda c, workdir="", lora="": None)
  monkeypatch.setattr(pipeline, "sample_clip", lambda *a, **k: bad)
  with pytest.raises(ValueError, match="no plausible point"):
    gen.generate(tiny(), str(tmp_path / "out"), image=str(inputs / "image.png"), progress=False, **FAST)
  assert not os.path.exists(tmp_path / "out")
  scene = export.make_scene(np.zeros((2, 4, 6, 3), np.uint8), np.zeros((2, 4, 6, 3)), np.ones((2, 4, 6), bool),
                            -np.ones((2, 4, 6)), np.stack([np.eye(3)] * 2), np.stack([np.eye(4)] * 2),
                            np.ones(2, bool), np.arange(2))
  with pytest.raises(ValueError, match="no pixel has a valid depth"):
    export.check_scene(scene)
  with pytest.raises(FloatingPointError, match="non-finite K"):
    export.check_scene(scene._replace(K=np.full((2, 3, 3), np.nan)))
  with pytest.raises(FloatingPointError, match="implausible focal length 0.0002.*image widths"):
    export.check_scene(scene._replace(K=np.stack([np.diag([0.0012, 0.0012, 1.0])] * 2)))


# (extra arguments, what the one error line says); {d} is the inputs folder
BAD_INPUTS = [
    (["--image={d}/missing.png"], "does not exist"),
    (["--image={d}/broken.png"], "is not a readable image"),
    (["--video={d}/broken.mp4"], "is not a readable video"),
    (["--video={d}/missing.mp4"], "does not exist"),
    (["--video={d}/empty"], "holds no image files"),
    (["--video={d}/folder", "--start=10"], "--start=10 is past the end"),
    (["--video={d}/folder", "--num_frames=9", "--stride=2"], "has only 5 frames"),
    (["--frames={d}/image.png,{d}/image.png", "--indices=2,2"], "strictly increasing"),
    (["--frames={d}/image.png,{d}/image.png", "--indices=0,5"], r"must lie in 0..4"),
    (["--frames={d}/image.png,{d}/image.png", "--indices=0"], "one index per image"),
    (["--frames={d}/image.png", "--indices=x"], "whole numbers"),
    (["--frames={d}/image.png"], "--frames and --indices go together"),
    (["--image={d}/image.png", "--video={d}/folder"], "give one input"),
    (["--image={d}/image.png", "--stride=2"], "pick frames of --video"),
    (["--workdir={d}", "--lora={d}/x.safetensors"], "not both"),
    (["--lora={d}/x.safetensors"], "x.safetensors does not exist"),
    (["--lora={d}/image.png"], "is not a readable safetensors file"),
    (["--workdir={d}/no_run"], "does not exist"),
    (["--workdir={d}/empty"], "no checkpoint"),
    (["--height=40"], "multiples of 16"),
    (["--prompt=a kitchen"], "needs a text encoder"),
    (["--image={d}/image.png", "--num_frames=0", "--video="], None),  # 0 = the config's: valid, for contrast
]


def _kwargs(args: list[str], d) -> dict:
  """Command-line arguments -> generate()'s keywords, as launch.generate.main passes them."""
  kw = {}
  for arg in args:
    name, value = arg[2:].format(d=d).split("=", 1)
    if name in ("frames", "indices"):
      kw[name] = value.split(",")
    elif name in ("start", "stride", "num_frames", "height"):
      kw[name] = int(value)
    else:
      kw[name] = value
  return kw


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_each_bad_input_is_one_line_naming_it_before_any_model_loads(inputs, tmp_path, monkeypatch, args, message):
  def load(*_):
    raise AssertionError("reached model loading")

  monkeypatch.setattr(pipeline, "load", load)
  kw = {**FAST, **_kwargs(args, inputs)}
  if message is None:  # a good request gets as far as loading
    with pytest.raises(AssertionError, match="reached model loading"):
      gen.generate(tiny(), str(tmp_path / "out"), progress=False, **kw)
    return
  with pytest.raises(cli.USER_ERRORS, match=message) as e:
    gen.generate(tiny(), str(tmp_path / "out"), progress=False, **kw)
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "out")


def test_sampler_flag_is_checked_before_any_model_loads_and_named_in_the_sampling_line(inputs, tmp_path,
                                                                                      monkeypatch):
  class Sampled(Exception):
    pass

  def sample_clip(model, frames, observed, prompt, negative_prompt, sc, *_):
    raise Sampled(sc)

  def load(*_):
    raise AssertionError("reached model loading")

  monkeypatch.setattr(pipeline, "load", load)
  image = str(inputs / "image.png")
  with pytest.raises(ValueError, match="unknown sampler 'rk4'; choose one of euler, unipc, dpmpp") as e:
    gen.generate(tiny(), str(tmp_path / "out"), image=image, sampler="rk4", progress=False, **FAST)
  assert "\n" not in str(e.value)
  monkeypatch.setattr(pipeline, "load", lambda c, workdir="", lora="": None)
  monkeypatch.setattr(pipeline, "sample_clip", sample_clip)
  with pytest.raises(Sampled) as e:
    gen.generate(tiny(), str(tmp_path / "out"), image=image, sampler="unipc", **{**FAST, "steps": 3})
  assert e.value.args[0].describe() == "3 UniPC steps, guidance 6, shift 5"  # the 'sampling:' line


def test_an_existing_out_is_refused_before_anything_is_read(tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    gen.generate(tiny(), str(tmp_path / "out"), image=str(tmp_path / "missing.png"), progress=False)


def test_the_command_line_prints_one_error_line_exits_2_and_never_loads(inputs, tmp_path):
  """The real command, three bad inputs side by side: exit 2, stderr exactly `error: ...`, no `loading:`."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  cases = [["--image=missing.png"], [f"--video={inputs}/broken.mp4"],
           [f"--frames={inputs}/image.png", "--indices=7"]]
  runs = [subprocess.Popen([sys.executable, "-m", "launch.generate", "--config=configs/one4d.py:variant=tiny",
                            f"--out={tmp_path}/out{i}", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i, args in enumerate(cases)]
  results = [(r.wait(timeout=300), *r.communicate()) for r in runs]
  for (code, stdout, stderr), expected in zip(results, ["does not exist", "not a readable video", "0..4"]):
    assert code == 2, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ") and expected in stderr, stderr
    assert "loading:" not in stdout


def test_video_files_and_folders_give_the_frames_asked_for(inputs):
  mp4 = observations.from_video(str(inputs / "clip.mp4"), HW, num_frames=0, start=2, stride=3, default_frames=5)
  assert mp4.source.tolist() == [2, 5, 8] and mp4.frames.shape == (3, *HW, 3) and mp4.observed.all()
  assert np.abs(mp4.frames[..., 0].mean((1, 2)).astype(float) - [40, 100, 160]).max() < 6  # red = 20 x number
  assert "frames 2, 5, 8 of its video" in mp4.notes[0] and "48x64 (HxW) cover-resized to 36x48" in mp4.notes[1]
  folder = observations.from_video(str(inputs / "folder"), HW, default_frames=81)  # shorter than 81: all of it
  assert folder.source.tolist() == list(range(10))
  np.testing.assert_array_equal(folder.frames[:, 0, 0, 0], 20 * np.arange(1, 11))  # 1.png, 2.png, ..., 10.png
  assert observations.from_video(str(inputs / "folder"), HW, num_frames=3, start=4).source.tolist() == [4, 5, 6]


def test_sparse_frames_land_at_their_indices_whatever_their_sizes(inputs, tmp_path):
  Image.fromarray(numbered_image(5, (96, 96))).save(tmp_path / "square.png")
  obs = observations.from_frames([str(inputs / "image.png"), str(tmp_path / "square.png")], [1, 8], 9, HW)
  assert np.flatnonzero(obs.observed).tolist() == [1, 8] and obs.source.tolist() == [-1, 0] + [-1] * 6 + [1]
  assert obs.frames[8, 0, 0, 0] == 100 and not obs.frames[0].any()
  assert "40x60 (HxW)" in obs.notes[1] and "96x96 (HxW)" in obs.notes[1]
  assert observations.length_note(9, 81) == "frames: 9 = 1 + 4k, one window"
  assert "padded to 9 with 2 copies of the last frame" in observations.length_note(7, 81)
  assert "3 overlapping windows" in observations.length_note(200, 81)


def test_depth_colours_are_viridis_with_near_bright():
  matplotlib = pytest.importorskip("matplotlib")
  t = np.linspace(0, 1, 257)
  assert np.abs(export.viridis(t).astype(float) - 255 * matplotlib.colormaps["viridis"](t)[:, :3]).max() < 6
  depth = np.array([[[1.0, 2.0, 4.0, 8.0, -1.0]]])
  colours = export.depth_colours(depth, np.ones_like(depth, bool)).astype(float)
  lightness = colours[0, 0].sum(-1)
  assert (np.diff(lightness[:4]) < 0).all() and lightness[4] == 0  # nearer is brighter; invalid (z < 0) black
  np.testing.assert_array_equal(export.xyz_colours(np.array([[-1.0, 0.0, 1.0]])), [[0, 128, 255]])


def test_frusta_apex_is_the_centre_and_corners_project_to_the_image_corners():
  K = np.array([[[50.0, 0, 23.5], [0, 50.0, 15.5], [0, 0, 1]]] * 2)
  c2w = np.stack([np.eye(4)] * 2)
  c2w[1, :3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
  c2w[1, :3, 3] = [1.0, 2.0, 3.0]
  vertices, triangles, edges = export.camera_frusta(K, c2w, HW, size=0.5)
  np.testing.assert_allclose(vertices[[0, 5]], c2w[:, :3, 3])
  local = (vertices[6:10] - c2w[1, :3, 3]) @ c2w[1, :3, :3]  # back into camera 1
  uv, z = pm.project(local, K[1])
  np.testing.assert_allclose(z, 0.5)
  np.testing.assert_allclose(uv, [[-0.5, -0.5], [47.5, -0.5], [47.5, 31.5], [-0.5, 31.5]], atol=1e-9)
  assert triangles.max() == edges.max() == 9 and len(triangles) == 8 and len(edges) == 16
