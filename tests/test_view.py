"""launch.view: launch.generate's OUT read back (`export.read_scene`) and served by viser (`viewer.show`): a point
cloud and a frustum per frame posed by its camera, the camera path, a timeline that picks the visible frame; a bad
OUT is one error line before any server starts; Ctrl-C stops the server and frees its port. No model is built:
scenes are synthetic, written by `export.write_scene`."""

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import viser
from scipy.spatial.transform import Rotation

from one4d_jax import export, viewer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F, H, W = 4, 6, 8


def synthetic_scene() -> export.Scene:
  """4 frames of 6x8 pixels: cameras turning about y and x while moving (no rotation is its own transpose), depth
  from 1 to 2, the last column of every frame invalid, frame colours saying the frame index."""
  rng = np.random.default_rng(0)
  depth = rng.uniform(1.0, 2.0, (F, H, W)).astype(np.float32)
  valid = np.ones((F, H, W), bool)
  valid[..., -1] = False
  K = np.stack([[[9.0 + i, 0, (W - 1) / 2], [0, 8.0 + i, (H - 1) / 2], [0, 0, 1]] for i in range(F)])
  c2w = np.stack([np.eye(4)] * F)
  c2w[:, :3, :3] = Rotation.from_euler("yx", [[20.0 * i, -7.0 * i] for i in range(F)], degrees=True).as_matrix()
  c2w[:, :3, 3] = [[0.3 * i, -0.1 * i, 0.05 * i * i] for i in range(F)]
  pointmaps = export.world_points(depth, K, c2w)
  frames = np.zeros((F, H, W, 3), np.uint8)
  frames[..., 0] = 60 * np.arange(F)[:, None, None]
  return export.make_scene(frames, pointmaps, valid, depth, K, c2w, np.arange(F) == 0, np.arange(F))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  folder = tmp_path_factory.mktemp("out")
  export.write_scene(str(folder), synthetic_scene(), ["synthetic"])
  return str(folder)


@pytest.fixture
def server():
  s = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
  yield s
  s.stop()


def port_is_free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
      return True
    except OSError:
      return False


def test_read_scene_gives_back_the_scene_written(out):
  written, read = synthetic_scene(), export.read_scene(out)
  for name in ("frames", "pointmaps", "valid", "depth_valid", "K", "c2w", "observed", "source"):
    np.testing.assert_array_equal(getattr(read, name), getattr(written, name), err_msg=name)
  np.testing.assert_array_equal(read.depth[read.depth_valid], written.depth[written.depth_valid])
  np.testing.assert_allclose(read.c2w[0], np.eye(4), atol=1e-12)  # world = frame 0's camera


def test_read_scene_names_what_is_wrong(out, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
    export.read_scene(str(tmp_path / "nothing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"pointmaps.npz is missing: .* is not a launch.generate output"):
    export.read_scene(str(tmp_path / "empty"))
  broken = tmp_path / "broken"
  broken.mkdir()
  os.link(os.path.join(out, "pointmaps.npz"), broken / "pointmaps.npz")
  (broken / "depth.npz").write_text("not an archive")
  with pytest.raises(ValueError, match="depth.npz is not as launch.generate writes it"):
    export.read_scene(str(broken))
  arrays = dict(np.load(os.path.join(out, "depth.npz")))
  np.savez(broken / "depth.npz", **{k: v for k, v in arrays.items() if k != "c2w"})
  with pytest.raises(ValueError, match="depth.npz is not as launch.generate writes it.*c2w"):
    export.read_scene(str(broken))
  np.savez(broken / "depth.npz", **{**arrays, "K": arrays["K"][:-1]})
  with pytest.raises(ValueError, match=r"not a usable launch.generate output: scene arrays disagree.*K \(3, 3, 3\)"):
    export.read_scene(str(broken))
  np.savez(broken / "depth.npz", **{**arrays, "c2w": np.full_like(arrays["c2w"], np.nan)})
  with pytest.raises(ValueError, match="non-finite c2w"):
    export.read_scene(str(broken))


def test_show_puts_a_cloud_and_a_posed_frustum_per_frame_and_the_path(out, server):
  scene = export.read_scene(out)
  h = viewer.show(server, scene, max_points=1000)
  nodes = server.scene._handle_from_node_name  # what the server holds, independent of the returned handles
  assert {f"/frames/{i}/points" for i in range(F)} | {f"/cameras/{i}" for i in range(F)} <= set(nodes)
  assert len(h.clouds) == len(h.frusta) == F
  for i in range(F):
    valid = scene.depth_valid[i]
    expected = export.world_points(scene.depth[i:i + 1], scene.K[i:i + 1], scene.c2w[i:i + 1])[0][valid]
    cloud = nodes[f"/frames/{i}/points"]
    assert len(cloud.points) == valid.sum() == H * (W - 1)
    np.testing.assert_allclose(np.asarray(cloud.points, np.float32), expected, atol=5e-3)  # sent as float16
    np.testing.assert_array_equal(cloud.colors, scene.frames[i][valid])

    frustum = nodes[f"/cameras/{i}"]
    np.testing.assert_allclose(frustum.position, scene.c2w[i, :3, 3], atol=1e-6)
    w, x, y, z = frustum.wxyz
    np.testing.assert_allclose(Rotation.from_quat([x, y, z, w]).as_matrix(), scene.c2w[i, :3, :3], atol=1e-6)
    # viser's frusta look along their +z (OpenCV): the frame's own points lie ahead of its frustum, around its axis
    local = (expected - frustum.position) @ Rotation.from_quat([x, y, z, w]).as_matrix()
    assert (local[:, 2] > 0.9).all()
    np.testing.assert_allclose(frustum.fov, 2 * np.arctan(H / 2 / scene.K[i, 1, 1]))
    np.testing.assert_allclose(frustum.aspect, (W / scene.K[i, 0, 0]) / (H / scene.K[i, 1, 1]))
    assert frustum.image.shape == (H, W, 3)

  segments = np.asarray(nodes["/path"].points)
  np.testing.assert_allclose(segments[:, 0], scene.c2w[:-1, :3, 3], atol=1e-6)
  np.testing.assert_allclose(segments[:, 1], scene.c2w[1:, :3, 3], atol=1e-6)


def test_the_timeline_picks_the_frames_shown(out, server):
  h = viewer.show(server, export.read_scene(out), max_points=1000)
  visible = lambda: [i for i, c in enumerate(h.clouds) if c.visible]
  current = lambda: [i for i, c in enumerate(h.frusta) if tuple(c.color) == viewer.CURRENT]
  assert visible() == [0] and current() == [0]
  h.time.value = 2
  assert visible() == [2] and current() == [2]
  h.shown.value = 3
  assert visible() == [0, 1, 2]
  h.stride.value = 2
  assert visible() == [0, 2]
  h.point_size.value = h.point_size.value * 2
  assert {c.point_size for c in h.clouds} == {h.point_size.value}
  h.shown.value = 1
  viewer.advance(h, F)  # paused: stays
  assert h.time.value == 2
  h.playing.value = True
  viewer.advance(h, F)
  assert h.time.value == 3 and visible() == [3]
  viewer.advance(h, F)
  assert h.time.value == 0 and visible() == [0]


def test_stopping_the_server_frees_its_port(out):
  s = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
  viewer.show(s, export.read_scene(out), max_points=100)
  port = s.get_port()
  assert port > 0 and not port_is_free(port)
  s.stop()
  assert port_is_free(port)


def run_view(*args):
  return subprocess.run([sys.executable, "-m", "launch.view", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "PYTHONPATH": ROOT}, check=False)


def test_help_exits_0_and_lists_the_flags():
  r = run_view("--help")
  assert r.returncode == 0, r.stderr
  for flag in ("--port", "--point_size", "--stride", "--shown", "--max_points"):
    assert flag in r.stdout


def test_a_bad_out_is_one_error_line_before_any_server(tmp_path):
  r = run_view(str(tmp_path), "--port=0")  # a folder, but not a launch.generate output
  assert r.returncode != 0
  assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr
  assert "pointmaps.npz is missing" in r.stderr and "is not a launch.generate output" in r.stderr, r.stderr
  assert "viewer:" not in r.stdout and "viser" not in r.stdout + r.stderr  # no server was started


def test_the_command_serves_until_ctrl_c_then_exits_0_and_frees_the_port(out):
  p = subprocess.Popen([sys.executable, "-m", "launch.view", out, "--port=0"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
  try:
    lines = iter(p.stdout.readline, "")  # viser's banner, then ours
    port = int(next(m for m in map(re.compile(r"^viewer: http://127.0.0.1:(\d+) ").match, lines) if m).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
      assert page.status == 200
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 0, p.stderr.read()
  finally:
    if p.poll() is None:
      p.kill()
  assert "viewer: stopped" in p.stdout.read()
  assert port_is_free(port)
