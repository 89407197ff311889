"""Mesh construction and the logical-axis rules that turn parameter axis names into shardings.

Mesh axes are `(data, fsdp, context, tensor)`. Rules are ordered `(logical name, mesh axis or None)` pairs, first
match wins (flax's convention); a logical name without a rule is replicated.
"""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("layers", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
)


def make_mesh(data: int = 1, fsdp: int = -1, context: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A mesh over all (or the given) devices; one axis may be -1 to take the remaining devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = [data, fsdp, context, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if devices.size % known:
      raise ValueError(f"{devices.size} devices do not divide into {dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = devices.size // known
  if int(np.prod(shape)) != devices.size:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {devices.size}")
  return Mesh(devices.reshape(shape), MESH_AXES)


def logical_to_shardings(logical_axes, mesh: Mesh, rules=DEFAULT_RULES):
  """Tree of PartitionSpecs of logical names -> tree of NamedShardings on `mesh`."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(spec, rules)), logical_axes,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))
