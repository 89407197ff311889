"""Faults of a long run (one4d_jax/train/faults.py), on launch.train with the tiny model and the real 7-Scenes clip:
kill -9 during a step and during an asynchronous save, SIGTERM, a diverged step, a corrupted newest checkpoint, and
the metrics a run leaves (TensorBoard scalars, previews)."""

import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import one4d as one4d_config_lib
from launch import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def overrides(data: str, steps: int = STEPS) -> dict:
  return {"data.format": "sevenscenes", "data.paths": (data,), "data.height": 32, "data.width": 48, "mesh.fsdp": 2,
          "mesh.tensor": 4, "train.steps": steps, "train.checkpoint_every": 2, "train.log_every": 1,
          "train.warmup_steps": 1, "train.lr": 1e-2}


def config(data: str, steps: int = STEPS, **extra):
  c = one4d_config_lib.get_config("variant=tiny")
  for key, value in {**overrides(data, steps), **extra}.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def command(data: str, workdir: str) -> list[str]:
  flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in overrides(data).items()]
  return [sys.executable, "-m", "launch.train", "--config=configs/one4d.py:variant=tiny", f"--workdir={workdir}", *flags]


def start(data: str, workdir: str) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  return subprocess.Popen(command(data, workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def logged(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 600) -> None:
  end = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}")
    if time.time() > end:
      proc.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.005)


def finish(proc: subprocess.Popen) -> str:
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, kitchen_clip):
  """An uninterrupted run, steps 1..STEPS, with a preview at the end: (data, its workdir, its losses)."""
  data = kitchen_clip
  workdir = str(tmp_path_factory.mktemp("straight"))
  train.run(config(data, **{"train.preview_every": STEPS, "train.preview_steps": 1}), workdir, progress=False)
  return data, workdir, [m["loss"] for m in logged(workdir)]


def stopped_at(straight: str, step: int, tmp_path) -> str:
  """The workdir a run of `step` steps leaves (its checkpoints and log lines), copied from the reference run rather
  than trained again. The copied lines are tagged `copied`: a resumed run keeps them, one that starts over drops them."""
  workdir = tmp_path / "run"
  for kept in range(2, step + 1, 2):
    shutil.copytree(os.path.join(straight, "checkpoints", str(kept)), workdir / "checkpoints" / str(kept))
  with open(os.path.join(straight, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f.readlines()[:step]]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps({**m, "copied": True}) + "\n" for m in lines))
  return str(workdir)


def test_sigterm_then_kill_9_in_a_step_then_kill_9_in_an_async_save_and_the_losses_are_the_uninterrupted_ones(
    reference, tmp_path):
  """One run interrupted three ways, resumed each time by the same command: SIGTERM saves the step it stopped at and
  exits 0; kill -9 during step 4; kill -9 while orbax writes checkpoint 4 (or 6) in the background (its temporary folder
  exists: the half-written folder is not a checkpoint). The log ends with each step once and the reference losses."""
  data, _, losses = reference
  workdir = str(tmp_path / "run")
  checkpoints = os.path.join(workdir, "checkpoints")

  proc = start(data, workdir)
  wait_for(proc, lambda: len(logged(workdir)) >= 1, "step 1")
  proc.send_signal(signal.SIGTERM)
  out = finish(proc)  # exit status 0
  stopped = len(logged(workdir))
  assert f"preempted (SIGTERM): saved step {stopped}" in out and stopped < 4
  assert os.path.isdir(os.path.join(checkpoints, str(stopped)))  # saved where it stopped

  proc = start(data, workdir)
  wait_for(proc, lambda: len(logged(workdir)) >= max(3, stopped + 1), "a step after the resumed one")
  proc.send_signal(signal.SIGKILL)
  proc.wait()

  proc = start(data, workdir)
  saving = lambda: len(logged(workdir)) >= 4 and any("tmp" in name for name in os.listdir(checkpoints))
  wait_for(proc, saving, "checkpoint 4 (or 6) being written")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.isdir(os.path.join(checkpoints, str(STEPS)))

  finish(start(data, workdir))
  lines = logged(workdir)
  assert [m["step"] for m in lines] == list(range(1, STEPS + 1))  # each step once: none repeated, none skipped
  np.testing.assert_allclose([m["loss"] for m in lines], losses, rtol=1e-5)


def test_a_diverged_step_stops_naming_it_and_keeps_the_last_good_checkpoint(reference, tmp_path):
  data, straight, _ = reference
  workdir = stopped_at(straight, 2, tmp_path)
  with pytest.raises(FloatingPointError, match=r"step 3 diverged \(.*param_norm=nan.*Newest checkpoint: step 2"):
    train.run(config(data, steps=4, **{"train.lr": float("nan")}), workdir, progress=False)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def test_a_corrupted_newest_checkpoint_is_skipped_for_the_one_before(reference, tmp_path):
  data, straight, losses = reference
  workdir = stopped_at(straight, 4, tmp_path)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "4", "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"not a checkpoint")
  with pytest.warns(UserWarning, match="checkpoint 4 does not restore"):
    train.run(config(data), workdir, progress=False)
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints"))[0].startswith("4-")
  lines = logged(workdir)
  assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
  assert [m.get("copied", False) for m in lines] == [True, True] + [False] * (STEPS - 2)  # resumed at checkpoint 2
  np.testing.assert_allclose([m["loss"] for m in lines], losses, rtol=1e-5)


def tensorboard_tags(workdir: str) -> set[str]:
  """Tags of the TensorBoard event files (TFRecord framing: length, CRC, Event proto, CRC)."""
  from tensorboardX.proto import event_pb2
  tags = set()
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
    data, i = open(path, "rb").read(), 0
    while i < len(data):
      n = struct.unpack("<Q", data[i:i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      tags |= {v.tag for v in event.summary.value}
      i += 16 + n
  return tags


def test_metrics_reach_tensorboard_and_previews_are_written(reference):
  _, workdir, _ = reference
  tags = tensorboard_tags(workdir)
  assert {"loss", "loss_rgb", "loss_xyz", "grad_norm", "lr", "step_time_s", "clips_per_s", "tflops_per_device"} <= tags
  assert {"preview/rgb", "preview/xyz", "preview/depth"} <= tags
  from PIL import Image
  for name in ("rgb", "xyz", "depth"):
    image = np.asarray(Image.open(os.path.join(workdir, "previews", f"{STEPS:08d}", f"{name}.png")))
    assert image.shape == (32, 3 * 48, 3) and image.std() > 0  # three frames side by side, not blank
