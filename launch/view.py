"""Look at a generated 4D scene in the browser: launch.generate's OUT served by viser.

  python -m launch.view out/kitchen [--port=8080] [--point_size=0.01] [--stride=4] [--shown=8] [--max_points=50000]

Open the printed URL. Each frame's coloured points (the valid depth through the frame's camera), one frame at a time
on a timeline (frame slider, play, fps); `frames shown` keeps that many frames on screen, `frame stride` apart, to
build up the static scene; every frame's camera is a frustum holding its image (the current one red), the camera
path a line through their centres. World = frame 0's camera (OpenCV axes; shown with -y up). OUT is checked before
the server starts; Ctrl-C stops it.
"""

from absl import flags

from launch import cli
from one4d_jax import export, viewer


def define_flags():
  """Command-line flags, defined only when run as a program."""
  flags.DEFINE_string("host", "127.0.0.1", "address to serve on (0.0.0.0: reachable from other machines)")
  flags.DEFINE_integer("port", 8080, "port to serve on (the next free one if taken; 0: any free one)")
  flags.DEFINE_float("point_size", 0.0, "point size in scene units (0: about the gap between points)")
  flags.DEFINE_integer("stride", 1, "frames between those shown at once (GUI: frame stride)")
  flags.DEFINE_integer("shown", 1, "frames shown at once: the current one and those before it (GUI: frames shown)")
  flags.DEFINE_integer("max_points", 50_000, "points per frame at most (an even random subset)")
  flags.DEFINE_float("fps", 8.0, "frames a second while playing")


def main(argv):
  if len(argv) != 2:
    raise ValueError(f"give one OUT folder (launch.generate's --out), got {len(argv) - 1}: python -m launch.view OUT")
  f = flags.FLAGS
  if f.point_size < 0 or f.stride < 1 or f.shown < 1 or f.max_points < 1 or not 1 <= f.fps <= 30:
    raise ValueError("--point_size must be >= 0, --stride, --shown and --max_points >= 1, --fps in 1..30")
  scene = export.read_scene(argv[1])
  viewer.serve(scene, f.host, f.port, point_size=f.point_size, stride=f.stride, shown=f.shown,
               max_points=f.max_points, fps=f.fps)


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
