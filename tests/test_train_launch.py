"""launch.train on the real 7-Scenes clip (tiny model, random tiny VAE): it trains, checkpoints, and a resumed run
ends exactly where an uninterrupted one does (same trainable tree, same optimiser state, same batches)."""

import json
import os

import jax
import numpy as np
import pytest

from configs import one4d as one4d_config_lib
from launch import train


def config(data: str, steps: int):
  c = one4d_config_lib.get_config("variant=tiny")
  c.data.format, c.data.paths = "sevenscenes", (data,)
  c.data.height, c.data.width = 32, 48
  c.train.steps, c.train.checkpoint_every, c.train.log_every, c.train.warmup_steps, c.train.lr = steps, 2, 1, 1, 1e-2
  return c


def latest_state(workdir: str):
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  step = manager.latest_step()
  return step, manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def test_training_checkpoints_and_resumes_exactly(shared_dir, tmp_path):
  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  metrics = train.run(config(data, 3), straight, progress=False)
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  train.run(config(data, 2), resumed, progress=False)  # stops after its checkpoint at step 2 ...
  train.run(config(data, 3), resumed, progress=False)  # ... and this run takes over from it
  (step_a, a), (step_b, b) = latest_state(straight), latest_state(resumed)
  assert step_a == step_b == 3
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  lines = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  assert [m["step"] for m in lines] == [1, 2, 3] and all(np.isfinite(m["loss"]) for m in lines)
  resumed_lines = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
  np.testing.assert_allclose(resumed_lines[-1]["loss"], lines[-1]["loss"], rtol=1e-5)  # the same third batch


def test_missing_weights_and_data_are_named(tmp_path):
  c = one4d_config_lib.get_config("variant=1.3b")
  with pytest.raises(ValueError, match="needs config.model.checkpoint"):
    train.run(c, str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="config.data.paths is empty"):
    train.open_clips("clipfolder", ())
