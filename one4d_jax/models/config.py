"""What every model config shares: frozen dataclasses that checkpoints store as JSON and read back."""

import dataclasses
import json


class ConfigMixin:
  """replace / to_json / from_dict for a frozen dataclass config."""

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def with_policy(self, **changes):
    """This architecture run another way (dtype, ...). The encoders keep their few execution fields beside the
    architecture, so this is `replace`; the DiT, which has many, keeps them apart (dit.Policy) and overrides it."""
    return self.replace(**changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_dict(cls, d: dict):
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**d)
