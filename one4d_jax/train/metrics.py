"""Training metrics where people look for them: TensorBoard (WORKDIR/tensorboard, written with tensorboardX, which
needs neither TensorFlow nor torch), WORKDIR/metrics.jsonl (one JSON object per logged step) and a console line;
throughput as step time, clips per second, model TFLOP/s and MFU; preview images of the current model."""

import json
import math
import os

import jax
import numpy as np

from one4d_jax import export, flops
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit

# Peak dense bf16 TFLOP/s per device by `device_kind` (vendor datasheets), for MFU; config.train.peak_tflops overrides.
PEAK_TFLOPS = {"TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
               "TPU v6 lite": 918.0, "TPU v6e": 918.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(override: float = 0.0) -> float | None:
  """Peak TFLOP/s of one device: `override` if > 0, else the datasheet figure of this device kind (None if unknown,
  e.g. CPU: MFU is then not reported)."""
  if override > 0:
    return override
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_TFLOPS.items() if kind.startswith(k) or k in kind), None)


def step_flops(cfg: one4d.One4DConfig, latent_shape: tuple[int, ...]) -> float:
  """Model FLOPs of one optimiser step over a batch of latents [B, 16, F, h, w] (flops.dlc_train_flops: no
  rematerialisation counted)."""
  b, _, f, h, w = latent_shape
  tokens = math.prod(dit.token_grid(cfg.dit, (f, h, w)))
  return b * flops.dlc_train_flops(cfg.base, tokens, cfg.lora_rank, len(cfg.links),
                                   xyz_projections=cfg.xyz_projections)["total"]


def throughput(seconds: float, steps: int, clips: int, step_flops_: float, peak: float | None) -> dict:
  """Per-step figures over `steps` steps that took `seconds` (clips and FLOPs per step)."""
  per_step = seconds / max(steps, 1)
  tflops = step_flops_ / per_step / 1e12 / jax.device_count()
  out = {"step_time_s": per_step, "clips_per_s": clips / per_step, "tflops_per_device": tflops}
  if peak:
    out["mfu"] = tflops / peak
  return out


class Writer:
  """Scalars and images to TensorBoard, scalars to metrics.jsonl and the console; process 0 only."""

  def __init__(self, workdir: str, console=print):
    self._active = jax.process_index() == 0
    self._console = console
    self._jsonl = self._tb = None
    if self._active:
      from tensorboardX import SummaryWriter
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._workdir = workdir

  def scalars(self, step: int, values: dict) -> None:
    if not self._active:
      return
    values = {k: float(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()
    shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    self._console(f"step {step}: {shown}")

  def images(self, step: int, images: dict) -> None:
    """uint8 [H, W, 3] images to TensorBoard and WORKDIR/previews/<step>/<name>.png."""
    if not self._active:
      return
    from PIL import Image
    folder = os.path.join(self._workdir, "previews", f"{step:08d}")
    os.makedirs(folder, exist_ok=True)
    for name, image in images.items():
      self._tb.add_image(f"preview/{name}", image, step, dataformats="HWC")
      Image.fromarray(image).save(os.path.join(folder, f"{name}.png"))
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


def preview_images(frames: np.ndarray, pointmaps: np.ndarray, depth: np.ndarray, picks: int = 3) -> dict:
  """RGB uint8 [F, H, W, 3], pointmaps [F, H, W, 3] in [-1, 1] and depth [F, H, W] -> three strips of `picks` frames
  (first, middle, last ...): the frames, the pointmaps as colours, the depth (near bright, one range per strip), as
  launch.generate writes them (one4d_jax.export)."""
  idx = np.unique(np.linspace(0, len(frames) - 1, picks).round().astype(int))
  strip = lambda x: np.concatenate(list(x[idx]), axis=1)
  depth = np.asarray(depth)[idx]
  return {"rgb": strip(frames), "xyz": strip(export.xyz_colours(pointmaps)),
          "depth": np.concatenate(list(export.depth_colours(depth, np.ones(depth.shape, bool))), axis=1)}
