"""The Grain training pipeline: clips -> windows of F = 4k+1 frames -> resize/crop to the training resolution ->
pointmaps in frame 0's camera -> per-clip [-1, 1] normalisation -> UMC task and observed frames -> numpy batches.

Frame counts: a clip long enough gives windows of `num_frames` (the paper's maximum, 81); a shorter one gives windows
of the longest 4k+1 that fits it (at least `min_frames`), so no clip is dropped. Each global batch holds windows of
one length (one array shape): every epoch, the windows of each length are shuffled and cut into groups of a global
batch (the last group of a length filled up from the same shuffled windows), and the groups are shuffled.

Mixture: the clips may come from several named `Source`s, each with a weight. An epoch has as many windows as all
sources hold (N); source d supplies n_d = w_d / sum(w) N of them, whatever its size (apportioned to integers), split
over window lengths as its own windows are, so every epoch has the same counts. Each epoch draws them afresh: a
random subset of the source's windows of that length while it has enough, else every window k times and a random
subset for the rest. A plain list of clips is one source of weight 1: every window once per epoch.

Determinism and resumption: every random choice (the windows drawn and their order per epoch, crop offset, task,
sparsity) is a function of (seed, global batch size, global element index) only, so a batch does not depend on how
many hosts, workers or restarts there were, and a run resumes at step s by starting the stream at global batch s
(`make_dataset(..., first_batch=s)`). The global stream of windows is redrawn each epoch and cut into blocks of B
(the per-host batch); host p of P takes blocks p, p + P, ..., so global batch s is elements [s B P, (s + 1) B P) of
the stream in order, host p supplying its p-th block: hosts never share an element, and the global batch does not
depend on the number of hosts. The iterator's `get_state()` / `set_state()` (or orbax's
`grain.checkpoint.CheckpointSave/Restore`) restore the exact position.

Batch (numpy, B examples): frames [B, 3, F, H, W] float32 in [-1, 1]; pointmaps [B, 3, F, H, W] float32 in [-1, 1]
(xyz / scale, 0 where invalid); valid [B, F, H, W] bool; observed [B, F] bool; task [B] int32 (index into
`umc.TASKS`); scale [B] float32 (metres per normalised unit); K [B, F, 3, 3] float32 at the output resolution; c2w
[B, F, 4, 4] float32 camera-to-frame-0 in metres; caption [B] str; index [B] int64 (global element index).
"""

import dataclasses
import sys
from collections.abc import Sequence

import grain
import numpy as np

from one4d_jax import umc
from one4d_jax.data.clips import ClipFiles
from one4d_jax.geometry import pointmaps as pm

DEFAULT_TASK_PROBS = tuple(umc.PAPER_TASK_PROBS.items())


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """num_frames F = 4k + 1 at `frame_stride` (clips too short for it: the longest 4k+1 >= min_frames that fits);
  windows start every `window_step` frames of each clip; `random_crop` draws the crop offset (else centred);
  `normalize_quantile` 1.0 = exact max-abs scale (see normalize_pointmaps)."""
  num_frames: int = 81
  min_frames: int = 5
  frame_stride: int = 1
  window_step: int = 1
  height: int = 352
  width: int = 624
  batch_size: int = 1
  seed: int = 0
  random_crop: bool = False
  task_probs: tuple[tuple[str, float], ...] = DEFAULT_TASK_PROBS
  sparsity_range: tuple[float, float] = (0.03, 0.5)
  normalize_quantile: float = 1.0
  num_epochs: int | None = None  # None = repeat forever


def window_length(clip_frames: int, num_frames: int, frame_stride: int) -> int:
  """Frames of a clip's windows: num_frames, or the longest 1 + 4k at frame_stride the clip holds if shorter."""
  fits = (clip_frames - 1) // frame_stride + 1 if clip_frames > 0 else 0
  return min(num_frames, fits - (fits - 1) % umc.TEMPORAL_STRIDE) if fits > 0 else 0


def clip_windows(clips: list[ClipFiles], num_frames: int, frame_stride: int, window_step: int,
                 min_frames: int = 5) -> np.ndarray:
  """[N, 3] (clip index, first frame, frames) of every window at frame_stride: num_frames long where the clip allows,
  else the longest 4k+1 the clip holds (clips shorter than min_frames give none)."""
  umc.check_frame_count(num_frames)
  umc.check_frame_count(min_frames)
  if frame_stride < 1 or window_step < 1 or min_frames > num_frames:
    raise ValueError(f"frame_stride and window_step must be >= 1 and min_frames <= num_frames, got {frame_stride}, "
                     f"{window_step}, {min_frames} and {num_frames}")
  out = []
  for c, clip in enumerate(clips):
    length = window_length(clip.num_frames, num_frames, frame_stride)
    if length >= min_frames:
      span = (length - 1) * frame_stride + 1
      out += [(c, s, length) for s in range(0, clip.num_frames - span + 1, window_step)]
  if not out:
    longest = max((c.num_frames for c in clips), default=0)
    raise ValueError(f"no clip is long enough for {min_frames} frames at stride {frame_stride} (needs "
                     f"{(min_frames - 1) * frame_stride + 1} frames, the longest clip has {longest}); lower "
                     "min_frames or the stride")
  return np.asarray(out, np.int64).reshape(-1, 3)


@dataclasses.dataclass(frozen=True)
class Source:
  """A named dataset of the training mixture: its share of every epoch's windows is weight / (sum of the weights),
  whatever its size; weight 0 leaves it out (its clips are not read)."""
  name: str
  clips: tuple[ClipFiles, ...]
  weight: float = 1.0


def as_sources(data: Sequence[ClipFiles] | Sequence[Source]) -> list[Source]:
  """Sources as given, or a plain list of clips as one source of weight 1."""
  data = list(data)
  return data if data and isinstance(data[0], Source) else [Source("data", tuple(data))]


def check_weight(name: str, weight) -> float:
  """A source's weight as a float >= 0, else an error naming the source."""
  try:
    weight = float(weight)
  except (TypeError, ValueError):
    weight = float("nan")
  if not (np.isfinite(weight) and weight >= 0):
    raise ValueError(f"source {name!r}: weight must be a finite number >= 0 (0 leaves the source out), got {weight}")
  return weight


def weighted_sources(sources: list[Source]) -> list[Source]:
  """The sources of positive weight; a bad weight, a repeated name or no positive weight at all is an error."""
  names = [s.name for s in sources]
  if len(set(names)) != len(names):
    raise ValueError(f"source names must be unique, got {names}")
  kept = [s for s in sources if check_weight(s.name, s.weight) > 0]
  if not kept:
    raise ValueError(f"no source has a positive weight (sources {names}): give at least one a weight > 0")
  return kept


def mixture_windows(sources: list[Source], config: PipelineConfig) -> tuple[list[ClipFiles], np.ndarray, np.ndarray]:
  """(every source's clips in order, their windows [N, 3] as clip_windows gives them, each window's source [N])."""
  clips, windows, owner = [], [], []
  for d, source in enumerate(sources):
    try:
      w = clip_windows(list(source.clips), config.num_frames, config.frame_stride, config.window_step,
                       config.min_frames)
    except ValueError as e:
      raise ValueError(f"source {source.name!r}: {e}") from None
    windows.append(w + np.array([len(clips), 0, 0]))
    owner.append(np.full(len(w), d))
    clips += source.clips
  return clips, np.concatenate(windows), np.concatenate(owner)


def apportion(total: int, weights) -> np.ndarray:
  """Integers proportional to `weights` that sum to `total` (largest remainders; ties go to the first)."""
  quota = total * np.asarray(weights, np.float64) / np.sum(weights)
  out = np.floor(quota).astype(np.int64)
  out[np.argsort(out - quota, kind="stable")[:total - out.sum()]] += 1
  return out


def epoch_counts(windows: np.ndarray, owner: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray]:
  """(window lengths [L], windows each source supplies per length in one epoch [D, L]): all sources' N windows in
  total, w_d / sum(w) of them from source d, split over lengths as its own windows are."""
  lengths = np.unique(windows[:, 2])
  held = np.array([[np.sum((owner == d) & (windows[:, 2] == n)) for n in lengths] for d in range(len(weights))])
  counts = np.stack([apportion(n, row) for n, row in zip(apportion(len(windows), weights), held)])
  used = counts.sum(0) > 0
  return lengths[used], counts[:, used]


def draw(rng: np.random.Generator, members: np.ndarray, count: int) -> np.ndarray:
  """`count` of `members`: all of them count // len times over, then a random subset for the rest (no random numbers
  are drawn when count is a multiple of len, so taking each member once is deterministic)."""
  full, rest = divmod(count, len(members))
  picked = np.tile(members, full)
  return np.concatenate([picked, rng.permutation(members)[:rest]]) if rest else picked


def mixture_summary(data: Sequence[ClipFiles] | Sequence[Source], config: PipelineConfig) -> list[dict]:
  """Per source: name, clips, windows (None if left out), weight, epoch_windows and share of an epoch."""
  sources = as_sources(data)
  kept = weighted_sources(sources)
  _, windows, owner = mixture_windows(kept, config)
  per_source = epoch_counts(windows, owner, [s.weight for s in kept])[1].sum(1)
  rows = {s.name: {"windows": int(np.sum(owner == d)), "epoch_windows": int(per_source[d]),
                   "share": float(per_source[d] / len(windows))} for d, s in enumerate(kept)}
  left_out = {"windows": None, "epoch_windows": 0, "share": 0.0}
  return [{"name": s.name, "clips": len(s.clips), "weight": float(s.weight), **rows.get(s.name, left_out)}
          for s in sources]


class EpochOrder:
  """Which window each element of the (per-epoch redrawn and reshuffled) stream is (see the module docstring), in
  groups of `group` consecutive elements (the global batch) that share one window length. It sees only the windows'
  rows (`windows` [N, 3], each of source `owner` [N]), not their clips: decoded and precomputed windows share it."""

  def __init__(self, windows: np.ndarray, owner: np.ndarray, weights, config: PipelineConfig, group: int = 1):
    self._config = config
    self._group = group
    self._lengths, self._counts = epoch_counts(windows, owner, weights)
    self._members = [[np.flatnonzero((owner == d) & (windows[:, 2] == n)) for n in self._lengths]
                     for d in range(len(weights))]
    self._epoch_len = group * sum(-(-int(count) // group) for count in self._counts.sum(0))  # groups, rounded up
    epochs = config.num_epochs if config.num_epochs is not None else (sys.maxsize // 2) // self._epoch_len
    self._len = self._epoch_len * epochs
    self._cache = (-1, None)  # (epoch, order), replaced as one tuple so reader threads never mix epochs

  def __len__(self) -> int:
    return self._len

  def _order(self, epoch: int) -> np.ndarray:
    """Window indices of one epoch: per length each source's share drawn, shuffled together and cut into groups (the
    last filled up), groups shuffled."""
    rng = np.random.default_rng([self._config.seed, 0, epoch])
    groups = []
    for n in range(len(self._lengths)):
      picked = [draw(rng, self._members[d][n], int(c)) for d, c in enumerate(self._counts[:, n]) if c]
      members = rng.permutation(np.concatenate(picked))
      k = -(-len(members) // self._group)
      groups += list(np.resize(members, k * self._group).reshape(k, self._group))
    return np.concatenate([groups[g] for g in rng.permutation(len(groups))])

  def window(self, index: int) -> int:
    """The row of `windows` that global element `index` is."""
    epoch, j = divmod(int(index), self._epoch_len)
    cached_epoch, order = self._cache
    if cached_epoch != epoch:
      order = self._order(epoch)
      self._cache = (epoch, order)
    return int(order[j])


class WindowSource:
  """Random-access source over the stream of windows of a mixture of sources (`EpochOrder`); element i decodes one
  window."""

  def __init__(self, data: Sequence[ClipFiles] | Sequence[Source], config: PipelineConfig, group: int = 1):
    sources = weighted_sources(as_sources(data))
    self._config = config
    self._clips, self._windows, owner = mixture_windows(sources, config)
    self._order = EpochOrder(self._windows, owner, [s.weight for s in sources], config, group)

  def __len__(self) -> int:
    return len(self._order)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    clip, start, length = self._windows[self._order.window(index)]
    frames = start + self._config.frame_stride * np.arange(length)
    return {"record": self._clips[clip].load(frames), "index": index}


def draw_task(config: PipelineConfig, index: int, num_frames: int | None = None) -> tuple[str, np.ndarray]:
  """The UMC task and observed frames (of `num_frames`, default config.num_frames) of global element `index` (its
  own random stream: seed, 2, index)."""
  rng = np.random.default_rng([config.seed, 2, index])
  return umc.sample_task(rng, num_frames or config.num_frames, dict(config.task_probs), config.sparsity_range)


def training_example(record, index: int, config: PipelineConfig) -> dict:
  """One decoded window -> the model-ready example (see the module docstring for fields)."""
  rng = np.random.default_rng([config.seed, 1, index])
  src_hw, out_hw = record.depth.shape[1:], (config.height, config.width)
  resized_hw = pm.cover_size(src_hw, out_hw)
  if config.random_crop:
    top, left = (int(rng.integers(0, r - o + 1)) for r, o in zip(resized_hw, out_hw))
  else:
    top, left = pm.center_crop_offsets(resized_hw, out_hw)
  frames = pm.resize_crop_frames(record.frames, resized_hw, top, left, out_hw)
  depth, valid = pm.resize_crop_depth(record.depth, record.valid, resized_hw, top, left, out_hw)
  K = pm.resize_crop_intrinsics(record.K, src_hw, resized_hw, top, left)
  xyz, valid = pm.pointmaps_from_depth(depth, K, record.c2w, valid)
  xyz, scale = pm.normalize_pointmaps(xyz, valid, config.normalize_quantile)
  task, observed = draw_task(config, index, len(record.depth))
  return {
      "frames": np.ascontiguousarray(frames.transpose(3, 0, 1, 2), np.float32) / 127.5 - 1.0,
      "pointmaps": np.ascontiguousarray(xyz.transpose(3, 0, 1, 2)),
      "valid": valid,
      "observed": observed,
      "task": np.int32(umc.TASKS.index(task)),
      "scale": np.float32(scale),
      "K": K.astype(np.float32),
      "c2w": pm.relative_poses(record.c2w).astype(np.float32),
      "caption": np.asarray(record.caption),
      "index": np.int64(index),
  }


class _ToExample(grain.transforms.Map):

  def __init__(self, config: PipelineConfig):
    self._config = config

  def map(self, element):
    return training_example(element["record"], element["index"], self._config)


def make_dataset(data: Sequence[ClipFiles] | Sequence[Source], config: PipelineConfig, shard_index: int | None = None,
                 shard_count: int | None = None, first_batch: int = 0) -> grain.MapDataset:
  """The batched MapDataset over `data` (clips, or weighted Sources) for this host: shard `shard_index` of
  `shard_count` (default: this JAX process of all), which supplies rows [shard_index B, (shard_index + 1) B) of every
  global batch of B x shard_count examples, starting at global batch `first_batch` (a resumed run starts at its step:
  the stream depends on nothing else, so a run may resume with another number of hosts)."""
  return host_dataset(lambda group: WindowSource(data, config, group), _ToExample(config), config, shard_index,
                      shard_count, first_batch)


def host_dataset(make_source, transform: grain.transforms.Map, config: PipelineConfig, shard_index: int | None = None,
                 shard_count: int | None = None, first_batch: int = 0) -> grain.MapDataset:
  """This host's batches (see make_dataset) of the stream `make_source(group)` (random access, elements in groups of
  one global batch that share a window length), each element mapped by `transform`."""
  if shard_index is None or shard_count is None:
    import jax
    shard_index, shard_count = jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  source = make_source(config.batch_size * shard_count)  # one window length per global batch
  ds = grain.MapDataset.source(source).map(transform)
  return ds.batch(config.batch_size, drop_remainder=True)[shard_index::shard_count][first_batch:]


def make_iterator(ds: grain.MapDataset, num_workers: int = 0, num_threads: int = 0, prefetch: int = 1):
  """An iterator with exact get_state/set_state. num_threads = 0 decodes in the calling thread; num_threads > 0
  decodes ahead in threads, holding up to `prefetch` batches (grain's own default, 16 threads and 500 batches, is
  set explicitly away from: an 81-frame 352x624 example is about 0.5 GB). num_workers > 0 decodes in worker
  processes (needs absl flags parsed: run under absl.app.run or call absl.flags.FLAGS.mark_as_parsed())."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
  it_ds = ds.to_iter_dataset(options)
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch))
  return iter(it_ds)
