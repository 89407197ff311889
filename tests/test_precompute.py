"""Precomputed encodings (one4d_jax.data.precomputed, launch.precompute): batches built from them equal the batches
encoded on the fly for the same global elements (same windows, order, tasks; latents, validity, condition, text and
CLIP within fp32 tolerance), a rerun finishes what an interrupted one left, and training from them gives the losses of
training on the fly."""

import dataclasses
import json
import os

import grain
import jax
import numpy as np
import pytest

from one4d_jax import umc
from one4d_jax.data import open_clip, pipeline, precomputed
from one4d_jax.models.wan import clip as clip_lib
from one4d_jax.models.wan import t5 as t5_lib
from one4d_jax.models.wan import tokenizer as tokenizer_lib
from one4d_jax.train import inputs

TASK_PROBS = (("single_image", 0.3), ("sparse", 0.3), ("full_video", 0.2), ("text", 0.2))
CONFIG = pipeline.PipelineConfig(num_frames=5, frame_stride=7, window_step=7, height=32, width=48, batch_size=1,
                                 seed=5, task_probs=TASK_PROBS, normalize_quantile=0.99)
IDENTITY = {"test": "library level"}


def test_every_task_that_observes_a_frame_observes_frame_0():
  """Why frame 0's CLIP features stand for every example's first observed frame."""
  for num_frames in (5, 9, 21, 81):
    for task in umc.TASKS:
      for sparsity in np.linspace(0.01, 1.0, 100) if task == "sparse" else (None,):
        observed = umc.observed_frames(task, num_frames, sparsity)
        assert observed[0] or not observed.any(), (task, num_frames, sparsity)


@pytest.fixture(scope="module")
def encoders():
  """The random tiny VAE, with a tiny random umT5 (and a character tokenizer) and CLIP, so text and image features
  are not zero."""
  vae = inputs.load_encoders("", text_dim=32, image_dim=32, random_tiny=True, rng=jax.random.key(2))
  t5_cfg, clip_cfg = t5_lib.preset("tiny"), clip_lib.preset("tiny")
  tokenizer = tokenizer_lib.Tokenizer(lambda text: [2 + ord(ch) % 300 for ch in text][:11] + [1], pad_id=0, text_len=16)
  init = lambda lib, cfg, seed: jax.jit(lib.init, static_argnums=0)(cfg, jax.random.key(seed))  # faster than eager
  return inputs.Encoders(vae.vae_cfg, vae.vae, t5_cfg.dim, clip_cfg.dim, t5_cfg, init(t5_lib, t5_cfg, 3), tokenizer,
                         clip_cfg, init(clip_lib, clip_cfg, 4))


@pytest.fixture(scope="module")
def sources():
  """The shared 7-Scenes clip (5 windows of 5 frames at stride 7, one every 7 frames) and the office clip (1), weights
  2 and 1 (an epoch: 4 of the 5 kitchen windows, the office window twice), with captions."""
  shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
  if not os.path.isdir(shared):
    pytest.skip("../shared is not present")
  kitchen = open_clip("sevenscenes", os.path.join(shared, "data", "sevenscenes_redkitchen_60f"))
  office = open_clip("align3d", os.path.join(shared, "data", "rgbd_office_31f_align3d"))
  kitchen = dataclasses.replace(kitchen, caption="a kitchen counter")
  office = dataclasses.replace(office, caption="an office desk, seen from the side")
  return [pipeline.Source("kitchen", (kitchen,), 2.0), pipeline.Source("office", (office,), 1.0)]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, sources, encoders):
  out = str(tmp_path_factory.mktemp("encoded"))
  plan = precomputed.plan(sources, CONFIG, out, IDENTITY, windows_per_shard=2)
  done = precomputed.write_shards(encoders, plan, progress=False)
  assert done == {"written": [0, 1, 2], "skipped": []} and len(plan.rows) == 6
  return out


def test_precomputed_batches_equal_batches_encoded_on_the_fly(encoded, sources, encoders):
  """Global batches 2..4 (crossing into the second epoch): the same elements, windows and tasks, frames exact, the
  step's batch within fp32 tolerance, for both hosts of two."""
  pre = precomputed.open_dir(encoded, IDENTITY)
  for host in range(2):
    stored = pipeline.make_iterator(precomputed.make_dataset(pre, CONFIG, host, 2, first_batch=2, last_batch=5))
    fly = pipeline.make_iterator(pipeline.make_dataset(sources, CONFIG, host, 2, first_batch=2))
    tasks = set()
    for _ in range(3):
      a, b = next(stored), next(fly)
      for key in ("index", "task", "observed", "valid", "scale", "K", "c2w", "caption"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
      np.testing.assert_array_equal(a["frames"].astype(np.float32) / 127.5 - 1.0, b["frames"])
      tasks |= {umc.TASKS[t] for t in a["task"]}
      got, want = inputs.precomputed_batch(encoders, a), inputs.model_batch(encoders, b)
      assert set(got) == set(want) == {"rgb", "xyz", "xyz_valid", "cond", "text", "clip"}
      for key in want:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-5, atol=1e-5, err_msg=key)
      assert np.abs(np.asarray(want["text"])).max() > 0.1
    assert len(tasks) > 1


def shard_records(path: str) -> list[dict]:
  records = grain.sources.ArrayRecordDataSource([path])
  return [precomputed.decode_record(records[i]) for i in range(len(records))]


def test_a_rerun_skips_complete_shards_and_redoes_a_partial_one(encoded, sources, encoders):
  plan = precomputed.plan(sources, CONFIG, encoded, IDENTITY, windows_per_shard=2)
  last = precomputed.shard_path(encoded, 2, 3)
  before = shard_records(last)
  os.remove(last)
  with open(f"{last}.tmp", "wb") as f:
    f.write(b"an interrupted write")
  with pytest.raises(ValueError, match=r"incomplete: 1 of 3 shards missing \(first: 2\)"):
    precomputed.open_dir(encoded)
  assert precomputed.write_shards(encoders, plan, 1, 2, progress=False) == {"written": [], "skipped": [1]}
  assert precomputed.write_shards(encoders, plan, 0, 2, progress=False) == {"written": [2], "skipped": [0]}
  assert not os.path.exists(f"{last}.tmp")
  for a, b in zip(before, shard_records(last), strict=True):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_another_configuration_is_refused(encoded, sources):
  with pytest.raises(ValueError, match=r"another configuration \(pipeline.height: 32 there, 64 here\)"):
    precomputed.plan(sources, dataclasses.replace(CONFIG, height=64), encoded, IDENTITY, windows_per_shard=2)
  with pytest.raises(ValueError, match=r"precomputed from another configuration \(test: 'library level' there"):
    precomputed.open_dir(encoded, {"test": "another"})
  with pytest.raises(ValueError, match="other pipeline settings"):
    precomputed.PrecomputedSource(precomputed.open_dir(encoded), dataclasses.replace(CONFIG, width=64), 2)
  with pytest.raises(ValueError, match="need centred crops"):
    precomputed.plan(sources, dataclasses.replace(CONFIG, random_crop=True), encoded, IDENTITY)


def test_encodings_of_the_first_steps_serve_those_steps_and_refuse_more(tmp_path, sources, encoders):
  out = str(tmp_path / "encoded")
  plan = precomputed.plan(sources, CONFIG, out, IDENTITY, steps=1, global_batch=2, windows_per_shard=2)
  assert len(plan.rows) <= 2 and precomputed.write_shards(encoders, plan, progress=False)["written"] == [0]
  pre = precomputed.open_dir(out)
  first = precomputed.PrecomputedSource(pre, CONFIG, 2, 0, 2)
  assert all(first[i]["record"]["window"] in plan.rows for i in range(2))
  with pytest.raises(ValueError, match=r"first 1 batches of 2 .* elements \[0, 12\) of global batches of 2 need"):
    precomputed.PrecomputedSource(pre, CONFIG, 2, 0, 12)


def tiny_config(data: str, steps: int):
  from configs import one4d as one4d_config_lib
  c = one4d_config_lib.get_config("variant=tiny")
  c.data.format, c.data.paths, c.data.frame_stride = "sevenscenes", (data,), 7
  c.data.height, c.data.width = 32, 48
  c.mesh.fsdp, c.mesh.tensor = 2, 4  # batch 2: one example per data-parallel device
  c.train.steps, c.train.checkpoint_every, c.train.log_every, c.train.warmup_steps, c.train.lr = steps, 2, 1, 1, 1e-2
  return c


def test_training_from_precomputed_encodings_gives_the_losses_of_training_on_the_fly(shared_dir, tmp_path):
  """launch.precompute of the windows a 2-step run draws (of the 32 the clip holds at stride 7), then launch.train
  from them (the VAE alone loaded): the losses of training on the fly."""
  from launch import precompute, train
  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  out = str(tmp_path / "encoded")
  done = precompute.run(tiny_config(data, 2), out, steps=2, global_batch=2, windows_per_shard=2, progress=False)
  assert done["windows"] == 32 and done["stored"] <= 4 and len(done["written"]) == done["shards"]
  losses = {}
  for name, c in (("fly", tiny_config(data, 2)), ("stored", tiny_config(data, 2))):
    if name == "stored":
      c.data.precomputed = out
    train.run(c, str(tmp_path / name), progress=False)
    losses[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
  assert len(losses["fly"]) == 2
  np.testing.assert_allclose(losses["stored"], losses["fly"], rtol=1e-5)
