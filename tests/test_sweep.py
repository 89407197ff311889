"""launch.sweep: one launch.train command per point of a config's sweep(add), every point checked before any runs."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import one4d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep(*args):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "launch.sweep", *args], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)


def parse(argv):
  """The config launch.train would see for these command-line flags."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=["prog", *argv])
  fv(["prog", *argv])
  return fv.config


def test_print_only_gives_one_train_command_per_point_that_parses_to_the_point(tmp_path):
  points = []
  one4d.sweep(lambda **overrides: points.append(overrides))
  root = str(tmp_path / "runs")
  out = sweep("--config=configs/one4d.py:variant=tiny", f"--workdir_root={root}", "--print_only",
              "--config.train.steps=7", "--config.data.paths=('data/my clips',)")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == len(points) == 4
  for line, overrides in zip(lines, points):
    cmd = shlex.split(line)
    name = ",".join(f"{k}={v!r}" for k, v in overrides.items())
    assert cmd[:5] == ["python", "-m", "launch.train", "--config=configs/one4d.py:variant=tiny",
                       f"--workdir={root}/{name}"]
    c = parse([cmd[3], *cmd[5:]])  # --config and its overrides, as launch.train parses them
    assert c.train.steps == 7 and c.data.paths == ("data/my clips",)
    for key, value in overrides.items():
      section, field = key.split(".")
      assert c[section][field] == value
  assert not os.path.exists(root)


@pytest.mark.parametrize("point,message", [
    ({"train.lrr": 1e-3}, r"sweep point 1 \(train.lrr=0.001\): unknown key 'train.lrr': config.train has .*\blr\b"),
    ({"sample.steps": 0}, r"sweep point 1 \(sample.steps=0\): steps must be >= 1"),
])
def test_a_bad_point_is_named_before_any_point_runs(tmp_path, point, message):
  config = tmp_path / "my_sweep.py"
  config.write_text("from configs.one4d import get_config  # noqa: F401\n\n\n"
                    f"def sweep(add):\n  add(**{{'train.lr': 1e-4}})\n  add(**{point!r})\n")
  root = tmp_path / "runs"
  out = sweep(f"--config={config}:variant=tiny", f"--workdir_root={root}")  # not --print_only: would train
  error = out.stderr.strip().splitlines()[-1]
  assert out.returncode == 2 and error.startswith("error: ") and re.search(message, error), out.stderr[-2000:]
  assert not root.exists() and "sweep point 1/" not in out.stdout  # point 0 (good) did not start either
