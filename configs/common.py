"""Helpers shared by config files (big_vision style)."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parse `"variant=14b,runlocal=True"` into a ConfigDict, typed by the defaults.

  Every key must have a default (a typo is an error, not a silently ignored setting); booleans accept True/False.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not key=value (full argument: {arg!r})")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value not in ("True", "False", "true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} is not a boolean")
      out[key] = value in ("True", "true", "1")
    else:
      out[key] = kind(value)
  return out
