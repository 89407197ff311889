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


def test_bad_flags_and_configs_are_one_error_line_with_status_2(tmp_path):
  """Parsing failures absl and ml_collections report as tracebacks or 'FATAL' blocks: one line, exit status 2; a
  run refused for bad data leaves no run folder behind."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  cases = {("--bogus=1",): "Unknown command line flag 'bogus'",
           ("--config=configs/one4d.py:variant=tiny", "--config.data.bogus=3"): "--config.data.bogus: the config has no",
           ("--config=configs/one4d.py:variant=tiny", "--config.data.height=abc"): "--config.data.height=abc",
           ("--config=configs/one4d.py:variant=huge",): "unknown variant 'huge'",
           ("--config=configs/missing.py",): "No such file or directory: 'configs/missing.py'",
           ("--config=configs/one4d.py:variant=tiny", f"--workdir={tmp_path}/run", "--config.data.paths=('x',)",
            "--config.data.format=sevenscenes"): "x is neither a sevenscenes clip"}
  runs = {args: subprocess.Popen([sys.executable, "-m", "launch.train", *args], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in cases}
  for args, proc in runs.items():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(stderr.strip().splitlines()) == 1, (args, stderr[-2000:])
    assert stderr.startswith("error: ") and cases[args] in stderr, (args, stderr)
  assert not os.path.exists(tmp_path / "run")
