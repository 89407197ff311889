"""Training windows encoded once: the frozen encoders' outputs of every window the pipeline can draw, in ArrayRecord
shards, so a training step encodes only the UMC condition (and umT5 and CLIP are never loaded for training).

Why per window, not per element: with centred crops (`random_crop=False`) a window's frames, pointmaps, latents,
caption embedding and frame-0 CLIP features do not depend on which element of the stream draws it; only the task
(observed frames, hence the UMC condition) does. So each window is encoded once, and the reader reproduces the
pipeline's stream exactly: `pipeline.EpochOrder` over the same windows (per-epoch draws, length groups, order),
`pipeline.draw_task` per global element index. Precompute then train draws what training on the fly draws.

CLIP: the training batch holds the CLIP features of each example's first observed frame. Every task that observes a
frame observes frame 0 (`umc.observed_frames`: single_image and full_video, and sparse keeps the first and last),
and text observes none (features zeroed), so frame 0's features are exact; `inputs.precomputed_batch` refuses an
example that breaks this.

Layout of DIR: `manifest.json` (what was encoded and how: pipeline fields, sources, encoders, shard count),
`windows.npz` (windows [N, 3], their sources [N], the rows stored [M]) and `shard-KKKKK-of-SSSSS.array_record`, shard
k holding stored rows [k S, (k + 1) S) in order, one record per window (`encode_record`: numpy .npz bytes). A shard
is written under a temporary name and renamed when complete, so a rerun skips complete shards and redoes the rest.
"""

import dataclasses
import hashlib
import io
import json
import os

import grain
import numpy as np

from one4d_jax import umc
from one4d_jax.data import pipeline

VERSION = 1
MANIFEST, INDEX = "manifest.json", "windows.npz"
# PipelineConfig fields that change what a window encodes to (the others are drawn at read time)
CONTENT_FIELDS = ("num_frames", "min_frames", "frame_stride", "window_step", "height", "width", "normalize_quantile",
                  "random_crop")


def config_identity(c) -> dict:
  """What of a training config (ml_collections) precomputed encodings depend on beyond the PipelineConfig: the
  sources (format, paths, weight), the data fields, the encoders (a random tiny VAE by its seed)."""
  mixture = c.data.get("mixture") or {}
  entries = mixture.to_dict() if mixture else {"data": {"format": c.data.format, "paths": c.data.paths}}
  sources = {name: {"format": e["format"], "paths": [e["paths"]] if isinstance(e["paths"], str) else list(e["paths"]),
                    "weight": float(e.get("weight", 1.0))} for name, e in entries.items()}
  fields = {f: c.data[f] for f in CONTENT_FIELDS if f in c.data}
  vae = c.encoders.vae or (f"random tiny (seed {c.seed})" if c.variant == "tiny" else "")
  encoders = {"vae": vae, "t5": c.encoders.t5, "tokenizer": c.encoders.tokenizer, "clip": c.encoders.clip}
  return _plain({"sources": sources, "data": fields, "encoders": encoders})


def _plain(x):
  """JSON's view of x (tuples as lists), so identities compare equal to what a manifest file holds."""
  return json.loads(json.dumps(x))


def _differences(found: dict, want: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(found) | set(want)):
    a, b = found.get(key), want.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
  return out


def shard_path(directory: str, shard: int, count: int) -> str:
  return os.path.join(directory, f"shard-{shard:05d}-of-{count:05d}.array_record")


def _digest(*arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.ascontiguousarray(a, np.int64).tobytes())
  return h.hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The windows to encode into `directory` and how they are laid out (see the module docstring)."""
  directory: str
  config: pipeline.PipelineConfig
  clips: tuple
  windows: np.ndarray  # [N, 3] (clip, first frame, frames), pipeline.mixture_windows
  rows: np.ndarray  # [M] sorted rows of `windows` stored
  windows_per_shard: int

  @property
  def num_shards(self) -> int:
    return -(-len(self.rows) // self.windows_per_shard)


def plan(data, config: pipeline.PipelineConfig, directory: str, identity: dict, steps: int = 0, global_batch: int = 0,
         windows_per_shard: int = 16) -> Plan:
  """Checks what to encode and writes DIR's manifest and index (or checks them against a previous run's): every
  window of `data` (clips or weighted Sources), or with `steps` only those the first `steps` global batches of
  `global_batch` examples draw. Cheap: no model is involved."""
  if config.random_crop:
    raise ValueError("precomputed encodings need centred crops (random_crop=False): a random crop is drawn per "
                     "element, so a window's encoding would depend on which element draws it")
  if windows_per_shard < 1 or steps < 0 or (steps and global_batch < 1):
    raise ValueError(f"need windows_per_shard >= 1, steps >= 0 and, with steps, global_batch >= 1; got "
                     f"{windows_per_shard}, {steps} and {global_batch}")
  sources = pipeline.weighted_sources(pipeline.as_sources(data))
  clips, windows, owner = pipeline.mixture_windows(sources, config)
  weights = [s.weight for s in sources]
  if steps:
    order = pipeline.EpochOrder(windows, owner, weights, config, global_batch)
    rows = np.unique([order.window(i) for i in range(steps * global_batch)])
  else:
    rows = np.arange(len(windows))
  manifest = _plain({
      "version": VERSION, "pipeline": {f: getattr(config, f) for f in CONTENT_FIELDS}, "identity": identity,
      "sources": [s.name for s in sources], "weights": weights, "steps": steps, "global_batch": global_batch,
      "windows": len(windows), "stored": len(rows), "windows_per_shard": windows_per_shard,
      "shards": -(-len(rows) // windows_per_shard), "index_sha256": _digest(windows, owner, rows)})
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      found = json.load(f)
    differences = _differences(found, manifest)
    if differences:
      raise ValueError(f"{directory} holds encodings of another configuration ({'; '.join(differences)}): give "
                       "another output folder, or remove it")
  else:  # every writer writes the same bytes; each rename is atomic
    index = io.BytesIO()
    np.savez(index, windows=windows, owner=owner, rows=rows)
    _write_atomic(os.path.join(directory, INDEX), index.getvalue())
    _write_atomic(path, json.dumps(manifest, indent=1).encode())
  return Plan(directory, config, tuple(clips), windows, rows, windows_per_shard)


def encode_record(enc, record, row: int, config: pipeline.PipelineConfig) -> bytes:
  """One decoded window -> its record: `window` (row), uint8 `frames` [3, F, H, W] at the training resolution (the
  UMC condition is encoded from them in the step), `rgb`, `xyz`, `xyz_valid`, `text` (without the zero rows of its
  padding; `text_len` rows in all), `clip` (with a CLIP encoder), packed pixel `valid`, `scale`, `K`, `c2w`,
  `caption`."""
  from one4d_jax.train import inputs
  example = pipeline.training_example(record, 0, config)  # a centred crop: the same for every element
  encoded = inputs.window_encodings(enc, example)
  text = encoded.pop("text")
  real = np.flatnonzero(np.any(text != 0, axis=1))
  arrays = {
      "window": np.int64(row),
      "frames": np.rint((example["frames"] + 1.0) * 127.5).astype(np.uint8),  # exact: frames are uint8 / 127.5 - 1
      **encoded,
      "text": text[:real[-1] + 1 if len(real) else 0], "text_len": np.int64(len(text)),
      "valid": np.packbits(example["valid"]),
      **{k: example[k] for k in ("scale", "K", "c2w", "caption")},
  }
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def decode_record(data: bytes) -> dict:
  """A record's arrays, text padded back to `text_len` rows and `valid` unpacked to [F, H, W] bool."""
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    r = {k: z[k] for k in z.files}
  text = r.pop("text")
  r["text"] = np.pad(text, ((0, int(r.pop("text_len")) - len(text)), (0, 0)))
  shape = r["frames"].shape[1:]
  r["valid"] = np.unpackbits(r["valid"], count=int(np.prod(shape))).reshape(shape).astype(bool)
  return r


def write_shards(enc, p: Plan, process_index: int = 0, process_count: int = 1, progress: bool = True) -> dict:
  """Encodes shards process_index, process_index + process_count, ... of the plan that are not complete yet (a
  temporary file left by an interrupted run is redone). Returns {"written": [...], "skipped": [...]} shard indices."""
  from array_record.python.array_record_module import ArrayRecordWriter
  from tqdm import tqdm

  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  mine = range(process_index, p.num_shards, process_count)
  todo = [k for k in mine if not os.path.exists(shard_path(p.directory, k, p.num_shards))]
  rows = {k: p.rows[k * p.windows_per_shard:(k + 1) * p.windows_per_shard] for k in todo}
  bar = tqdm(total=sum(len(r) for r in rows.values()), desc="encoding windows", unit="window", disable=not progress)
  for k in todo:
    path = shard_path(p.directory, k, p.num_shards)
    tmp = f"{path}.tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    for row in rows[k]:
      clip, start, length = p.windows[row]
      record = p.clips[clip].load(start + p.config.frame_stride * np.arange(length))
      writer.write(encode_record(enc, record, int(row), p.config))
      bar.update()
    writer.close()
    os.replace(tmp, path)
  bar.close()
  return {"written": todo, "skipped": [k for k in mine if k not in todo]}


@dataclasses.dataclass(frozen=True)
class Precomputed:
  """An opened DIR: its manifest and index (windows [N, 3], owner [N], rows [M])."""
  directory: str
  manifest: dict
  windows: np.ndarray
  owner: np.ndarray
  rows: np.ndarray

  def shard_paths(self) -> list[str]:
    count = self.manifest["shards"]
    return [shard_path(self.directory, k, count) for k in range(count)]


def open_dir(directory: str, identity: dict | None = None) -> Precomputed:
  """DIR checked complete (every shard written) and, given a config's identity (`config_identity`), made from the
  same sources, data fields and encoders."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: config.data.precomputed must be a folder written by "
                            "`python -m launch.precompute`")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("version") != VERSION:
    raise ValueError(f"{directory} was written by format version {manifest.get('version')}, this code reads "
                     f"{VERSION}: precompute again")
  if identity is not None:
    differences = _differences(manifest["identity"], _plain(identity))
    if differences:
      raise ValueError(f"{directory} was precomputed from another configuration ({'; '.join(differences)}): train "
                       "with the config it was precomputed with, or precompute again")
  with np.load(os.path.join(directory, INDEX)) as z:
    pre = Precomputed(directory, manifest, z["windows"], z["owner"], z["rows"])
  if _digest(pre.windows, pre.owner, pre.rows) != manifest["index_sha256"]:
    raise ValueError(f"{directory}/{INDEX} does not match its manifest: precompute again into a new folder")
  missing = [k for k, p in enumerate(pre.shard_paths()) if not os.path.isfile(p)]
  if missing:
    raise ValueError(f"{directory} is incomplete: {len(missing)} of {manifest['shards']} shards missing (first: "
                     f"{missing[0]}): rerun `python -m launch.precompute` with the same arguments to finish it")
  return pre


class PrecomputedSource:
  """The pipeline's stream (`pipeline.EpochOrder`) over precomputed windows: element i reads its window's record.
  Refuses, when built, a stream whose elements [start, stop) need a window DIR does not hold."""

  def __init__(self, pre: Precomputed, config: pipeline.PipelineConfig, group: int, start: int = 0,
               stop: int | None = None):
    stored = pre.manifest["pipeline"]
    differences = _differences(stored, _plain({f: getattr(config, f) for f in CONTENT_FIELDS}))
    if differences:
      raise ValueError(f"{pre.directory} was precomputed with other pipeline settings ({'; '.join(differences)})")
    weights = pre.manifest["weights"]
    self._order = pipeline.EpochOrder(pre.windows, pre.owner, weights, config, group)
    self._rows = pre.rows
    if stop is not None:
      needed = np.unique([self._order.window(i) for i in range(start, stop)])
      absent = np.setdiff1d(needed, self._rows)
      if len(absent):
        raise ValueError(f"{pre.directory} holds the windows of the first {pre.manifest['steps']} batches of "
                         f"{pre.manifest['global_batch']} (launch.precompute --steps); elements [{start}, {stop}) of "
                         f"global batches of {group} need {len(absent)} more: precompute with more steps (or all)")
    self._records = grain.sources.ArrayRecordDataSource(pre.shard_paths())

  def __len__(self) -> int:
    return len(self._order)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    row = self._order.window(index)
    position = int(np.searchsorted(self._rows, row))
    record = decode_record(self._records[position])
    if int(record["window"]) != row:
      raise ValueError(f"record {position} holds window {int(record['window'])}, expected {row}: the shards do not "
                       "match the index; precompute again into a new folder")
    return {"record": record, "index": index}


class _ToExample(grain.transforms.Map):

  def __init__(self, config: pipeline.PipelineConfig):
    self._config = config

  def map(self, element):
    r, index = element["record"], element["index"]
    task, observed = pipeline.draw_task(self._config, index, r["frames"].shape[1])
    example = {k: r[k] for k in ("frames", "rgb", "xyz", "xyz_valid", "valid", "scale", "K", "c2w", "caption", "text")}
    if "clip" in r:
      example["clip"] = r["clip"]
    return {**example, "observed": observed, "task": np.int32(umc.TASKS.index(task)), "index": np.int64(index)}


def make_dataset(pre: Precomputed, config: pipeline.PipelineConfig, shard_index: int | None = None,
                 shard_count: int | None = None, first_batch: int = 0, last_batch: int | None = None):
  """This host's batches of precomputed examples, as `pipeline.make_dataset` gives the decoded ones (same elements,
  tasks and order; frames uint8 [B, 3, F, H, W], plus rgb, xyz, xyz_valid, text and clip: see
  `inputs.precomputed_batch`). `last_batch`: the run's last global batch, checked to be covered by DIR."""

  def source(group):
    stop = None if last_batch is None else last_batch * group
    return PrecomputedSource(pre, config, group, first_batch * group, stop)

  return pipeline.host_dataset(source, _ToExample(config), config, shard_index, shard_count, first_batch)
