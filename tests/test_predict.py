"""launch.predict then launch.evaluate, end to end: a random tiny model over the shared 7-Scenes clip, sampled in
overlapping windows, post-optimised into one trajectory, mapped back onto the dataset's pixels and scored."""

import json
import os

import numpy as np
import pytest

from configs import one4d as one4d_config_lib
from one4d_jax.eval import protocol
from one4d_jax.eval import report as eval_report
from one4d_jax.sample import SamplerConfig


def test_predictions_line_up_with_the_dataset_and_evaluate_to_finite_metrics(shared_dir, tmp_path):
  from launch import predict
  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  c = one4d_config_lib.get_config("variant=tiny")  # 5-frame windows at 64 x 96
  pred = tmp_path / "pred"
  report = predict.predict(c, "", data, "sevenscenes", str(pred), task="sparse", sparsity=0.5, frames="0:12",
                           sc=SamplerConfig(steps=2, guidance=1.0), postopt_iters=5, progress=False)
  (name, seq), = report.items()
  assert seq["windows"] == [[0, 5], [4, 5], [7, 5]] and seq["observed"] == 6
  z = np.load(pred / f"{name}.npz")
  f = 12
  assert z["depth"].shape == z["valid"].shape == (f, 480, 640)  # the dataset's pixels, not the model's
  assert z["c2w"].shape == (f, 4, 4) and z["K"].shape == (f, 3, 3)
  np.testing.assert_array_equal(z["frame_index"], np.arange(f))
  # 640 x 480 cover-resized to 96 x 72 and cropped to 96 x 64: 4 rows of 72 cut at the top and bottom
  rows = z["valid"][0].any(axis=1)
  assert not rows[:20].any() and not rows[-20:].any() and rows[40:440].all() and z["valid"][0].any(axis=0).all()
  assert np.all(np.isfinite(z["depth"])) and (z["depth"][z["valid"]] > 0).all() and not z["depth"][~z["valid"]].any()
  assert np.all(np.isfinite(z["c2w"])) and np.all(np.isfinite(z["K"]))
  # post-optimisation puts the principal point at (W / 2, H / 2) of the model's frame (MonST3R's): half a model pixel
  # (3.3 dataset pixels) from the centre of the dataset's image
  np.testing.assert_allclose(z["K"][0, :2, 2], [319.5 + 0.5 / 0.15, 239.5 + 0.5 / 0.15], atol=1e-3)
  settings = json.loads((pred / "predict.json").read_text())["settings"]
  assert settings["task"] == "sparse" and settings["max_frames"] == 5

  settings = lambda frames: protocol.Settings("sevenscenes", predictions=str(pred), sparsity=0.5, frames=frames)
  results = protocol.evaluate(data, settings("0:12"), progress=False)
  eval_report.write(str(tmp_path / "eval"), results)  # its plots and table take a real prediction
  row = results.sequences[name]
  assert row.frames == f and row.valid_pixels < f * 480 * 640  # only the model's crop is scored
  assert all(np.isfinite(row.metrics[k]) for k in protocol.METRICS)
  with pytest.raises(ValueError, match="predicted for other frames"):
    protocol.evaluate(data, settings("1:13"), progress=False)


def test_bad_inputs_are_named_before_any_model_loads(shared_dir, tmp_path):
  from launch import predict
  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  c = one4d_config_lib.get_config("variant=tiny")
  with pytest.raises(ValueError, match="--task must be full_video or sparse"):
    predict.predict(c, "", data, "sevenscenes", str(tmp_path / "a"), task="single_image")
  with pytest.raises(ValueError, match="selects none"):
    predict.predict(c, "", data, "sevenscenes", str(tmp_path / "a"), frames="100:200")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    predict.predict(c, str(tmp_path / "no-run"), data, "sevenscenes", str(tmp_path / "a"))
  with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
    predict.predict(c, "", data, "sevenscenes", str(tmp_path / "a"), lora=str(tmp_path / "missing.safetensors"))
  (tmp_path / "taken").mkdir()
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    predict.predict(c, "", data, "sevenscenes", str(tmp_path / "taken"))
  assert not (tmp_path / "a").exists()
