"""Config sections <-> the frozen dataclasses they describe, so a default is written once (in the dataclass).

`section(cls)` is the ConfigDict of a dataclass's fields at their defaults (plus settings only a launcher reads);
`build(cls, section)` is the dataclass back, with every key of the section accounted for: a key that is neither a
field nor a declared launcher-only setting would otherwise be silently ignored (a typo in a config file, or a setting
nothing reads), so it is an error naming it. Here rather than in configs/ because the library builds its own
dataclasses from a config too (`one4d_jax.pipeline.sampler_config`) and must not import configs/.
"""

import dataclasses
import types
import typing

import ml_collections


def section(cls, *, derived: tuple[str, ...] = (), **launcher) -> ml_collections.ConfigDict:
  """A ConfigDict of `cls`'s fields at their defaults, less `derived` (fields the launcher computes, e.g.
  the per-process batch size), then the `launcher` settings (read by the launcher, not fields of `cls`; one may
  share the name of a derived field the launcher computes from it, e.g. accum_steps=-1 for "as many as it takes").

  A field defaulting to None becomes a typed placeholder, so `--config.section.field=value` can still set it; lists
  become tuples (the only sequences ml_collections overrides from the command line)."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = _hints(cls)
  bad = sorted(set(derived) - set(fields))
  if bad:
    raise ValueError(f"{cls.__name__} has no field {bad[0]!r} to derive; fields: {', '.join(fields)}")
  shadowed = sorted(set(launcher) & set(fields) - set(derived))
  if shadowed:
    raise ValueError(f"launcher setting {shadowed[0]!r} is a field of {cls.__name__}: set its value in the config "
                     "after section(), or list it in derived=(...) if the launcher computes the field from it")
  out = ml_collections.ConfigDict()
  for name, f in fields.items():
    if name in derived:
      continue
    if f.default is not dataclasses.MISSING:
      default = f.default
    elif f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    else:
      raise ValueError(f"{cls.__name__}.{name} has no default: pass it in derived=(...) and to build()")
    out[name] = _placeholder(hints.get(name), cls, name) if default is None else _tuples(default)
  for name, value in launcher.items():
    out[name] = _tuples(value)
  return out


def build(base, config: ml_collections.ConfigDict, *, name: str = "", launcher_only: tuple[str, ...] = (),
          **derived):
  """The dataclass `base` (a class: starting from its defaults; an instance, e.g. a preset: starting from its values)
  with the section's values, then `derived` (values the caller computes; they win over the section's).

  Every key of the section must be a field or one of `launcher_only` (settings the caller reads itself): anything
  else is a ValueError naming the key and listing the valid ones. Sequences become the tuples the field's type asks
  for and ints become floats where a float is asked for, so the result is hashable (a static jit argument)."""
  cls = base if isinstance(base, type) else type(base)
  fields = [f.name for f in dataclasses.fields(cls)]
  where = name or f"the config section of {cls.__name__}"
  unknown = [k for k in config.keys() if k not in fields and k not in launcher_only]
  if unknown:
    valid = [k for k in fields if k not in derived or k in config] + list(launcher_only)
    raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
  bad = sorted(set(derived) - set(fields))
  if bad:
    raise ValueError(f"{cls.__name__} has no field {bad[0]!r}; fields: {', '.join(fields)}")
  hints = _hints(cls)
  values = {k: _convert(config[k], hints.get(k)) for k in config.keys() if k in fields}
  values.update(derived)
  return cls(**values) if base is cls else dataclasses.replace(base, **values)


def _hints(cls) -> dict:
  try:
    return typing.get_type_hints(cls)
  except (NameError, TypeError):  # a forward reference that does not resolve here: no conversion for that class
    return {}


def _tuples(value):
  """Lists (and lists inside tuples) as tuples: ml_collections overrides tuples from the command line, not lists."""
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _placeholder(annotation, cls, name: str):
  """A None default as a typed placeholder (`int | None` -> placeholder(int)), which the command line can set."""
  kinds = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else []
  kind = (typing.get_origin(kinds[0]) or kinds[0]) if len(kinds) == 1 else None
  if kind not in (int, float, str, bool, tuple):
    raise ValueError(f"{cls.__name__}.{name} defaults to None but its type {annotation} is not X | None of a "
                     "scalar or tuple type X: give it a non-None default or derive it")
  return ml_collections.config_dict.placeholder(kind)


def _is_union(annotation) -> bool:
  return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _convert(value, annotation):
  """`value` as `annotation` asks: nested tuples for tuple types, floats for float."""
  if annotation is None or value is None:
    return value
  if _is_union(annotation):
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _convert(value, kinds[0]) if len(kinds) == 1 else value
  if annotation is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if typing.get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(v, args[0]) for v in value)
    if args and len(args) == len(value):
      return tuple(_convert(v, a) for v, a in zip(value, args))
    return tuple(value)
  if annotation is tuple and isinstance(value, list):
    return tuple(value)
  return value
