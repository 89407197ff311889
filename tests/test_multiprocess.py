"""Multi-process training on one machine: 2 processes x 4 CPU devices (gloo collectives) train exactly as 1 process
with 8 devices does on the same global batches in the same order, and a checkpoint written by 2 processes resumes
in 1 process on another mesh."""

import json
import os
import sys

import numpy as np
import pytest

from configs import one4d as one4d_config_lib
from launch import local_cluster
from launch import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def overrides(data: str, steps: int, batch: int, **mesh) -> dict:
  values = {"data.format": "sevenscenes", "data.paths": (data,), "data.height": 32, "data.width": 48,
            "train.batch_size": batch, "train.steps": steps, "train.checkpoint_every": 2, "train.log_every": 1,
            "train.warmup_steps": 1, "train.lr": 1e-2}
  values.update({f"mesh.{k}": v for k, v in mesh.items()})
  return values


def config(values: dict):
  c = one4d_config_lib.get_config("variant=tiny")
  for key, value in values.items():
    section, field = key.split(".")
    setattr(getattr(c, section), field, value)
  return c


def losses(workdir: str) -> list[float]:
  return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_processes_train_like_one_and_their_checkpoint_resumes_on_another_mesh(shared_dir, tmp_path):
  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")

  # 1 process, 8 devices (this test session's), global batch 2 over fsdp 2 x tensor 4: 3 steps
  train.run(config(overrides(data, 3, 2, fsdp=2, tensor=4)), single, progress=False)

  # 2 processes x 4 devices (process p holds fsdp row p), 1 example each, the same global batches: 2 steps
  command = [sys.executable, "-m", "launch.train", "--config=configs/one4d.py:variant=tiny", f"--workdir={multi}"]
  command += [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
              for k, v in overrides(data, 2, 2, fsdp=2, tensor=4).items()]
  env = {**os.environ, "PYTHONPATH": ROOT}
  status = local_cluster.run(command, num_processes=2, devices_per_process=4, env=env)
  assert status == 0
  np.testing.assert_allclose(losses(multi), losses(single)[:2], rtol=1e-5)

  # resume the 2-process checkpoint (step 2) in 1 process on another mesh, for the 3rd step
  train.run(config(overrides(data, 3, 2, fsdp=2, context=4)), multi, progress=False)
  np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)


def test_local_cluster_reports_a_failing_process(tmp_path):
  script = tmp_path / "fail.py"
  script.write_text("import sys\nargs = dict(a.split('=') for a in sys.argv[1:])\n"
                    "sys.exit(3 if args['--process_id'] == '1' else 0)\n")
  assert local_cluster.run([sys.executable, str(script)], num_processes=2, devices_per_process=1) == 3


def test_distributed_flags_are_checked_before_anything_starts():
  from one4d_jax import runtime
  with pytest.raises(ValueError, match="needs --coordinator=HOST:PORT, --num_processes and --process_id"):
    runtime.initialize(coordinator="localhost:1234")
  with pytest.raises(ValueError, match="not both"):
    runtime.initialize(cluster=True, num_processes=2)
  with pytest.raises(ValueError, match=r"--process_id=2 is not in \[0, --num_processes=2\)"):
    runtime.initialize(coordinator="localhost:1234", num_processes=2, process_id=2)


PREEMPTED_LOOP = """
import os, signal, sys, time
from absl import app, flags
from launch import cli
from one4d_jax.train import faults
cli.define_distributed_flags()

def main(argv):
  cli.start_runtime(flags.FLAGS)
  import jax
  with faults.Preemption() as preemption:
    for step in range(1, 200):
      time.sleep(0.05)  # a training step
      if step == 5 and jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's notice reaches one process
      if preemption.requested(step):
        print(f"stopping at step {step}", flush=True)
        return
  sys.exit("never stopped")

app.run(main)
"""


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tmp_path, capfd):
  """Preemption in a multi-process run: the coordination service propagates one process's SIGTERM, and every
  process stops at the one step reached_preemption_sync_point agrees on (then launch.train saves it)."""
  script = tmp_path / "loop.py"
  script.write_text(PREEMPTED_LOOP)
  status = local_cluster.run([sys.executable, str(script)], num_processes=2, devices_per_process=1,
                             env={**os.environ, "PYTHONPATH": ROOT})
  out = capfd.readouterr().out
  assert status == 0, out
  stops = sorted(line.split("] ", 1)[1] for line in out.splitlines() if "stopping at step" in line)
  assert len(stops) == 2 and stops[0] == stops[1], out
  assert int(stops[0].split()[-1]) >= 5
