"""Train every point of a config's sweep, one after another here, or print one command per point for a scheduler.

  python -m launch.sweep --config=configs/one4d.py:variant=tiny --workdir_root=runs/sweep [--print_only] \\
      [--config.data.paths='("data/clips",)' ...]

The config file's `sweep(add)` calls `add(**{"train.lr": 3e-4, "one4d.lora_rank": 16})` once per point (big_vision
style). Every point is checked before anything runs: each key must name a field of the config, each value must have
its type, and the config with the point's overrides must build (train, data, sample and model sections). A point
trains in WORKDIR_ROOT/<name>, the name being its overrides (`train.lr=0.0003,one4d.lora_rank=16`), as
`python -m launch.train --config=... --workdir=... --config.<key>=<value> ...` in a subprocess, so its flags are
parsed exactly as on the command line; `--config.*` overrides given here go to every point. A point already trained
resumes at its last checkpoint (and stops at once when done); a failing point does not stop the others, and the exit
status is 1 if any failed.
"""

import copy
import importlib.util
import os
import shlex
import subprocess
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from launch import cli


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args] with a sweep(add)")
  flags.DEFINE_string("workdir_root", None, "each point trains in WORKDIR_ROOT/<its overrides>")
  flags.DEFINE_bool("print_only", False, "print one launch.train command per point instead of running them")


def sweep_points(config_file: str) -> list[dict]:
  """The overrides `sweep(add)` of the config file (path[:args]) adds, in order."""
  path = config_file.split(":", 1)[0]
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} has no sweep(add) function")
  points = []
  module.sweep(lambda **overrides: points.append(overrides))
  if not points:
    raise ValueError(f"the sweep of {path} adds no point")
  return points


def override(c: ml_collections.ConfigDict, key: str, value) -> None:
  """c.<key> = value for an existing dotted key, else an error naming it and what its section holds."""
  *parents, leaf = key.split(".")
  node, where = c, "config"
  for part in parents + [leaf]:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      keys = ", ".join(node.keys()) if isinstance(node, ml_collections.ConfigDict) else "no keys"
      raise ValueError(f"unknown key {key!r}: {where} has {keys}")
    if part != leaf:
      node, where = node[part], f"{where}.{part}"
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f"{key}={value!r}: {e}") from None


def flag_value(value) -> str:
  """`value` as `--config.key=` parses it back: strings as they are, anything else as its Python literal."""
  return value if isinstance(value, str) else repr(value)


def point_name(overrides: dict) -> str:
  """The point's folder name: its overrides, `key=value` joined by commas (no path separators)."""
  return ",".join(f"{k}={flag_value(v)}" for k, v in overrides.items()).replace(os.sep, "_")


def check_point(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """The config with the point's overrides, every dataclass it describes built once (a bad key or value is named)."""
  from one4d_jax import pipeline
  c = copy.deepcopy(c)
  for key, value in overrides.items():
    override(c, key, value)
  pipeline.train_config(c, 1)
  pipeline.pipeline_config(c, 1)
  pipeline.sampler_config(c)
  pipeline.model_config(c)
  return c


def commands(config_file: str, base: dict, points: list[dict], workdir_root: str, python: str) -> dict:
  """{point name: its launch.train command}; `base` overrides go to every point (the point's own win)."""
  out = {}
  for overrides in points:
    name = point_name(overrides)
    if name in out:
      raise ValueError(f"the sweep adds the point {name!r} twice")
    settings = [f"--config.{k}={flag_value(v)}" for k, v in {**base, **overrides}.items()]
    out[name] = [python, "-m", "launch.train", f"--config={config_file}",
                 f"--workdir={os.path.join(workdir_root, name)}", *settings]
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    if not f.workdir_root:
      raise ValueError("--workdir_root is required")
    config_file, base = f["config"].config_filename, dict(f["config"].override_values)
    points = sweep_points(config_file)
    for i, overrides in enumerate(points):
      try:
        check_point(f.config, overrides)
      except ValueError as e:
        raise ValueError(f"sweep point {i} ({point_name(overrides)}): {e}") from None
    runs = commands(config_file, base, points, f.workdir_root, "python" if f.print_only else sys.executable)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if f.print_only:
    print("\n".join(shlex.join(cmd) for cmd in runs.values()))
    return 0
  failed = []
  for i, (name, cmd) in enumerate(runs.items()):
    print(f"sweep point {i + 1}/{len(runs)}: {name}", flush=True)
    if subprocess.run(cmd).returncode:
      failed.append(name)
  print(f"sweep: {len(runs) - len(failed)} of {len(runs)} points trained"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
