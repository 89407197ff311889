"""Load converted checkpoints: one call returns `(config, params)`, optionally placed onto shardings.

A converted checkpoint is a folder with `config.json` (`{"component": ..., "config": {...}}`) and `params/` (orbax),
written by `python -m checkpoints_convert.wan`. Models keep per-layer weights stacked `[L, ...]` under a top-level
`blocks` key; checkpoints store each layer on its own (`blocks/<i>/...`), so conversion can write one layer at a time
and loading stacks them.
"""

import functools
import json
import os

import jax

from one4d_jax import runtime
from one4d_jax.models.wan import clip, dit, t5, vae

STACKED = "blocks"


def is_stacked(path: str) -> bool:
  """Whether a '/'-joined parameter path is a layer-stacked leaf."""
  return path.split("/", 1)[0] == STACKED


def stored_path(path: str, layer: int | None) -> str:
  """Where layer `layer` of a parameter lives in a checkpoint: blocks/x/y -> blocks/<layer>/x/y."""
  return path if layer is None else f"{STACKED}/{layer}/{path.split('/', 1)[1]}"


def flatten(tree, is_leaf=None) -> dict[str, object]:
  """Nested dict -> {'a/b/c': leaf}."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}


def unflatten(flat) -> dict:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return tree


# component -> (config from dict, abstract parameters, logical axis names)
COMPONENTS = {
    "dit": (dit.DiTConfig.from_dict, dit.abstract_params, dit.logical_axes),
    "t5": (t5.T5Config.from_dict, t5.abstract_params, t5.logical_axes),
    "clip": (clip.CLIPConfig.from_dict, clip.abstract_params, clip.logical_axes),
    "vae": (vae.VAEConfig.from_dict, vae.abstract_params, vae.logical_axes),
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


def load(path: str, shardings=None, rules=None):
  """Restore `(config, params)` from a converted checkpoint.

  shardings: None (default device), one `jax.sharding.Sharding` for every leaf, a pytree of shardings matching the
  parameters, or a `jax.sharding.Mesh` (parameters sharded by their logical axis names with `rules`, the config's
  `sharding_rules`). Each stacked leaf is allocated once on its shards and filled layer by layer as the layers are
  read, so host memory holds the parameters plus one layer (tests/test_memory.py).
  """
  import orbax.checkpoint.experimental.v1 as ocp1

  from one4d_jax import sharding as sharding_lib

  component, cfg = read_config(path)
  _, abstract_fn, axes_fn = COMPONENTS[component]
  abstract = flatten(abstract_fn(cfg))
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Mesh):
    if rules is None:
      raise ValueError("loading onto a mesh needs rules= (logical axis -> mesh axes, e.g. config.sharding_rules)")
    shardings = sharding_lib.logical_to_shardings(axes_fn(cfg), shardings, sharding_lib.as_rules(rules),
                                                  abstract_fn(cfg))
  shardings = (dict.fromkeys(abstract, shardings) if isinstance(shardings, jax.sharding.Sharding)
               else flatten(shardings))

  stored = {}
  for p, leaf in abstract.items():
    if is_stacked(p):
      for i in range(leaf.shape[0]):
        stored[stored_path(p, i)] = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype,
                                                         sharding=_without_leading_axis(shardings[p]))
    else:
      stored[p] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=shardings[p])

  params_dir = os.path.join(path, "params")
  problems = compare(flatten(ocp1.metadata(params_dir).metadata, is_leaf=lambda x: hasattr(x, "shape")), stored)
  if problems:
    raise ValueError(f"checkpoint {path} does not match its config:\n  " + "\n  ".join(problems))
  runtime.return_large_frees_to_os()
  partial = ocp1.Context(pytree_options=ocp1.options.PyTreeOptions(
      loading=ocp1.options.PyTreeOptions.Loading(partial_load=True)))
  read = lambda keys: flatten(ocp1.load(params_dir, unflatten({k: stored[k] for k in keys})))
  with partial:
    params = read([p for p in abstract if not is_stacked(p)])
    stacked = [p for p in abstract if is_stacked(p)]
    for p in stacked:  # the stacked leaves, allocated once on their shards and filled layer by layer in place
      params[p] = jax.jit(functools.partial(jax.numpy.zeros, abstract[p].shape, abstract[p].dtype),
                          out_shardings=shardings[p])()
    for i in range(abstract[stacked[0]].shape[0] if stacked else 0):
      layer = read([stored_path(p, i) for p in stacked])
      for p in stacked:
        params[p] = _put_layer(params[p], layer.pop(stored_path(p, i)), i)
  return cfg, unflatten(params)


@functools.partial(jax.jit, donate_argnums=0)
def _put_layer(stacked: jax.Array, layer: jax.Array, index) -> jax.Array:
  """stacked[index] = layer, in place (the stacked buffer is donated), keeping the stacked array's sharding."""
  return jax.lax.dynamic_update_index_in_dim(stacked, layer, index, 0)


def _without_leading_axis(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    return sharding
  raise TypeError(f"cannot restore stacked layers onto a {type(sharding).__name__}; use a NamedSharding")


def compare(have: dict, want: dict) -> list[str]:
  """Every difference between two flat {path: leaf with .shape and .dtype} trees: missing, unexpected, and wrong
  shape or dtype, one string each."""
  problems = [f"missing {k} {list(want[k].shape)}" for k in sorted(set(want) - set(have))]
  problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
  problems += [f"{k}: stored {list(have[k].shape)} {have[k].dtype}, expected {list(want[k].shape)} {want[k].dtype}"
               for k in sorted(set(have) & set(want))
               if tuple(have[k].shape) != tuple(want[k].shape) or have[k].dtype != want[k].dtype]
  return problems
