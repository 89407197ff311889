"""Mesh construction and the logical-axis rules that turn the axis names of parameters and activations into
shardings.

Mesh axes are `(data, fsdp, context, tensor)`. Rules are ordered `(logical name, mesh axis | tuple of mesh axes |
None)` pairs, first match wins (maxtext's `logical_axis_rules`). The rules themselves live in the config only
(`configs/one4d.py: sharding_rules`); this module keeps no copy. A logical name without a rule is an error naming it,
never silent replication.

Activations are constrained inside `jit` against the ambient mesh of `jax.set_mesh(mesh)` (JAX's own context, part
of jit's cache key): with no mesh set, `constrain` is a no-op, so single-device code needs no mesh at all.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


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


def axes_tuple(axes) -> tuple[str, ...]:
  """A rule's mesh axes (None, a name or a tuple of names) as a tuple."""
  return () if axes is None else tuple(axes) if isinstance(axes, (list, tuple)) else (axes,)


def as_rules(rules) -> Rules:
  """Rules from a config (lists or tuples) as a hashable tuple, checked: pairs of a name and mesh axes."""
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"a sharding rule is (logical name, mesh axis or axes or None), got {rule!r}")
    name, axes = rule
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for axis in axes_tuple(axes):
      if axis not in MESH_AXES:
        raise ValueError(f"sharding rule {name!r} -> {axis!r}: not a mesh axis; mesh axes are {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def mesh_axes(name: str | None, rules: Rules):
  """The mesh axes (None, one name or a tuple) of one logical name: the first rule naming it."""
  if name is None:
    return None
  for rule_name, axes in rules:
    if rule_name == name:
      return axes
  raise ValueError(f"logical axis {name!r} has no sharding rule; add it to config.sharding_rules "
                   f"(rules exist for {sorted({n for n, _ in rules})})")


def logical_to_spec(names, rules: Rules) -> PartitionSpec:
  """A PartitionSpec (or tuple) of logical names -> the PartitionSpec of mesh axes. A mesh axis already used by an
  earlier dimension leaves a later one unsharded (flax's convention), so one rule set serves every tensor."""
  used, spec = set(), []
  for name in names:
    axes = mesh_axes(name, rules)
    group = axes_tuple(axes)
    if not group or used & set(group):
      spec.append(None)
    else:
      used |= set(group)
      spec.append(axes)
  return PartitionSpec(*spec)


def logical_to_shardings(logical_axes, mesh: Mesh, rules: Rules, shapes):
  """Tree of PartitionSpecs of logical names and a matching tree of arrays or ShapeDtypeStructs -> tree of
  NamedShardings on `mesh`. A dimension that does not divide evenly over its mesh axes keeps the longest prefix of
  them that it does divide over (a LoRA rank of 4 on 8 FSDP devices stays whole; rank 64 on 4 x 2 is split 8 ways)."""
  return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, fit_spec(logical_to_spec(spec, rules), leaf.shape,
                                                                      mesh)),
                      logical_axes, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def fit_spec(spec: PartitionSpec, shape, mesh) -> PartitionSpec:
  """`spec` with each dimension on the longest prefix of its mesh axes that divides it evenly (None if none does)."""
  out = []
  for axes, n in zip(spec, shape):
    axes = axes_tuple(axes)
    while axes and n % int(np.prod([mesh.shape[a] for a in axes])):
      axes = axes[:-1]
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def constrain(x: jax.Array, names: tuple[str | None, ...], rules: Rules) -> jax.Array:
  """`with_sharding_constraint` of an activation by logical names, against the mesh of `jax.set_mesh`; a no-op
  without a mesh or without rules (single-device runs). Dimensions need not divide evenly (GSPMD pads them)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not rules:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"{len(names)} logical names {names} for an activation of shape {x.shape}")
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Where a batch's leading axis lives: split over the mesh axes of `activation_batch` (data x fsdp)."""
  return NamedSharding(mesh, logical_to_spec(("activation_batch",), rules))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch is split: the product of the mesh sizes of `activation_batch`'s axes."""
  return int(np.prod([mesh.shape[a] for a in axes_tuple(mesh_axes("activation_batch", rules))]))


def global_batch(local, mesh: Mesh, rules: Rules):
  """This process's examples (numpy leaves [B_local, ...]) -> global arrays [B_local x processes, ...] split over the
  data-parallel axes; process p's rows come p-th, as the Grain pipeline assigns them (see data.pipeline)."""
  rows = {np.shape(x)[0] for x in jax.tree.leaves(local)}
  size = data_parallel_size(mesh, rules)
  if len(rows) != 1:
    raise ValueError(f"batch leaves disagree on the batch size: {sorted(rows)}")
  total = rows.pop() * jax.process_count()
  if total % size:
    raise ValueError(f"a global batch of {total} examples ({total // jax.process_count()} per process x "
                     f"{jax.process_count()} processes) does not split over the {size} data-parallel devices "
                     f"(mesh axes of activation_batch): make config.train.batch_size a multiple of {size}")
  target = batch_sharding(mesh, rules)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(target, np.asarray(x)), local)
