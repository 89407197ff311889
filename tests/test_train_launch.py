"""launch.train on the real 7-Scenes clip (tiny model, random tiny VAE): it trains, checkpoints, and a resumed run
ends exactly where an uninterrupted one does (same trainable tree, same optimiser state, same batches)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import one4d as one4d_config_lib
from launch import train
from one4d_jax import pipeline


def config(data: str, steps: int):
  c = one4d_config_lib.get_config("variant=tiny")
  c.data.format, c.data.paths = "sevenscenes", (data,)
  c.data.height, c.data.width = 32, 48
  c.mesh.fsdp, c.mesh.tensor = 2, 4  # batch 2: one example per data-parallel device
  c.train.steps, c.train.checkpoint_every, c.train.log_every, c.train.warmup_steps, c.train.lr = steps, 2, 1, 1, 1e-2
  return c


def latest_state(workdir: str):
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  step = manager.latest_step()
  return step, manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, kitchen_clip):
  """(data, the workdir of a 2-step run): it stops after its checkpoint at step 2. Tests copy it to write into it."""
  data = kitchen_clip
  workdir = str(tmp_path_factory.mktemp("two_steps"))
  train.run(config(data, 2), workdir, progress=False)
  return data, workdir


def test_training_checkpoints_and_resumes_exactly(two_steps, tmp_path):
  data, stopped = two_steps
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  metrics = train.run(config(data, 3), straight, progress=False)
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  shutil.copytree(stopped, resumed)
  train.run(config(data, 3), resumed, progress=False)  # takes over from the 2-step run's checkpoint
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
    pipeline.training_clips("clipfolder", ())


def test_generate_from_a_trained_run_writes_frames_pointmaps_and_cameras(two_steps, tmp_path):
  """The inference path end to end at tiny size: the LoRA of a 2-step training run (--workdir), two frames of the
  real clip observed at frames 0 and 4 (sparse), 2 guided Euler steps, VAE decoding, post-optimisation, an atomic
  output folder."""
  from launch import generate
  from one4d_jax import export

  data, workdir = two_steps
  c = config(data, 2)
  # restored onto another mesh, the tiny variant's: with 10 post-optimisation iterations, the programs test_generate
  # compiles (one compilation cache for the session)
  c.mesh.fsdp, c.mesh.tensor = -1, 1
  images = [os.path.join(data, f"frame-{i:06d}.color.jpg") for i in (100, 130)]
  out = tmp_path / "out"
  scene = generate.generate(c, str(out), frames=images, indices=["0", "4"], workdir=workdir, steps=2,
                            postopt_iters=10, progress=False)
  f, h, w = c.data.num_frames, c.data.height, c.data.width
  assert scene.frames.shape == (f, h, w, 3) and scene.frames.dtype == np.uint8
  assert scene.pointmaps.shape == (f, h, w, 3) and scene.depth.shape == (f, h, w)
  assert scene.c2w.shape == (f, 4, 4) and scene.K.shape == (f, 3, 3)
  assert scene.observed.tolist() == [True, False, False, False, True] and scene.source.tolist() == [0, -1, -1, -1, 1]
  assert all(np.all(np.isfinite(x)) for x in (scene.K, scene.c2w, scene.depth[scene.depth_valid]))
  assert sorted(os.listdir(out)) == sorted(export.FILES)
  assert f"the newest checkpoint of {workdir}" in (out / "summary.txt").read_text()
  with pytest.raises(ValueError, match="needs a text encoder"):
    generate.generate(c, str(tmp_path / "text"), prompt="a kitchen", workdir=workdir, progress=False)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
  """frozen_params loads config.model.checkpoint and compares its architecture with the config's preset."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from checkpoints_convert import core, wan_dit
  from one4d_jax import pipeline, sharding
  from one4d_jax.models.wan import dit

  torch.manual_seed(0)
  tiny = dit.preset("tiny")
  diffusers.WanTransformer3DModel(**wan_dit.diffusers_kwargs(tiny.replace(num_layers=3))).save_pretrained(
      str(tmp_path / "src"))
  core.convert("dit", str(tmp_path / "src"), str(tmp_path / "dit"), dtype="fp32", progress=False)
  c = one4d_config_lib.get_config("variant=tiny")
  c.model.checkpoint = str(tmp_path / "dit")
  with pytest.raises(ValueError, match="holds a different architecture.*num_layers=3"):
    pipeline.frozen_params(c, pipeline.model_config(c), sharding.make_mesh(**c.mesh))


def test_the_default_recipe_is_the_papers_32_clips_per_step_in_micro_batches_spanning_the_devices():
  from one4d_jax import pipeline, sharding
  c = one4d_config_lib.get_config("variant=14b")
  assert (c.train.batch_size, c.train.steps, c.train.lr) == (32, 5_500, 1e-4)
  rules = pipeline.sharding_rules(c)
  plan = lambda **mesh: pipeline.batch_plan(c, sharding.make_mesh(**mesh), rules)
  assert plan(fsdp=8, context=1) == (32, 4)  # the paper: 8 devices x 1 clip x accumulation 4
  assert plan(fsdp=4, context=2) == (32, 8)  # two devices share a clip: 8 micro-batches of 4
  assert plan(data=2, fsdp=4, context=1) == (32, 4)
  c.train.accum_steps = 2
  assert plan(fsdp=8, context=1) == (32, 2)  # micro-batches of 16: 2 clips per device
  c.train.batch_size = 30
  with pytest.raises(ValueError, match=r"batch_size=30 does not split into accum_steps=2 micro-batches over 8"):
    plan(fsdp=8, context=1)
  tiny = one4d_config_lib.get_config("variant=tiny")
  assert pipeline.batch_plan(tiny, sharding.make_mesh(fsdp=8), rules) == (8, 1)  # one clip per device, no accumulation
