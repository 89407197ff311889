"""configs/one4d.py parses big_vision-style arguments and describes a buildable model for every variant."""

import pytest

from configs import one4d
from configs.common import parse_arg


@pytest.mark.parametrize("variant,preset", [("tiny", "tiny"), ("1.3b", "fun-inp-1.3b"), ("14b", "fun-inp-14b")])
def test_every_variant_builds_its_dit_config(variant, preset):
  c = one4d.get_config(f"variant={variant},runlocal=True")
  cfg = one4d.dit_config(c)
  assert c.model.preset == preset and cfg.in_dim == 36 and cfg.is_i2v


def test_default_is_the_papers_14b_model():
  cfg = one4d.dit_config(one4d.get_config())
  assert (cfg.dim, cfg.num_layers, cfg.num_heads) == (5120, 40, 40) and cfg.dtype == "bfloat16"


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown variant '7b'"):
    one4d.get_config("variant=7b")
  with pytest.raises(ValueError, match="unknown config argument 'varaint'"):
    one4d.get_config("varaint=14b")
  with pytest.raises(ValueError, match="not a boolean"):
    parse_arg("runlocal=maybe", runlocal=False)


def test_command_line_overrides_reach_the_config():
  from absl import flags
  from ml_collections import config_flags
  argv = ["prog", "--config=configs/one4d.py:variant=tiny", "--config.model.remat=full", "--config.seed=7"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=argv)  # overrides are found in argv
  fv(argv)
  assert fv.config.model.remat == "full" and fv.config.seed == 7 and fv.config.variant == "tiny"
  assert one4d.dit_config(fv.config).remat == "full"
