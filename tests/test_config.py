"""configs/one4d.py parses big_vision-style arguments, describes a buildable model for every variant, and holds every
field of the dataclasses it configures (one4d_jax.config_utils): each reachable from the command line, no key
unaccounted for."""

import dataclasses

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import one4d
from configs.common import parse_arg
from one4d_jax import config_utils, pipeline
from one4d_jax.data.pipeline import PipelineConfig
from one4d_jax.models import one4d as one4d_model
from one4d_jax.sample import SamplerConfig
from one4d_jax.train.step import TrainConfig


@pytest.mark.parametrize("variant,preset", [("tiny", "tiny"), ("1.3b", "fun-inp-1.3b"), ("14b", "fun-inp-14b")])
def test_every_variant_builds_its_dit_config(variant, preset):
  c = one4d.get_config(f"variant={variant},runlocal=True")
  cfg = pipeline.dit_config(c)
  assert c.model.preset == preset and cfg.in_dim == 36 and cfg.is_i2v


def test_default_is_the_papers_14b_model():
  cfg = pipeline.dit_config(one4d.get_config())
  assert (cfg.dim, cfg.num_layers, cfg.num_heads) == (5120, 40, 40) and cfg.policy.dtype == "bfloat16"


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown variant '7b'"):
    one4d.get_config("variant=7b")
  with pytest.raises(ValueError, match="unknown config argument 'varaint'"):
    one4d.get_config("varaint=14b")
  with pytest.raises(ValueError, match="not a boolean"):
    parse_arg("runlocal=maybe", runlocal=False)


def _parse(argv) -> ml_collections.ConfigDict:
  """The tiny config with command-line overrides, parsed as a launcher parses them."""
  argv = ["prog", "--config=configs/one4d.py:variant=tiny", *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=argv)  # overrides are found in argv
  fv(argv)
  return fv.config


def test_command_line_overrides_reach_the_config():
  c = _parse(["--config.model.remat=full", "--config.seed=7"])
  assert c.model.remat == "full" and c.seed == 7 and c.variant == "tiny"
  assert pipeline.dit_config(c).policy.remat == "full"


# ------------------------------------------ one source of configuration: every section builds its dataclass

# section -> (dataclass, its builder from a config, {derived field: (config override, expected value)})
BUILDERS = {
    "train": (TrainConfig, lambda c: pipeline.train_config(c, accum_steps=3), {"accum_steps": ({}, 3)}),
    "data": (PipelineConfig, lambda c: pipeline.pipeline_config(c, batch_size=6),
             {"batch_size": ({}, 6), "seed": ({"seed": 11}, 11)}),
    "sample": (SamplerConfig, lambda c: pipeline.sampler_config(c), {}),
}

CHOICES = {"sampler": "unipc"}  # another valid value of a field with a closed set of values


def _changed(value):
  """A value of the same type that differs from `value` (and keeps frame counts 4k + 1)."""
  if value is None:
    return 3
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 4
  if isinstance(value, str):
    return value + "_other"
  if value and isinstance(value[0], tuple):
    return value[:1]
  return tuple(_changed(v) for v in value)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_dataclass_field_is_a_config_field_that_the_command_line_sets(name):
  """Each field of TrainConfig / PipelineConfig / SamplerConfig is --config.<section>.<field> at the dataclass's
  default (the config may choose another value), and a command-line override reaches the built object; the fields
  the launcher derives (micro-batches, per-process batch, seed) come from where the launcher takes them."""
  cls, build, derived = BUILDERS[name]
  default = one4d.get_config("variant=tiny")
  fields = [f.name for f in dataclasses.fields(cls) if f.name not in derived]
  assert set(fields) <= set(default[name].keys())
  expected = {k: CHOICES[k] if k in CHOICES else _changed(default[name][k]) for k in fields}
  argv = [f"--config.{name}.{k}={v if isinstance(v, str) else repr(v)}" for k, v in expected.items()]
  argv += [f"--config.{k}={v!r}" for override, _ in derived.values() for k, v in override.items()]
  built = build(_parse(argv))
  assert {k: getattr(built, k) for k in fields} == expected
  assert {k: getattr(built, k) for k in derived} == {k: v for k, (_, v) in derived.items()}
  hash(built)  # tuples, not lists: usable as a static jit argument


@pytest.mark.parametrize("section,key,valid,build", [
    ("train", "lrr", "lr", lambda c: pipeline.train_config(c, 1)),
    ("data", "heigth", "height", lambda c: pipeline.pipeline_config(c, 1)),
    ("sample", "stpes", "steps", pipeline.sampler_config),
    ("model", "remmat", "remat", pipeline.dit_config),
    ("one4d", "lora_rnak", "lora_rank", pipeline.model_config),
])
def test_an_unknown_key_of_a_section_is_an_error_naming_it_and_the_valid_keys(section, key, valid, build):
  c = one4d.get_config("variant=tiny")
  c[section][key] = 1  # a config file of one's own can add keys; the command line cannot (below)
  with pytest.raises(ValueError, match=rf"config.{section}: unknown key '{key}'; valid keys: (.*, )?{valid}(,|$)"):
    build(c)
  with pytest.raises(AttributeError, match=key):
    _parse([f"--config.{section}.{key}=1"])


def test_launcher_settings_are_not_fields_and_the_model_sections_build_from_the_command_line():
  c = _parse(["--config.train.steps=7", "--config.data.num_workers=2", "--config.model.remat=full",
              "--config.one4d.lora_rank=8", "--config.one4d.link_layers=(0, 1)", "--config.one4d.lora_targets=all"])
  assert (c.train.steps, c.data.num_workers) == (7, 2)
  cfg = pipeline.model_config(c)
  assert (cfg.dit.policy.remat, cfg.lora_rank, cfg.links) == ("full", 8, (0, 1))
  assert cfg.lora_targets == tuple(one4d_model.TARGET_SETS["all"])


def test_runlocal_shrinks_the_run_and_leaves_the_tiny_variant_as_it_was():
  for variant in ("1.3b", "14b"):
    c = one4d.get_config(f"variant={variant},runlocal=True")
    assert c.train.batch_size == -1 and c.train.steps == 20 and c.train.log_every == 1
    assert c.train.checkpoint_every <= c.train.steps and c.train.warmup_steps < c.train.steps
    assert (c.data.num_frames, c.data.height, c.data.width) == (5, 64, 96) and c.sample.steps <= 4
    assert c.mesh.context == 1 and c.model.remat == "none" and c.model.context_parallel == "none"
  tiny = one4d.get_config("variant=tiny")
  assert (tiny.train.batch_size, tiny.train.steps, tiny.train.lr, tiny.sample.steps) == (-1, 5_500, 1e-4, 50)
  assert (tiny.data.num_frames, tiny.data.height, tiny.data.width, tiny.one4d.lora_rank) == (5, 64, 96, 4)


def test_section_and_build_round_trip_a_dataclass():
  """Defaults written once: the section holds them; lists become tuples, ints floats, None a typed placeholder."""

  @dataclasses.dataclass(frozen=True)
  class Example:
    size: int
    rate: float = 0.5
    pairs: tuple[tuple[str, float], ...] = (("a", 1.0),)
    limit: int | None = None

  s = config_utils.section(Example, derived=("size",), workers=2)
  assert set(s.keys()) == {"rate", "pairs", "limit", "workers"} and s.pairs == (("a", 1.0),) and s.limit is None
  s.rate, s.pairs, s.limit = 2, [["b", 3]], 4
  built = config_utils.build(Example, s, launcher_only=("workers",), size=1)
  assert built == Example(1, 2.0, (("b", 3.0),), 4) and isinstance(built.rate, float)
  assert config_utils.build(Example(9), config_utils.section(Example, derived=("size",)), size=9) == Example(9)
  with pytest.raises(ValueError, match="unknown key 'workers'; valid keys: rate, pairs, limit$"):
    config_utils.build(Example, s, size=1)
  with pytest.raises(ValueError, match="launcher setting 'rate' is a field of Example"):
    config_utils.section(Example, derived=("size",), rate=1.0)
  with pytest.raises(ValueError, match="Example.size has no default"):
    config_utils.section(Example)
