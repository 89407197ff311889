"""A trained One4D adapter as one file: the trainable tree (both LoRA branches, the control links, the XYZ patch
embedding and head) in a single safetensors file, so sampling needs neither the training run nor orbax.

The file holds every leaf of the trainable tree under its '/'-joined path (`lora/rgb/blocks/self_attn/q/a`, layers
stacked [L, ...] as in the model) and string metadata: `format` and `version`; the settings the tree must agree on
with a config (`settings`: the DiT architecture, coupling, LoRA rank, alpha and targets, link layers, XYZ projections,
the arrays' dtype), of which alpha changes no shape but every output; and where it came from (`step`, `workdir`,
anything else the writer adds). Loading compares the settings, then every key, shape and dtype with the config's
trainable tree, and names every difference at once before any array is placed.
"""

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import numpy as np

from one4d_jax import checkpoints
from one4d_jax.models import one4d
from one4d_jax.train import step as train_lib

FORMAT = "one4d-adapter"
VERSION = "1"
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # safetensors' names -> numpy's


class Tensor(NamedTuple):
  shape: tuple[int, ...]
  dtype: str


def settings(cfg: one4d.One4DConfig) -> dict[str, str]:
  """The metadata a file must share with `cfg`, as the strings written."""
  architecture = {k: v for k, v in dataclasses.asdict(cfg.dit).items() if k != "policy"}
  dtypes = sorted({str(leaf.dtype) for leaf in jax.tree.leaves(train_lib.abstract_trainable(cfg))})
  return {"architecture": json.dumps(architecture, sort_keys=True), "coupling": cfg.coupling,
          "lora_rank": str(cfg.lora_rank), "lora_alpha": repr(float(cfg.lora_alpha)),
          "lora_targets": json.dumps(list(cfg.lora_targets)), "link_layers": json.dumps(list(cfg.links)),
          "xyz_projections": json.dumps(cfg.xyz_projections), "dtype": ",".join(dtypes)}


def save_adapter(path: str, trainable: dict, cfg: one4d.One4DConfig, step: int, workdir: str = "",
                 **info: str) -> dict[str, str]:
  """Writes `trainable` (the tree of `cfg`, checked) to `path` atomically (a temporary file renamed into place);
  `info`: more metadata (e.g. variant, preset). Returns the metadata written."""
  from safetensors.numpy import save_file
  tensors = {k: np.ascontiguousarray(jax.device_get(v)) for k, v in checkpoints.flatten(trainable).items()}
  problems = checkpoints.compare(tensors, checkpoints.flatten(train_lib.abstract_trainable(cfg)))
  if problems:
    raise ValueError(f"the trainable tree does not match its config: {'; '.join(problems)}")
  metadata = {"format": FORMAT, "version": VERSION, **settings(cfg), "step": str(int(step)),
              "workdir": os.path.abspath(workdir) if workdir else "", **{k: str(v) for k, v in info.items()}}
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return metadata


def read_header(path: str) -> tuple[dict[str, str], dict[str, Tensor]]:
  """(metadata, {key: shape and dtype}) of an adapter file, from its header alone."""
  from safetensors import SafetensorError, safe_open
  if not os.path.isfile(path):
    raise FileNotFoundError(f"adapter file {path} does not exist (write one with `python -m launch.export_lora`)")
  try:
    with safe_open(path, framework="np") as f:
      slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
      return f.metadata() or {}, {k: Tensor(tuple(s.get_shape()), DTYPES.get(s.get_dtype(), s.get_dtype()))
                                  for k, s in slices.items()}
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def check_adapter(path: str, cfg: one4d.One4DConfig) -> dict[str, str]:
  """An adapter file's metadata, once its format, settings, keys, shapes and dtypes all fit `cfg`; otherwise one
  error (a single line) naming every difference. Reads the header only."""
  metadata, shapes = read_header(path)
  if metadata.get("format") != FORMAT:
    raise ValueError(f"{path} is a safetensors file but not a One4D adapter (metadata format "
                     f"{metadata.get('format')!r}, expected {FORMAT!r}; write one with `python -m launch.export_lora`)")
  if metadata.get("version") != VERSION:
    raise ValueError(f"{path} is a One4D adapter of format version {metadata.get('version')!r}; this code reads "
                     f"version {VERSION}")
  differences = []
  for name, want in settings(cfg).items():
    have = metadata.get(name)
    if name == "architecture" and have is not None:
      have_arch, want_arch = json.loads(have), json.loads(want)
      differences += [f"architecture.{k}: file {have_arch.get(k)!r}, config {want_arch.get(k)!r}"
                      for k in sorted(set(have_arch) | set(want_arch)) if have_arch.get(k) != want_arch.get(k)]
    elif have != want:
      differences.append(f"{name}: file {have}, config {want}")
  if differences:
    raise ValueError(f"{path} was trained with other One4D settings than the config's (config.model.preset / "
                     f"config.one4d): {'; '.join(differences)}")
  problems = checkpoints.compare(shapes, checkpoints.flatten(train_lib.abstract_trainable(cfg)))
  if problems:
    raise ValueError(f"{path} does not hold the config's trainable tree: {'; '.join(problems)}")
  return metadata


def load_adapter(path: str, cfg: one4d.One4DConfig, mesh: jax.sharding.Mesh) -> dict:
  """The trainable tree of an adapter file (checked first: `check_adapter`), each leaf read on its own and placed
  onto `mesh` as training places it (`train.step.trainable_shardings`)."""
  from safetensors import safe_open
  check_adapter(path, cfg)
  shardings = checkpoints.flatten(train_lib.trainable_shardings(cfg, mesh))
  with safe_open(path, framework="np") as f:
    flat = {k: _place(f.get_tensor(k), s) for k, s in shardings.items()}
  return checkpoints.unflatten(flat)


def _place(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array (the same on every process) onto its shards."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
