"""The conversion engine: declarative key maps, complete validation, streaming atomic writes.

A key map is a list of `Rule`s. A rule's `src` and `dst` are templates over the same placeholders: `{layer}` is the
index into a stacked `[L, ...]` leaf, any other placeholder takes one of the alternatives given in `choices`. One
declaration therefore maps both ways: source key -> (JAX path, layer) for conversion, and back for writing reference
files in another layout.

Conversion never holds more than one output leaf plus one source tensor in host memory: source tensors are read one at
a time from safetensors, transformed, placed into the leaf's buffer, and each finished leaf is written with orbax
partial saving; the whole output appears under its final name by one rename at the end.
"""

import dataclasses
import functools
import importlib
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from one4d_jax import runtime
from one4d_jax.checkpoints import flatten, is_stacked, stored_path, unflatten
from one4d_jax.files import atomic_directory

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # --dtype -> the stored weight dtype (norms and tables stay float32)
# Tensors written per orbax save, in MiB: peak host memory is about 3x this plus the largest tensor
# (tests/test_convert_memory.py), so 256 bounds a conversion to ~1 GiB beyond its largest tensor.
WRITE_MB = 256

TRANSFORMS: dict[str, Callable] = {
    "identity": lambda a: a,
    "linear": lambda a: a.T,  # torch Linear [out, in] -> kernel [in, out]
    "conv_as_linear": lambda a: a.reshape(a.shape[0], -1).T,  # Conv3d [out, in, kt, kh, kw] -> [(in kt kh kw), out]
    "drop_leading_1": lambda a: a.reshape(a.shape[1:]),  # [1, n, D] -> [n, D]
    # A fused [3C, ...] qkv tensor feeds three leaves (fanout rules): rows [0:C] are q, [C:2C] k, [2C:3C] v. Thirds
    # are rounded up, so a row count that is not a multiple of 3 gives a wrong shape for at least one part.
    "qkv_q": lambda a: a[:-(-a.shape[0] // 3)],
    "qkv_k": lambda a: a[-(-a.shape[0] // 3):2 * -(-a.shape[0] // 3)],
    "qkv_v": lambda a: a[2 * -(-a.shape[0] // 3):],
    "qkv_q_linear": lambda a: a[:-(-a.shape[0] // 3)].T,
    "qkv_k_linear": lambda a: a[-(-a.shape[0] // 3):2 * -(-a.shape[0] // 3)].T,
    "qkv_v_linear": lambda a: a[2 * -(-a.shape[0] // 3):].T,
    "flatten": lambda a: a.reshape(-1),  # [1, 1, D] -> [D]
    "conv3d": lambda a: a.transpose(2, 3, 4, 1, 0),  # Conv3d [out, in, kt, kh, kw] -> [kt, kh, kw, in, out]
    "conv2d": lambda a: a.transpose(2, 3, 1, 0),  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
}


class ConversionError(ValueError):
  """Raised with every problem found, one per line."""


@dataclasses.dataclass(frozen=True)
class Rule:
  src: str
  dst: str
  transform: str = "identity"
  choices: Mapping[str, str] = dataclasses.field(default_factory=dict)
  fanout: bool = False  # the source tensor feeds every matching fanout rule (e.g. a fused qkv split three ways)

  def _regex(self, template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
      out += re.escape(template[pos:m.start()])
      name = m.group(1)
      out += r"(?P<layer>\d+)" if name == "layer" else f"(?P<{name}>{self.choices[name]})"
      pos = m.end()
    return re.compile(out + re.escape(template[pos:]))

  def match_src(self, key: str) -> dict | None:
    m = self._regex(self.src).fullmatch(key)
    return m and m.groupdict()

  def match_dst(self, path: str) -> dict | None:
    m = self._regex(self.dst).fullmatch(path)
    return m and m.groupdict()


def linear(src: str, dst: str, **choices) -> list[Rule]:
  """A torch Linear `src.{weight,bias}` -> Dense `dst/{kernel,bias}`."""
  return [Rule(f"{src}.weight", f"{dst}/kernel", "linear", choices),
          Rule(f"{src}.bias", f"{dst}/bias", "identity", choices)]


def affine_norm(src: str, dst: str, **choices) -> list[Rule]:
  """A torch LayerNorm `src.{weight,bias}` -> `dst/{scale,bias}`."""
  return [Rule(f"{src}.weight", f"{dst}/scale", "identity", choices),
          Rule(f"{src}.bias", f"{dst}/bias", "identity", choices)]


@dataclasses.dataclass(frozen=True)
class Target:
  path: str  # '/'-joined path in the JAX tree
  layer: int | None  # index into the stacked leaf, or None
  transform: str


def map_key(rules: Iterable[Rule], key: str) -> Target | None:
  for rule in rules:
    groups = rule.match_src(key)
    if groups is not None:
      layer = groups.pop("layer", None)
      return Target(rule.dst.format(layer="", **groups), None if layer is None else int(layer), rule.transform)
  return None


def map_targets(rules: Iterable[Rule], key: str) -> list[Target]:
  """Every target of a source key: the first matching rule's, or, if that is a fanout rule, those of all the matching
  fanout rules in order. Without fanout rules this is `[map_key(rules, key)]` (or `[]`)."""
  rules = list(rules)
  first = next((rule for rule in rules if rule.match_src(key) is not None), None)
  if first is None:
    return []
  return [map_key([rule], key) for rule in rules if rule.fanout and rule.match_src(key) is not None] if first.fanout \
      else [map_key([first], key)]


def first_shape(shapes: Mapping[str, tuple[int, ...]], template: str) -> tuple[int, ...] | None:
  """The shape of the first source key (in sorted order) that matches a rule template, `{layer}` matching any layer;
  for reading an architecture off the tensors of a checkpoint that has no config."""
  rule = Rule(template, "")
  return next((shapes[key] for key in sorted(shapes) if rule.match_src(key) is not None), None)


def source_key(rules: Iterable[Rule], path: str, layer: int | None) -> tuple[str, str]:
  """Inverse map: (JAX path, layer) -> (source key, transform name)."""
  for rule in rules:
    groups = rule.match_dst(path)
    if groups is not None and (("{layer}" in rule.src) == (layer is not None)):
      groups.pop("layer", None)
      return rule.src.format(layer=layer, **groups), rule.transform
  raise KeyError(f"no rule produces {path} (layer {layer})")


def rename(state_dict: dict, src_rules: list[Rule], dst_rules: list[Rule]) -> dict:
  """Rename tensors between two PyTorch layouts through the JAX tree: src key -> (path, layer) -> dst key, with no
  transform."""
  out = {}
  for key, value in state_dict.items():
    target = map_key(src_rules, key)
    if target is None:
      raise ConversionError(f"no rule maps {key}")
    out[source_key(dst_rules, target.path, target.layer)[0]] = value
  return out


def round_like_stored(model, rules: Iterable[Rule], stored_abstract) -> None:
  """Round, in place, every parameter of the PyTorch reference `model` that the conversion stored in bf16 (per
  `stored_abstract`, the converted tree's shapes and dtypes) to bf16 and back, so --verify of a bf16 conversion
  measures the port, not the rounding. Parameters no rule maps are left alone."""
  import torch

  stored = flatten(stored_abstract)
  with torch.no_grad():
    for name, p in model.named_parameters():
      target = map_key(rules, name)
      if target is not None and target.path in stored and stored[target.path].dtype == jax.numpy.bfloat16:
        p.copy_(p.to(torch.bfloat16).float())


# ------------------------------------------------------------------------------------------------ safetensors input


@dataclasses.dataclass(frozen=True)
class SourceTensor:
  file: str
  shape: tuple[int, ...]
  dtype: str


def safetensors_files(folder: str) -> list[str]:
  """The shard files of a safetensors checkpoint folder: from its `*.index.json` if there is one, else every
  `*.safetensors` file in it."""
  if not os.path.isdir(folder):
    raise ConversionError(f"source {folder!r} is not a directory")
  indexes = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors.index.json"))
  if len(indexes) > 1:
    raise ConversionError(f"{folder} has several safetensors indexes {indexes}; keep one")
  if indexes:
    with open(os.path.join(folder, indexes[0])) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    missing = [f for f in files if not os.path.exists(os.path.join(folder, f))]
    if missing:
      raise ConversionError(f"{indexes[0]} names shard files that do not exist: {missing}")
  else:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise ConversionError(f"no *.safetensors files in {folder}")
  return [os.path.join(folder, f) for f in files]


def read_headers(folder: str) -> dict[str, SourceTensor]:
  """Key -> file, shape and dtype for every tensor of the checkpoint, from the headers only (no tensor data)."""
  from safetensors import safe_open
  tensors: dict[str, SourceTensor] = {}
  for path in safetensors_files(folder):
    with safe_open(path, framework="np") as f:
      for key in f.keys():
        if key in tensors:
          raise ConversionError(f"tensor {key!r} appears in both {tensors[key].file} and {path}")
        sl = f.get_slice(key)
        tensors[key] = SourceTensor(path, tuple(sl.get_shape()), sl.get_dtype())
  return tensors


def read_tensor(src: SourceTensor, key: str) -> np.ndarray:
  if src.file.endswith(PTH_SUFFIXES):
    return read_pth_tensor(src.file, key)
  from safetensors import safe_open
  with safe_open(src.file, framework="np") as f:
    return f.get_tensor(key)


# ------------------------------------------------------------------------------------------------ plan and validate


def plan(rules: list[Rule], shapes: Mapping[str, tuple[int, ...]], abstract):
  """Map every source tensor (key -> shape) onto the abstract parameter tree. Returns {leaf path: [(layer, key, transform)]}.

  Raises one ConversionError listing every unexpected key, every missing key and every shape mismatch.
  """
  leaves = flatten(abstract)
  unexpected, mismatched, duplicated = [], [], []
  wrong_shape: set[tuple[str, int | None]] = set()  # reported as wrong shape, so not again as missing
  assignment: dict[str, dict] = {path: {} for path in leaves}
  for key, target in [(key, target) for key in sorted(shapes) for target in map_targets(rules, key) or [None]]:
    if target is None or target.path not in leaves:
      unexpected.append(f"{key} {list(shapes[key])}")
      continue
    stacked = is_stacked(target.path)
    expected = leaves[target.path].shape[1:] if stacked else leaves[target.path].shape
    if stacked and not (target.layer is not None and 0 <= target.layer < leaves[target.path].shape[0]):
      unexpected.append(f"{key} (layer {target.layer} outside 0..{leaves[target.path].shape[0] - 1})")
      continue
    got = jax.eval_shape(TRANSFORMS[target.transform], jax.ShapeDtypeStruct(shapes[key], np.float32)).shape
    slot = target.layer if stacked else None
    if tuple(got) != tuple(expected):
      mismatched.append(f"{key}: shape {list(shapes[key])} -> {list(got)} after {target.transform!r}, "
                        f"but {target.path} expects {list(expected)}")
      wrong_shape.add((target.path, slot))
      continue
    if slot in assignment[target.path]:
      duplicated.append(f"{key} and {assignment[target.path][slot][0]} both map to {target.path}[{slot}]")
      continue
    assignment[target.path][slot] = (key, target.transform)

  missing = []
  for path, leaf in leaves.items():
    slots = range(leaf.shape[0]) if is_stacked(path) else [None]
    for slot in slots:
      if slot not in assignment[path] and (path, slot) not in wrong_shape:
        try:
          name = source_key(rules, path, slot)[0]
        except KeyError:
          name = "(no rule)"
        missing.append(f"{name} -> {path}" + ("" if slot is None else f"[{slot}]"))

  problems = ([f"missing key: {m}" for m in missing] + [f"unexpected key: {u}" for u in unexpected]
              + [f"wrong shape: {w}" for w in mismatched] + [f"duplicate: {d}" for d in duplicated])
  if problems:
    raise ConversionError(f"checkpoint does not match the model ({len(missing)} missing, {len(unexpected)} "
                          f"unexpected, {len(mismatched)} wrong shape, {len(duplicated)} duplicate):\n  "
                          + "\n  ".join(problems))
  return {path: sorted((slot, key, tr) for slot, (key, tr) in slots.items()) for path, slots in assignment.items()}


# ---------------------------------------------------------------------------------------------------------- write


def assemble(sources: list[tuple], read: Callable[[str], np.ndarray], leaf: jax.ShapeDtypeStruct) -> np.ndarray:
  """One output leaf from its planned (layer, key, transform) sources, read one at a time."""
  buf = np.empty(leaf.shape, leaf.dtype)
  for slot, key, transform in sources:
    value = TRANSFORMS[transform](read(key)).astype(leaf.dtype)
    if slot is None:
      buf[...] = value
    else:
      buf[slot] = value
    del value
  return buf


def convert_in_memory(rules: list[Rule], tensors: Mapping[str, np.ndarray], abstract) -> dict:
  """Convert a whole in-memory state dict (numpy arrays) to a parameter tree; for small models and tests."""
  the_plan = plan(rules, {k: tuple(v.shape) for k, v in tensors.items()}, abstract)
  leaves = flatten(abstract)
  return unflatten({path: assemble(the_plan[path], tensors.__getitem__, leaves[path]) for path in the_plan})


def write_checkpoint(dst: str, meta: dict, the_plan, sources: Mapping[str, SourceTensor], abstract,
                     progress: bool = True, write_mb: int = WRITE_MB) -> None:
  """Stream tensors into `dst/params` (orbax, layers stored one by one) and `dst/config.json`.

  Tensors are read, transformed and written in batches of about `write_mb` MiB (one orbax partial save each; a larger
  tensor goes alone), so host memory holds one batch at a time. `dst` appears atomically (one rename) or not at all.
  """
  import orbax.checkpoint.experimental.v1 as ocp1
  from tqdm import tqdm

  if os.path.exists(dst):
    raise ConversionError(f"destination {dst} already exists; remove it or choose another path")
  runtime.return_large_frees_to_os()
  leaves = flatten(abstract)
  batches, batch, size = [], [], 0
  for path in sorted(the_plan, key=lambda p: (not is_stacked(p), p)):
    for slot, key, transform in the_plan[path]:
      nbytes = int(np.prod(sources[key].shape)) * np.dtype(leaves[path].dtype).itemsize
      if batch and size + nbytes > write_mb * 2**20:
        batches.append(batch)
        batch, size = [], 0
      batch.append((stored_path(path, slot), key, transform, leaves[path].dtype))
      size += nbytes
  batches.append(batch)

  with atomic_directory(dst) as tmp:
    params_dir = os.path.join(tmp, "params")
    for batch in tqdm(batches, desc=f"converting to {dst}", unit="batch", disable=not progress):
      arrays = {path: TRANSFORMS[transform](read_tensor(sources[key], key)).astype(dtype, order="C")
                for path, key, transform, dtype in batch}
      ocp1.partial.save(params_dir, unflatten(arrays))
      del arrays
    ocp1.partial.finalize(params_dir)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(meta, f, indent=2)


# ------------------------------------------------------------------------------ PyTorch .pth input (needs torch)
# Wan ships the umT5 and CLIP encoders (and the VAE) as pickled state dicts. They are memory-mapped, so reading one
# tensor touches only its bytes; `read_tensor` dispatches here for these files.

PTH_SUFFIXES = (".pth", ".pt")


def _pth_state(path: str) -> dict:
  """The memory-mapped state dict of `path`, unpickled once per file version (the last file read is kept)."""
  stat = os.stat(path)
  return _load_pth(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _load_pth(path: str, mtime_ns: int, size: int) -> dict:
  import torch
  try:
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  except RuntimeError:  # the pre-1.6 (non-zip) format cannot be memory-mapped
    state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise ConversionError(f"{path} is not a flat state dict of tensors (a dict key -> torch.Tensor)")
  return state


def read_pth_headers(path: str) -> dict[str, SourceTensor]:
  """Key -> file, shape and dtype for every tensor of a .pth state dict (memory-mapped: no tensor data is read)."""
  return {key: SourceTensor(path, tuple(t.shape), str(t.dtype).removeprefix("torch."))
          for key, t in _pth_state(path).items()}


def read_pth_tensor(path: str, key: str) -> np.ndarray:
  """One tensor as numpy; bfloat16 stays bfloat16 (ml_dtypes), bit for bit."""
  import ml_dtypes
  import torch
  t = _pth_state(path)[key]
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def read_sources(src: str) -> dict[str, SourceTensor]:
  """Tensor headers of a checkpoint given as a .pth / .safetensors file or a folder of safetensors shards (or of
  exactly one .pth file)."""
  if os.path.isfile(src):
    if src.endswith(PTH_SUFFIXES):
      return read_pth_headers(src)
    if src.endswith(".safetensors"):
      from safetensors import safe_open
      with safe_open(src, framework="np") as f:
        return {k: SourceTensor(src, tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    raise ConversionError(f"{src}: expected a .pth, .pt or .safetensors file or a checkpoint folder")
  if os.path.isdir(src) and not any(f.endswith(".safetensors") for f in os.listdir(src)):
    pth = sorted(f for f in os.listdir(src) if f.endswith(PTH_SUFFIXES))
    if len(pth) != 1:
      raise ConversionError(f"{src} has no safetensors files and {len(pth)} .pth files {pth}; pass the file itself")
    return read_pth_headers(os.path.join(src, pth[0]))
  return read_headers(src)


def torch_state(sources: Mapping[str, SourceTensor], skip: Iterable[str] = ()) -> dict:
  """Every source tensor but those in `skip` as a float32 torch tensor: a state dict for a PyTorch reference."""
  import torch
  skip = set(skip)
  return {k: torch.from_numpy(np.asarray(read_tensor(s, k), np.float32)) for k, s in sources.items() if k not in skip}


# ---------------------------------------------------------------------------------------- components and drivers


@dataclasses.dataclass(frozen=True)
class Component:
  """What one model part's converter declares; `convert` and `verify` run the steps all of them share around it.

  `fmt` is a source layout name ('wan', 'diffusers', 'transformers'); `shapes` is {source key: shape}; `cfg` is the
  component's config dataclass. The reference side needs torch and runs in float32.
  """
  name: str  # the `component` of the written config.json, as one4d_jax.checkpoints.COMPONENTS names it
  detect_format: Callable[[set[str]], str]  # source keys -> fmt
  read_config: Callable[[str, str, dict], Any]  # (src, fmt, shapes) -> cfg
  rules: Callable[[str, Any, set[str]], list[Rule]]  # (fmt, cfg, source keys) -> the key map of that layout
  abstract_params: Callable[[Any], Any]  # cfg -> the parameter tree's shapes and dtypes
  reference: Callable[[str, str, dict, Any], Any]  # (src, fmt, sources, cfg) -> torch model holding SRC's weights
  reference_rules: Callable[[Any], list[Rule]]  # cfg -> the key map of the reference model's parameter names
  compare: Callable[[Any, Any, Any, np.random.Generator], float]  # (model, params, cfg, rng) -> max |JAX - torch|
  unused_keys: Callable[[str, list[Rule], set[str], Any], set[str]] = lambda fmt, rules, keys, cfg: set()
  read_sources: Callable[[str], dict[str, SourceTensor]] = read_sources  # src -> {key: SourceTensor}


# component name -> the module declaring its COMPONENT (imported on first use: those modules import this one)
REGISTRY = {"dit": "checkpoints_convert.wan_dit", "t5": "checkpoints_convert.wan_t5",
            "clip": "checkpoints_convert.wan_clip", "vae": "checkpoints_convert.wan_vae"}


def get_component(component: Component | str) -> Component:
  """A registered component by name (a Component passes through)."""
  if isinstance(component, Component):
    return component
  if component not in REGISTRY:
    raise ConversionError(f"unknown component {component!r}; known: {sorted(REGISTRY)}")
  return importlib.import_module(REGISTRY[component]).COMPONENT


def convert(component: Component | str, src: str, dst: str, dtype: str = "bf16", progress: bool = True,
            write_mb: int = WRITE_MB):
  """Convert SRC to an orbax checkpoint at DST (see `write_checkpoint`); returns (fmt, cfg). Every tensor is checked
  against the model before anything is written."""
  c = get_component(component)
  if dtype not in DTYPES:
    raise ConversionError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
  sources = c.read_sources(src)
  keys, shapes = set(sources), {k: s.shape for k, s in sources.items()}
  fmt = c.detect_format(keys)
  cfg = c.read_config(src, fmt, shapes).with_policy(param_dtype=DTYPES[dtype], dtype=DTYPES[dtype])
  rules = c.rules(fmt, cfg, keys)
  unused = c.unused_keys(fmt, rules, keys, cfg)
  abstract = c.abstract_params(cfg)
  the_plan = plan(rules, {k: shape for k, shape in shapes.items() if k not in unused}, abstract)
  meta = {"component": c.name, "config": json.loads(cfg.to_json()),
          "source": {"path": os.path.abspath(src), "format": fmt}}
  write_checkpoint(dst, meta, the_plan, sources, abstract, progress=progress, write_mb=write_mb)
  return fmt, cfg


def verify(component: Component | str, src: str, dst: str, seed: int = 0) -> float:
  """Max |JAX - PyTorch| of the converted DST against the component's PyTorch reference built from SRC, on its small
  random input, in float32 with full-precision matmuls. Weights DST stores in bf16 are rounded alike in the reference,
  so the figure measures the port, not the rounding. Needs host memory for the float32 reference plus the stored
  weights (about 35 GB for umT5-XXL)."""
  import jax.numpy as jnp

  from one4d_jax import checkpoints

  c = get_component(component)
  stored_name, _ = checkpoints.read_config(dst)
  if stored_name != c.name:
    raise ConversionError(f"{dst} holds a {stored_name} checkpoint, not a {c.name} one")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference reads SRC, never the network
  stored_cfg, params = checkpoints.load(dst)
  cfg = stored_cfg.with_policy(dtype="float32", param_dtype="float32")
  params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  sources = c.read_sources(src)
  model = c.reference(src, c.detect_format(set(sources)), sources, cfg)
  round_like_stored(model, c.reference_rules(cfg), c.abstract_params(stored_cfg))
  model.eval()
  with jax.default_matmul_precision("highest"):
    return c.compare(model, params, cfg, np.random.default_rng(seed))
