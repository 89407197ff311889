"""From a config to a 4D clip: the model loaded once, then frames (any number) -> UMC condition -> joint RGB / XYZ
sampling per window -> VAE decoding -> joined pointmaps -> cameras and depth by post-optimisation.

The library side of `launch.generate` and `launch.predict`: launchers parse flags and call these functions.
"""

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from one4d_jax import adapters, checkpoints, config_utils, export, runtime, sharding
from one4d_jax import sample as sample_lib
from one4d_jax.data import pipeline as data_pipeline
from one4d_jax.data.readers import READERS, open_clips
from one4d_jax.geometry import pointmaps as pm
from one4d_jax.geometry import postopt, windows
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit
from one4d_jax.models.wan import vae as vae_lib
from one4d_jax.train import inputs
from one4d_jax.train import step as train_lib


class Model(NamedTuple):
  """Everything sampling needs, loaded once."""
  cfg: one4d.One4DConfig
  frozen: dict
  trainable: dict
  enc: inputs.Encoders
  mesh: jax.sharding.Mesh
  hw: tuple[int, int]  # the model's frame size (config.data.height, width)
  max_frames: int  # the longest window (config.data.num_frames)


def require_weights(c) -> None:
  """Only the tiny variant runs on random weights (tests, dry runs)."""
  if not c.model.checkpoint and c.variant != "tiny":
    raise ValueError(f"variant {c.variant!r} needs config.model.checkpoint (a converted Wan DiT folder)")


def frozen_params(c, cfg: one4d.One4DConfig, mesh):
  """The converted Wan DiT, sharded by logical axes with the config's rules; a random one only for the tiny variant
  (tests, dry runs)."""
  shardings = train_lib.frozen_shardings(cfg, mesh)
  if c.model.checkpoint:
    stored, params = checkpoints.load(c.model.checkpoint, shardings=shardings)
    if stored.architecture() != cfg.dit.architecture():  # execution policy: the config's wins
      raise ValueError(f"{c.model.checkpoint} holds a different architecture: {stored.architecture()}; the config "
                       f"asks for {cfg.dit.architecture()} (config.model.preset)")
    return params
  require_weights(c)
  init = jax.jit(lambda key: dit.init(cfg.dit, key), out_shardings=shardings,
                 compiler_options=runtime.INIT_COMPILER_OPTIONS)
  return init(jax.random.key(c.seed))


def _manager(workdir: str) -> ocp.CheckpointManager:
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  if manager.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints (written by launch.train)")
  return manager


def _step(manager: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
  if step is None:
    return manager.latest_step()
  if step not in manager.all_steps():
    raise FileNotFoundError(f"{workdir}/checkpoints has no step {step}; it holds steps {sorted(manager.all_steps())}")
  return step


def checkpoint_step(workdir: str, step: int | None = None) -> int:
  """`step` once `workdir` is known to hold its checkpoint; None: the newest checkpoint's step."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist")
  return _step(_manager(workdir), workdir, step)


def check_workdir(workdir: str) -> None:
  """Fails fast (before any model loads) when `workdir` holds no training checkpoint."""
  if workdir:
    checkpoint_step(workdir)


def check_lora(c, lora: str) -> None:
  """Fails fast (before any model loads) when `lora` is not an exported adapter of the config's One4D settings
  (`one4d_jax.adapters.check_adapter`: reads the file's header only)."""
  if lora:
    adapters.check_adapter(lora, model_config(c))


def load_trainable(cfg: one4d.One4DConfig, workdir: str, seed: int, mesh, step: int | None = None) -> dict:
  """The trainable tree of the checkpoint of `step` (None: the newest) in `workdir` (restored onto `mesh`, whatever
  mesh and process count wrote it), or a fresh one (LoRA B and links zero)."""
  tx = train_lib.make_optimizer(train_lib.TrainConfig())  # the state's structure; the values come from the file
  shardings = train_lib.state_shardings(cfg, tx, mesh)
  if not workdir:
    init = lambda: one4d.init_trainable(cfg, dit.abstract_params(cfg.dit), jax.random.key(seed))
    return jax.jit(init, out_shardings=shardings.trainable)()
  manager = _manager(workdir)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        train_lib.abstract_state(cfg, tx), shardings)
  try:
    state = manager.restore(_step(manager, workdir, step),
                            args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError) as e:
    raise ValueError(f"{workdir}: the checkpoint's trainable tree does not match the config (coupling, LoRA targets, "
                     f"links, rank): {str(e).splitlines()[0]}") from None
  return state["state"].trainable


def load(c, workdir: str = "", lora: str = "") -> Model:
  """The model a config describes (converted weights; the LoRA and links of `workdir`'s newest checkpoint, or of the
  exported adapter file `lora` (launch.export_lora), or fresh ones: the base model on RGB, links zero), with the
  encoders, for sampling."""
  if workdir and lora:
    raise ValueError("give either a training run (--workdir) or an exported adapter (--lora), not both")
  cfg = model_config(c)
  cfg = cfg.replace(dit=cfg.dit.with_policy(lora_mode="auto"))
  mesh = sharding.make_mesh(**c.mesh)
  frozen = frozen_params(c, cfg, mesh)
  trainable = adapters.load_adapter(lora, cfg, mesh) if lora else load_trainable(cfg, workdir, c.seed, mesh)
  return Model(cfg, frozen, trainable, config_encoders(c, cfg), mesh, (c.data.height, c.data.width), c.data.num_frames)


def config_encoders(c, cfg: one4d.One4DConfig, text_and_image: bool = True) -> inputs.Encoders:
  """The frozen encoders of config.encoders (the random tiny VAE of the tiny variant seeded from config.seed, so
  precomputing, training and sampling share it); `text_and_image=False`: the VAE alone (training from precomputed
  encodings)."""
  e = c.encoders
  return inputs.load_encoders(e.vae, *((e.t5, e.tokenizer, e.clip) if text_and_image else ()),
                              text_dim=cfg.dit.text_dim, image_dim=cfg.dit.image_dim or 1280,
                              random_tiny=c.variant == "tiny", rng=jax.random.key(c.seed + 2))


def model_config(c) -> one4d.One4DConfig:
  """The One4DConfig a config describes; a key of config.one4d it does not read is an error."""
  if c.one4d.lora_targets not in one4d.TARGET_SETS:
    raise ValueError(f"config.one4d.lora_targets={c.one4d.lora_targets!r}; choose from {sorted(one4d.TARGET_SETS)}")
  return config_utils.build(one4d.One4DConfig, c.one4d, name="config.one4d", dit=dit_config(c),
                            lora_targets=one4d.TARGET_SETS[c.one4d.lora_targets],
                            link_layers=tuple(c.one4d.link_layers) or None)


def dit_config(c) -> dit.DiTConfig:
  """The DiTConfig a config describes: the preset's architecture run by the policy of config.model (with the
  config's sharding rules for its activations); a key of config.model it does not read is an error."""
  arch = dit.preset(c.model.preset)
  return arch.replace(policy=config_utils.build(arch.policy, c.model, name="config.model",
                                                launcher_only=("preset", "checkpoint"),
                                                sharding_rules=sharding_rules(c)))


def sharding_rules(c) -> sharding.Rules:
  """config.sharding_rules as the checked, hashable rules of one4d_jax.sharding."""
  return sharding.as_rules(c.sharding_rules)


def training_clips(fmt: str, paths) -> list:
  """Every clip under `paths` (each a clip or a folder of clips, see `one4d_jax.data.readers.open_clips`)."""
  if not paths:
    raise ValueError("config.data.paths is empty: give clip folders to train on")
  return [clip for path in paths for _, clip in open_clips(fmt, path)]


def training_sources(data) -> list[data_pipeline.Source]:
  """The weighted sources of config.data: one per entry of `mixture` (format, paths, weight), or when it is empty the
  one source `format` / `paths` of weight 1. Every entry is checked before any clip is opened; a source of weight 0
  is not opened."""
  mixture = data.get("mixture") or {}
  entries = dict(mixture) or {"data": dict(format=data.format, paths=data.paths)}
  checked = []
  for name, entry in entries.items():
    field = f"config.data.mixture.{name}" if mixture else "config.data"
    keys = set(entry.keys()) if hasattr(entry, "keys") else set()
    if not {"format", "paths"} <= keys <= {"format", "paths", "weight"}:
      raise ValueError(f"{field} must be a ConfigDict(format=..., paths=(...), weight=1.0), found {entry!r}")
    if entry["format"] not in READERS:
      raise ValueError(f"{field}.format={entry['format']!r} is not a clip format; choose from {sorted(READERS)}")
    weight = data_pipeline.check_weight(name, entry.get("weight", 1.0))
    paths = (entry["paths"],) if isinstance(entry["paths"], str) else tuple(entry["paths"])
    if weight > 0 and not paths:
      raise ValueError(f"{field}.paths is empty: give clip folders to train on"
                       + (", or weight 0 to leave the source out" if mixture else ""))
    checked.append((name, entry["format"], paths, weight))
  return [data_pipeline.Source(name, tuple(training_clips(fmt, paths)) if weight > 0 else (), weight)
          for name, fmt, paths, weight in checked]


def describe_sources(sources: list[data_pipeline.Source], config: data_pipeline.PipelineConfig) -> list[str]:
  """One line per source: clips, windows, weight and share of an epoch."""
  return [f"source {r['name']}: left out (weight 0)" if r["windows"] is None else
          f"source {r['name']}: {r['clips']:,} clips, {r['windows']:,} windows, weight {r['weight']:g}, "
          f"{r['share']:.1%} of each epoch ({r['epoch_windows']:,} windows)"
          for r in data_pipeline.mixture_summary(sources, config)]


# Settings of config.train and config.data launch.train reads itself; every other key is a dataclass field.
TRAIN_LOOP = ("batch_size", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "peak_tflops", "preview_every",
              "preview_clip", "preview_steps")
DATA_SOURCES = ("format", "paths", "mixture", "num_workers", "precomputed")


def train_config(c, accum_steps: int) -> train_lib.TrainConfig:
  """config.train as the step's TrainConfig, with the micro-batch count of `batch_plan`."""
  return config_utils.build(train_lib.TrainConfig, c.train, name="config.train", launcher_only=TRAIN_LOOP,
                            accum_steps=accum_steps)


def pipeline_config(c, batch_size: int) -> data_pipeline.PipelineConfig:
  """config.data as the pipeline's PipelineConfig, with this process's examples per step (`batch_plan`) and the
  run's seed (the stream, and so a resumed run's batches, depend on it alone)."""
  return config_utils.build(data_pipeline.PipelineConfig, c.data, name="config.data", launcher_only=DATA_SOURCES,
                            batch_size=batch_size, seed=c.seed)


def batch_plan(c, mesh, rules) -> tuple[int, int]:
  """(examples this process reads per optimiser step, micro-batches per step) from config.train.batch_size and
  accum_steps, checked before any model loads: every micro-batch spans the data-parallel devices evenly, and every
  process reads an equal share."""
  size, processes = sharding.data_parallel_size(mesh, rules), jax.process_count()
  total, accum = c.train.batch_size, c.train.accum_steps
  if total == -1:
    total = size * max(accum, 1)
  if accum == -1:
    accum = max(total // size, 1)
  if total < 1 or accum < 1 or total % (accum * size) or total % processes:
    raise ValueError(f"config.train.batch_size={c.train.batch_size} does not split into accum_steps="
                     f"{c.train.accum_steps} micro-batches over {size} data-parallel devices (mesh {dict(mesh.shape)})"
                     f" read by {processes} processes: make it a multiple of {size} (and of the processes), with "
                     f"accum_steps dividing batch_size / {size}, or set -1")
  return total // processes, accum


def sampler_config(c, **flags) -> sample_lib.SamplerConfig:
  """config.sample as the sampler's SamplerConfig; a key it does not read, or a bad value (an unknown sampler), is an
  error. `flags` that are not None (a launcher's --sampler, --steps, ...) replace the config's values."""
  return config_utils.build(sample_lib.SamplerConfig, c.sample, name="config.sample",
                            **{k: v for k, v in flags.items() if v is not None})


def replicated(mesh, tree):
  """Arrays every process computed alike -> global arrays replicated over the mesh."""
  target = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: None if x is None else jax.make_array_from_process_local_data(target, np.asarray(x)),
                      tree)


def sample_window(model: Model, frames: np.ndarray, observed: np.ndarray, prompt: str = "",
                  negative_prompt: str = "", sc: sample_lib.SamplerConfig = sample_lib.SamplerConfig(),
                  rng: jax.Array | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """One window of 1 + 4k frames: uint8 frames [F, H, W, 3] at the model's size (unobserved ones unused), observed
  bool [F] -> decoded RGB and XYZ [F, H, W, 3] in [-1, 1]."""
  if prompt and model.enc.t5 is None:
    raise ValueError("a prompt needs a text encoder: set config.encoders.t5 and config.encoders.tokenizer")
  video = frames.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5 - 1.0
  if progress:
    encoders = [f"{int(observed.sum())} observed frames through the VAE (UMC condition)",
                *(["the prompt through umT5"] if prompt else []),
                *(["the first observed frame through CLIP"] if model.enc.clip is not None else [])]
    print(f"encoding: {', '.join(encoders)}", flush=True)
    print(f"sampling: {sc.describe()}", flush=True)
  batch = inputs.conditions(model.enc, video, observed[None], [prompt])
  negative = None
  if sc.guidance != 1.0:
    negative = (inputs.encode_text(model.enc, [negative_prompt]) if negative_prompt
                else jnp.zeros((1, 1, model.cfg.dit.text_dim), jnp.float32))
  rng = jax.random.key(0) if rng is None else rng
  # the same inputs on every process, replicated over the mesh; the guided batch is split over its data axes
  batch, negative, key = replicated(model.mesh, (batch, negative, jax.random.key_data(rng)))
  with jax.set_mesh(model.mesh):
    rgb_lat, xyz_lat = sample_lib.sample(model.frozen, model.trainable, model.cfg, jax.random.wrap_key_data(key),
                                         batch["cond"], batch["text"], negative, batch["clip"], sc, progress=progress)
  if progress:
    print("decoding: RGB and XYZ latents through the VAE", flush=True)
  latents = multihost_utils.process_allgather(jnp.concatenate([rgb_lat, xyz_lat]), tiled=True)
  rgb, xyz = np.asarray(_decode(model.enc.vae, model.enc.vae_cfg, latents)).transpose(0, 2, 3, 4, 1)
  return rgb, xyz


@functools.partial(jax.jit, static_argnames="vae_cfg")
def _decode(vae, vae_cfg, latents):
  """Latents [B, 16, f, h, w] -> videos [B, 3, F, H, W] (on this process's first device)."""
  return vae_lib.decode(vae, vae_cfg, latents)


class Sample(NamedTuple):
  frames: np.ndarray  # uint8 [F, H, W, 3]
  pointmaps: np.ndarray  # float32 [F, H, W, 3], frame 0's camera, normalised units
  valid: np.ndarray  # bool [F, H, W]: plausible points (pointmaps.plausible_points)
  windows: list[tuple[int, int]]  # (first frame, frames) of each window sampled


def sample_clip(model: Model, frames: np.ndarray, observed: np.ndarray, prompt: str = "", negative_prompt: str = "",
                sc: sample_lib.SamplerConfig = sample_lib.SamplerConfig(), seed: int = 0, overlap: int | None = None,
                progress: bool = True) -> Sample:
  """Any number of frames (uint8 [F, H, W, 3] at the model's size, observed bool [F]): padded to 1 + 4k, or
  sampled in overlapping windows of `model.max_frames` joined into frame 0's camera (`geometry.windows`)."""
  if frames.shape[1:] != (*model.hw, 3) or observed.shape != frames.shape[:1]:
    raise ValueError(f"frames {frames.shape} and observed {observed.shape} do not match the model's "
                     f"[F, {model.hw[0]}, {model.hw[1]}, 3] and [F]")
  spans = windows.frame_windows(len(frames), model.max_frames, overlap)
  rgbs, xyzs, valids = [], [], []
  for k, (start, length) in enumerate(spans):
    if progress and len(spans) > 1:
      print(f"window {k + 1}/{len(spans)}: frames {start}..{start + length - 1}", flush=True)
    n = windows.padded_length(length)
    pick = slice(start, start + length)
    rgb, xyz = sample_window(model, windows.pad_frames(frames[pick], n), windows.pad_frames(observed[pick], n),
                             prompt, negative_prompt, sc, jax.random.fold_in(jax.random.key(seed), k), progress)
    rgbs.append(rgb[:length])
    xyzs.append(xyz[:length])
    valids.append(pm.plausible_points(xyz[:length]))
  xyz, valid, _ = windows.join_windows(xyzs, valids, spans)
  rgb = np.zeros((len(frames), *rgbs[0].shape[1:]), np.float32)
  for (start, length), r in zip(spans, rgbs):
    rgb[start:start + length] = r  # a later window's frames replace the earlier's: no cross-faded ghosts
  return Sample(np.clip(np.round((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8), xyz, valid, spans)


def cameras(sample: Sample, iters: int = 300, progress: bool = False) -> postopt.PostOptResult:
  """Post-optimised cameras and depth of a sample's plausible points (a progress bar with `progress`; Ctrl-C lands
  within a few seconds); non-finite results are an error, not output."""
  if not sample.valid.any():
    raise ValueError("no plausible point in the sampled pointmaps (all non-finite, outside the [-1, 1] cube or at "
                     "the origin): nothing to recover cameras from")
  out = postopt.post_optimize(sample.pointmaps, sample.valid, cfg=postopt.PostOptConfig(iters=iters),
                             progress=progress)
  bad = [name for name in ("depth", "K", "c2w") if not np.all(np.isfinite(np.asarray(getattr(out, name))))]
  if bad:
    raise FloatingPointError(f"post-optimisation gave non-finite {', '.join(bad)}")
  export.check_focal(np.asarray(out.K), sample.pointmaps.shape[2])
  return out
