"""A generated 4D scene (`export.Scene`, as `export.read_scene` reads launch.generate's OUT) in the browser, with
viser: each frame's coloured points, one frame (or a few) at a time on a timeline that plays, every frame's camera
as a frustum holding its image, and the camera path as a line. The world is frame 0's camera (OpenCV axes: x right,
y down, z forward), shown with -y up so the scene stands upright.

viser draws frusta in OpenCV's camera convention too, so a frame's pose is its camera-to-world as it is: the
rotation as a quaternion, the centre as the position.
"""

import time
from typing import NamedTuple

import numpy as np
import viser
import viser.transforms as vtf

from one4d_jax import export

CURRENT = (255, 40, 40)  # the frustum of the frame on the timeline


class Handles(NamedTuple):
  """What `show` put on the server: one point cloud and one frustum per frame, the path, and the GUI."""
  clouds: list  # [F] viser PointCloudHandle, node /frames/{i}/points
  frusta: list  # [F] viser CameraFrustumHandle, node /cameras/{i}
  path: object  # LineSegmentsHandle through the camera centres, frame order
  time: object  # slider: the frame on the timeline
  playing: object  # checkbox: the timeline advances by itself
  fps: object  # slider: frames a second while playing
  point_size: object  # slider
  shown: object  # slider: how many frames are shown at once
  stride: object  # slider: frames between those shown at once


def frustum_pose(K: np.ndarray, c2w: np.ndarray, hw: tuple[int, int]) -> tuple[float, float, np.ndarray, np.ndarray]:
  """A pinhole camera (K 3x3, camera-to-world 4x4 with OpenCV axes, image H x W) as viser's frustum: (vertical fov
  in radians, aspect = horizontal over vertical extent of the image plane, wxyz quaternion, position)."""
  h, w = hw
  fov = 2.0 * np.arctan2(h / 2.0, K[1, 1])
  aspect = (w / K[0, 0]) / (h / K[1, 1])
  return float(fov), float(aspect), vtf.SO3.from_matrix(c2w[:3, :3]).wxyz, np.asarray(c2w[:3, 3], np.float64)


def shown_frames(t: int, shown: int, stride: int) -> list[int]:
  """The frames visible at frame t: t and the `shown` - 1 before it, `stride` apart (a trail building up the
  static scene; 1 frame: only t)."""
  return [t - k * stride for k in range(max(shown, 1)) if t - k * stride >= 0]


def default_point_size(scene: export.Scene, max_points: int) -> float:
  """About the gap between neighbouring points at the typical depth: a pixel's footprint there, widened by the
  subsampling of `max_points`, so the cloud looks closed without smearing."""
  f = len(scene.depth)
  pixel = np.median(scene.depth[scene.depth_valid]) / np.median(scene.K[:, [0, 1], [0, 1]])
  kept = min(1.0, max_points / max(scene.depth_valid.sum() / f, 1.0))
  return float(1.5 * pixel / np.sqrt(kept))


def show(server: viser.ViserServer, scene: export.Scene, point_size: float = 0.0, stride: int = 1, shown: int = 1,
         max_points: int = 50_000, fps: float = 8.0) -> Handles:
  """Put the scene on a running server: per frame the valid depth's points (`export.scene_points`, at most
  `max_points` a frame) in the frame's colours; the frusta (viridis, first frame dark, the current one red) and the
  path; a timeline (slider, play, fps) and point size / frames shown / stride controls. point_size 0: automatic."""
  f, h, w = scene.depth.shape
  point_size = point_size or default_point_size(scene, max_points)
  server.scene.set_up_direction("-y")
  size = export.frustum_size(scene)
  colours = export.viridis(np.linspace(0.0, 1.0, f) if f > 1 else np.zeros(1))
  clouds, frusta = [], []
  for i in range(f):
    xyz, rgb = export.scene_points(scene.frames[i:i + 1], scene.depth[i:i + 1], scene.depth_valid[i:i + 1],
                                   scene.K[i:i + 1], scene.c2w[i:i + 1], 1, max_points)
    clouds.append(server.scene.add_point_cloud(f"/frames/{i}/points", xyz, rgb, point_size=point_size,
                                               point_shape="rounded", visible=i == 0))
    fov, aspect, wxyz, position = frustum_pose(scene.K[i], scene.c2w[i], (h, w))
    frusta.append(server.scene.add_camera_frustum(
        f"/cameras/{i}", fov, aspect, scale=size, thickness=size / 40, image=scene.frames[i], format="jpeg",
        wxyz=wxyz, position=position, color=CURRENT if i == 0 else tuple(int(c) for c in colours[i])))
  centres = scene.c2w[:, :3, 3]
  path = server.scene.add_line_segments("/path", np.stack([centres[:-1], centres[1:]], axis=1),
                                        np.repeat(colours[1:, None], 2, axis=1), thickness=size / 40)
  last = max(f - 1, 1)  # a slider needs max > min, even for a one-frame scene
  with server.gui.add_folder("Timeline"):
    t = server.gui.add_slider("frame", 0, last, 1, 0, disabled=f == 1)
    playing = server.gui.add_checkbox("play", False, disabled=f == 1)
    rate = server.gui.add_slider("fps", 1, 30, 1, fps)
  with server.gui.add_folder("Points"):
    size_slider = server.gui.add_slider("point size", point_size / 10, point_size * 5, point_size / 10, point_size)
    many = server.gui.add_slider("frames shown", 1, max(f, 2), 1, min(max(shown, 1), f))
    every = server.gui.add_slider("frame stride", 1, last, 1, min(max(stride, 1), last))
  handles = Handles(clouds, frusta, path, t, playing, rate, size_slider, many, every)

  def update(_=None):
    visible = set(shown_frames(min(int(t.value), f - 1), int(many.value), int(every.value)))
    for i, (cloud, frustum) in enumerate(zip(clouds, frusta)):
      cloud.visible = i in visible
      cloud.point_size = float(size_slider.value)
      frustum.color = CURRENT if i == int(t.value) else tuple(int(c) for c in colours[i])

  for control in (t, size_slider, many, every):
    control.on_update(update)
  update()
  d = float(np.median(scene.depth[scene.depth_valid]))
  server.initial_camera.look_at = (0.0, 0.0, d)
  server.initial_camera.position = (0.0, -0.5 * d, -d)  # behind and above frame 0's camera
  return handles


def advance(handles: Handles, count: int) -> None:
  """One tick of the timeline: the next frame (wrapping) while playing."""
  if handles.playing.value and count > 1:
    handles.time.value = (int(handles.time.value) + 1) % count


def serve(scene: export.Scene, host: str = "127.0.0.1", port: int = 8080, **options) -> None:
  """Serve the scene (`show` with `options`) until Ctrl-C, printing the URL; the server stops cleanly either way."""
  server = viser.ViserServer(host=host, port=port, verbose=False)
  try:
    handles = show(server, scene, **options)
    print(f"viewer: http://{'localhost' if host in ('0.0.0.0', '') else host}:{server.get_port()} "
          f"({len(scene.frames)} frames; Ctrl-C stops it)", flush=True)
    while True:
      time.sleep(1.0 / max(float(handles.fps.value), 1.0))
      advance(handles, len(scene.frames))
  except KeyboardInterrupt:
    print("viewer: stopped", flush=True)
  finally:
    server.stop()
