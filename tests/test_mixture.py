"""The training mixture: each source's share of every epoch follows its weight (not its size), the epoch's counts are
fixed and its draw deterministic, a weight-0 source is never read, bad weights are named errors, each global batch
keeps one window length, and config.data.mixture (command-line overrides included) reaches the pipeline."""

import collections
import dataclasses
import sys
from unittest import mock

import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import one4d as one4d_config_lib
from one4d_jax import pipeline
from one4d_jax.data import ClipRecord, open_clip, write_clipfolder
from one4d_jax.data.pipeline import (
  PipelineConfig,
  Source,
  WindowSource,
  make_dataset,
  make_iterator,
)

CONFIG = PipelineConfig(num_frames=5, height=4, width=6, batch_size=1, seed=3, num_epochs=3)


def _record(num_frames: int, seed: int) -> ClipRecord:
  """A tiny clip whose camera x position names its frame (1 + frame index / 1000)."""
  rng = np.random.default_rng(seed)
  c2w = np.tile(np.eye(4), (num_frames, 1, 1))
  c2w[:, 0, 3] = 1 + np.arange(num_frames) / 1000
  K = np.tile(np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]]), (num_frames, 1, 1))
  depth = rng.uniform(1.0, 3.0, (num_frames, 6, 8)).astype(np.float32)
  frames = rng.integers(0, 256, (num_frames, 6, 8, 3), dtype=np.uint8)
  return ClipRecord(frames, depth, np.ones_like(depth, bool), K, c2w, "a test clip", "synthetic", "syn")


def _clips(root, prefix: str, frame_counts) -> tuple:
  return tuple(open_clip("clipfolder", write_clipfolder(str(root / f"{prefix}{n}"), _record(f, seed=n)))
               for n, f in enumerate(frame_counts))


def _epochs(source: WindowSource, epochs: int):
  """Per epoch, the (clip name, first frame, frames) of every element in order."""
  size = len(source) // epochs
  rows = [source[i]["record"] for i in range(len(source))]
  keys = [(r.name, round((r.c2w[0, 0, 3] - 1) * 1000), len(r.depth)) for r in rows]
  return [keys[e * size:(e + 1) * size] for e in range(epochs)]


@pytest.fixture
def small_and_large(tmp_path):
  """Source `a`: 10 windows of 5 frames (one 14-frame clip); source `b`: 40 (one 44-frame clip)."""
  return _clips(tmp_path, "a", [14]), _clips(tmp_path, "b", [44])


def test_equal_weights_give_equal_shares_of_every_epoch_whatever_the_sizes(small_and_large):
  a, b = small_and_large
  source = WindowSource([Source("a", a, 1.0), Source("b", b, 1.0)], CONFIG)
  assert len(source) == 3 * 50  # as many windows per epoch as both sources hold
  epochs = _epochs(source, 3)
  for epoch in epochs:
    drawn = collections.Counter(name[0] for name, _, _ in epoch)
    assert drawn == {"a": 25, "b": 25}
    small = collections.Counter(k for k in epoch if k[0].startswith("a"))
    assert len(small) == 10 and set(small.values()) == {2, 3}  # every window of a, each 2 or 3 times
    assert len({k for k in epoch if k[0].startswith("b")}) == 25  # 25 different windows of b: no repeats
  assert len({tuple(sorted(e)) for e in epochs}) == 3  # b's subset (and a's extras) are drawn afresh each epoch


@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 9.0), (0.25, 0.75)])
def test_shares_follow_the_weights(small_and_large, weights):
  a, b = small_and_large
  epoch = _epochs(WindowSource([Source("a", a, weights[0]), Source("b", b, weights[1])], CONFIG), 3)[1]
  share = sum(name.startswith("a") for name, _, _ in epoch) / len(epoch)
  assert len(epoch) == 50 and abs(share - weights[0] / sum(weights)) <= 1 / 50


def test_weights_proportional_to_size_read_exactly_what_the_plain_clip_list_reads(small_and_large):
  """Weights 10:40 give each window once per epoch: the same stream, element for element, as the clips alone."""
  a, b = small_and_large
  mixed = WindowSource([Source("a", a, 1.0), Source("b", b, 4.0)], CONFIG, group=2)
  plain = WindowSource(list(a + b), CONFIG, group=2)
  assert _epochs(mixed, 3) == _epochs(plain, 3)


def test_the_mixture_is_deterministic_per_seed_and_resumes_at_any_batch(small_and_large):
  a, b = small_and_large
  sources = [Source("a", a, 2.0), Source("b", b, 1.0)]
  assert _epochs(WindowSource(sources, CONFIG), 3) == _epochs(WindowSource(sources, CONFIG), 3)
  other = dataclasses.replace(CONFIG, seed=4)
  assert _epochs(WindowSource(sources, other), 3) != _epochs(WindowSource(sources, CONFIG), 3)
  stream = list(make_iterator(make_dataset(sources, CONFIG, 0, 1)))
  resumed = list(make_iterator(make_dataset(sources, CONFIG, 0, 1, first_batch=60)))
  assert len(stream) == 150 and len(resumed) == 90
  for x, y in zip(stream[60:], resumed):
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_a_source_of_weight_0_is_never_read(small_and_large):
  a, b = small_and_large
  source = WindowSource([Source("a", a, 1.0), Source("b", b, 0.0), Source("c", (), 0.0)], CONFIG)
  assert len(source) == 3 * 10  # the epoch is a's windows alone
  assert all(name.startswith("a") for epoch in _epochs(source, 3) for name, _, _ in epoch)


def test_bad_weights_and_sources_are_errors_naming_the_source(small_and_large):
  a, b = small_and_large
  for weight in (-1.0, float("nan"), float("inf"), "heavy"):
    with pytest.raises(ValueError, match=r"source 'b': weight must be a finite number >= 0"):
      WindowSource([Source("a", a), Source("b", b, weight)], CONFIG)
  with pytest.raises(ValueError, match="no source has a positive weight"):
    WindowSource([Source("a", a, 0.0), Source("b", b, 0.0)], CONFIG)
  with pytest.raises(ValueError, match="source names must be unique"):
    WindowSource([Source("a", a), Source("a", b)], CONFIG)
  with pytest.raises(ValueError, match=r"source 'b': no clip is long enough for 5 frames"):
    WindowSource([Source("a", a), Source("b", ())], CONFIG)


def test_every_global_batch_has_one_length_and_each_epoch_the_same_counts_per_source_and_length(tmp_path):
  """`a` holds 5 windows of 9 frames and 3 of 5, `b` 4 of each; weights 1:2 give a 16 / 3 of the 16 windows, split
  over lengths as its own (2 of 5, 3 of 9), and b the rest (6 and 5: more than it holds). The counts are the same
  every epoch (8 per length: no group is filled up), and groups of 4 never mix lengths."""
  sources = [Source("a", _clips(tmp_path, "a", [13, 7]), 1.0), Source("b", _clips(tmp_path, "b", [8, 12]), 2.0)]
  config = PipelineConfig(num_frames=9, height=4, width=6, batch_size=2, seed=5, num_epochs=3)
  source = WindowSource(sources, config, group=4)
  epochs = _epochs(source, 3)
  for epoch in epochs:
    counts = collections.Counter((name[0], length) for name, _, length in epoch)
    assert counts == {("a", 5): 2, ("a", 9): 3, ("b", 5): 6, ("b", 9): 5}
    assert all(len({length for _, _, length in epoch[g:g + 4]}) == 1 for g in range(0, len(epoch), 4))
  hosts = [make_iterator(make_dataset(sources, config, p, 2)) for p in range(2)]
  for _ in range(len(source) // 4):
    x, y = next(hosts[0]), next(hosts[1])
    assert x["frames"].shape[2] == y["frames"].shape[2]


# ------------------------------------------------------------------------------------------------ launch.train
def _parse(config: ml_collections.ConfigDict, *overrides: str) -> ml_collections.ConfigDict:
  """The config after command-line overrides, as launch.train's --config flag applies them (config_flags finds the
  override flags in sys.argv)."""
  argv = ["train", *overrides]
  values = flags.FlagValues()
  with mock.patch.object(sys, "argv", argv):
    config_flags.DEFINE_config_dict("config", config, flag_values=values)
    values(argv)
  return values.config


def _folder(tmp_path, prefix: str, frame_counts) -> str:
  _clips(tmp_path / prefix, prefix, frame_counts)
  return str(tmp_path / prefix)


def test_config_mixture_and_its_command_line_overrides_reach_the_pipeline(tmp_path):
  a, b = _folder(tmp_path, "a", [14]), _folder(tmp_path, "b", [44])
  c = one4d_config_lib.get_config("variant=tiny")
  c.data.mixture.a = ml_collections.ConfigDict(dict(format="clipfolder", paths=(a,), weight=1.0))
  c.data.mixture.b = ml_collections.ConfigDict(dict(format="clipfolder", paths=(b,), weight=1.0))
  sources = pipeline.training_sources(_parse(c, "--config.data.mixture.b.weight=3.0").data)
  assert [(s.name, len(s.clips), s.weight) for s in sources] == [("a", 1, 1.0), ("b", 1, 3.0)]
  assert pipeline.describe_sources(sources, CONFIG) == [
      "source a: 1 clips, 10 windows, weight 1, 26.0% of each epoch (13 windows)",
      "source b: 1 clips, 40 windows, weight 3, 74.0% of each epoch (37 windows)"]
  left_out = pipeline.training_sources(_parse(c, "--config.data.mixture.b.weight=0.0").data)
  assert left_out[1].clips == () and pipeline.describe_sources(left_out, CONFIG)[1] == "source b: left out (weight 0)"
  literal = f"{{'x': {{'format': 'clipfolder', 'paths': ('{a}',), 'weight': 2}}}}"  # the whole mixture as a literal
  sources = pipeline.training_sources(_parse(one4d_config_lib.get_config("variant=tiny"),
                                          f"--config.data.mixture={literal}").data)
  assert [(s.name, len(s.clips), s.weight) for s in sources] == [("x", 1, 2.0)]


def test_an_empty_mixture_is_the_single_source_of_format_and_paths(tmp_path):
  c = one4d_config_lib.get_config("variant=tiny")
  assert len(c.data.mixture) == 0
  c.data.paths = (_folder(tmp_path, "a", [14, 9]),)
  [source] = pipeline.training_sources(c.data)
  assert (source.name, len(source.clips), source.weight) == ("data", 2, 1.0)
  c.data.paths = ()
  with pytest.raises(ValueError, match=r"config.data.paths is empty: give clip folders to train on$"):
    pipeline.training_sources(c.data)


def test_bad_mixture_entries_are_named_before_any_clip_opens(tmp_path):
  c = one4d_config_lib.get_config("variant=tiny")
  c.data.mixture.real = ml_collections.ConfigDict(dict(format="clipfolder", paths=("nowhere",), weight=1.0))
  c.data.mixture.synthetic = ml_collections.ConfigDict(dict(format="kitti", paths=("x",), weight=1.0))
  with pytest.raises(ValueError, match=r"config.data.mixture.synthetic.format='kitti' is not a clip format"):
    pipeline.training_sources(c.data)
  c.data.mixture.synthetic = ml_collections.ConfigDict(dict(format="clipfolder", paths=(), weight=1.0))
  with pytest.raises(ValueError, match=r"config.data.mixture.synthetic.paths is empty.*or weight 0"):
    pipeline.training_sources(c.data)
  c.data.mixture.synthetic = ml_collections.ConfigDict(dict(format="clipfolder", paths=("x",), weight=-1.0))
  with pytest.raises(ValueError, match=r"source 'synthetic': weight must be a finite number >= 0"):
    pipeline.training_sources(c.data)
  c.data.mixture.synthetic = ml_collections.ConfigDict(dict(format="clipfolder", paths=("x",), wieght=1.0))
  with pytest.raises(ValueError, match=r"config.data.mixture.synthetic must be a ConfigDict\(format=..."):
    pipeline.training_sources(c.data)
  c.data.mixture.synthetic = ml_collections.ConfigDict(dict(format="clipfolder", paths=(), weight=0.0))
  c.data.mixture.real.paths = (_folder(tmp_path, "a", [14]),)
  assert [(s.name, len(s.clips)) for s in pipeline.training_sources(c.data)] == [("real", 1), ("synthetic", 0)]
