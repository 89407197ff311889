"""Load converted checkpoints: one call returns `(config, params)`, optionally placed onto shardings.

A converted checkpoint is a folder with `config.json` (`{"component": ..., "config": {...}}`) and `params/` (orbax),
written by `python -m checkpoints_convert.wan`.
"""

import json
import os

import jax

from one4d_jax.models.wan import dit

# component -> (config from dict, abstract parameters, logical axis names)
COMPONENTS = {
    "dit": (dit.DiTConfig.from_dict, dit.abstract_params, dit.logical_axes),
}


def read_config(path: str):
  """The component name and config of a converted checkpoint, without reading any weights."""
  config_file = os.path.join(path, "config.json")
  if not os.path.exists(config_file) or not os.path.isdir(os.path.join(path, "params")):
    raise FileNotFoundError(f"{path} is not a converted one4d_jax checkpoint (expected config.json and params/); "
                            "make one with `python -m checkpoints_convert.wan`")
  with open(config_file) as f:
    meta = json.load(f)
  component = meta.get("component")
  if component not in COMPONENTS:
    raise ValueError(f"{config_file}: unknown component {component!r}; known: {sorted(COMPONENTS)}")
  return component, COMPONENTS[component][0](meta["config"])


def load(path: str, shardings=None):
  """Restore `(config, params)` from a converted checkpoint.

  shardings: None (default device), one `jax.sharding.Sharding` for every leaf, a pytree of shardings matching the
  parameters, or a `jax.sharding.Mesh` (parameters sharded by their logical axis names with
  `one4d_jax.sharding.DEFAULT_RULES`).
  """
  import orbax.checkpoint.experimental.v1 as ocp1

  from one4d_jax import sharding as sharding_lib

  component, cfg = read_config(path)
  _, abstract_fn, axes_fn = COMPONENTS[component]
  abstract = abstract_fn(cfg)
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Mesh):
    shardings = sharding_lib.logical_to_shardings(axes_fn(cfg), shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

  stored = ocp1.metadata(os.path.join(path, "params")).metadata
  problems = _compare(stored, target)
  if problems:
    raise ValueError(f"checkpoint {path} does not match its config:\n  " + "\n  ".join(problems))
  return cfg, ocp1.load(os.path.join(path, "params"), target)


def _compare(stored, target) -> list[str]:
  flat = lambda tree: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))[0]}
  have, want = flat(stored), flat(target)
  problems = [f"missing {k} {list(want[k].shape)}" for k in sorted(set(want) - set(have))]
  problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
  problems += [f"{k}: stored {list(have[k].shape)} {have[k].dtype}, expected {list(want[k].shape)} {want[k].dtype}"
               for k in sorted(set(have) & set(want))
               if tuple(have[k].shape) != tuple(want[k].shape) or have[k].dtype != want[k].dtype]
  return problems
