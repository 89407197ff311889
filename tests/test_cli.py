"""A user's first command: `--help` of every absl launcher exits 0 and lists its flags and its config's fields."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("launcher, flag", [("train", "--workdir"), ("generate", "--image"), ("plan", "--what"),
                                            ("summary", "--config"), ("predict", "--protocol"),
                                            ("sweep", "--workdir_root"), ("precompute", "--steps"),
                                            ("export_lora", "--step")])
def test_help_exits_zero_and_lists_flags_and_config_fields(launcher, flag):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", f"launch.{launcher}", "--help"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"  {flag}:" in out.stdout and "--config.train.batch_size=32" in out.stdout
  assert "--config.model.preset='fun-inp-14b'" in out.stdout and "--grain_" not in out.stdout
