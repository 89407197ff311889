"""One4D: the Wan2.1-Fun-InP DiT with Decoupled LoRA Control.

Variants pick the base model size: `tiny` (tests, seconds on CPU), `1.3b` (Wan2.1-Fun-1.3B-InP), `14b`
(Wan2.1-Fun-V1.1-14B-InP, the paper's model). `runlocal=True` shrinks everything that costs memory or time so the
config runs on a laptop CPU.

  python -m checkpoints_convert.wan --component dit --src Wan2.1-Fun-V1.1-14B-InP --dst ckpt/dit
  python -m launch.<command> --config configs/one4d.py:variant=14b,runlocal=True --config.model.remat=dots

Every field can be overridden on the command line as `--config.section.field=value`. The sections `train`, `data`
and `sample` hold every field of one4d_jax.train.step.TrainConfig, one4d_jax.data.pipeline.PipelineConfig and
one4d_jax.sample.SamplerConfig at the dataclass's default (`one4d_jax.config_utils.section`), plus the settings only
the launcher reads; a key that is neither is an error when the dataclass is built. `sweep(add)` below lists the points
`python -m launch.sweep --config=configs/one4d.py:variant=14b --workdir_root=runs/sweep` trains.
"""

import ml_collections

from configs.common import parse_arg
from one4d_jax import config_utils
from one4d_jax.data.pipeline import PipelineConfig
from one4d_jax.models import one4d
from one4d_jax.sample import SamplerConfig
from one4d_jax.train.step import TrainConfig

# variant -> DiT preset of one4d_jax.models.wan.dit.PRESETS
VARIANTS = {"tiny": "tiny", "1.3b": "fun-inp-1.3b", "14b": "fun-inp-14b"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="14b", runlocal=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg.variant!r}; choose from {sorted(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.variant = arg.variant
  c.seed = 0

  # The base DiT: a preset plus execution policy (see one4d_jax.models.wan.dit.DiTConfig).
  c.model = ml_collections.ConfigDict()
  c.model.preset = VARIANTS[arg.variant]
  c.model.dtype = "float32" if arg.variant == "tiny" else "bfloat16"
  c.model.param_dtype = "float32" if arg.variant == "tiny" else "bfloat16"
  c.model.attention = "auto"  # per_head on CPU, cudnn on GPU (bf16), splash on TPU: one4d_jax.models.attention
  c.model.lora_mode = "factored"  # "auto" for sampling: merges W + s A B where cheaper (one4d_jax.models.lora)
  # remat: one4d_jax.models.wan.dit.remat_policy; context_parallel: none | ulysses | ring, self-attention over the
  # mesh's `context` axis. 14b: what fits 8 devices of 80 GB at 81 x 352 x 624 (README, Planning: 37 GiB).
  c.model.remat = {"tiny": "none", "1.3b": "full", "14b": "full"}[arg.variant]
  c.model.context_parallel = "ulysses" if arg.variant == "14b" else "none"
  c.model.checkpoint = ""  # a folder written by `python -m checkpoints_convert.wan --component dit`

  # Decoupled LoRA Control (one4d_jax.models.one4d.One4DConfig; its DiT is config.model). lora_targets: a name in
  # one4d_jax.models.one4d.TARGET_SETS (blocks | all); link_layers: block indices followed by a control link, empty =
  # five evenly spaced; xyz_projections: the XYZ branch's own patch embedding and head (False: Wan's frozen ones).
  c.one4d = config_utils.section(one4d.One4DConfig, derived=("dit", "lora_targets", "link_layers"),
                                 lora_targets="blocks", link_layers=())
  if arg.variant == "tiny":
    c.one4d.lora_rank, c.one4d.lora_alpha = 4, 4.0

  # Mesh (data, fsdp, context, tensor); -1 takes the remaining devices. The batch is split over data x fsdp.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=2 if arg.variant == "14b" else 1, tensor=1))
  # The one place that maps logical axis names to mesh axes, for parameters and activations alike (first match wins;
  # a name already placed on a mesh axis leaves later dimensions of the same tensor off it; a name without a rule is
  # an error). Parameters: stored split over `embed` on fsdp and context (maxtext's FSDP over the sequence axis too),
  # heads and MLP over `tensor`, a LoRA factor's rank axis over what its other axis leaves free. Activations: tokens
  # [branch, batch, length, embed] with the batch over every data-parallel axis and the video tokens over `context`;
  # text and CLIP tokens (`activation_context`) are never split.
  c.sharding_rules = [
      ("layers", None), ("embed", ("fsdp", "context")), ("heads", "tensor"), ("mlp", "tensor"),
      ("lora_rank", ("fsdp", "context")), ("link", None),
      ("patch", None), ("patch_out", None), ("freq", None), ("embed_out", None), ("text", None), ("image", None),
      ("image_out", None), ("vocab", None), ("conv_in", None), ("conv_out", None),
      ("activation_branch", None), ("activation_batch", ("data", "fsdp")), ("activation_length", "context"),
      ("activation_embed", None), ("activation_heads", "tensor"), ("activation_mlp", "tensor"),
      ("activation_context", None),
  ]

  # Training data (one4d_jax.data.pipeline.PipelineConfig; batch_size and seed come from train.batch_size and seed):
  # clip folders read by `format` (a name in one4d_jax.data.READERS); each path is a clip or a folder of clips.
  # mixture: named sources, each ConfigDict(format=..., paths=(...), weight=1.0), trained on instead of format / paths
  # when not empty (one4d_jax.data.pipeline.Source). Every epoch has as many windows as all sources hold; a source's
  # share of them is weight / (sum of the weights), whatever its size: a small source repeats its windows, a large one
  # gives a new random subset each epoch. Weight 0 leaves a source out. The paper's recipe is two halves of ~17k
  # clips, synthetic (pointodyssey, tartanair, omniworld_game: weight 1 each) and BEDLAM + SpatialVID (bedlam,
  # spatialvid: 1.5 each), named by their formats, e.g. for two of them (the paths are yours):
  #   --config.data.mixture="{'pointodyssey': {'format': 'pointodyssey', 'paths': ('data/po',), 'weight': 1.0},
  #                           'bedlam': {'format': 'bedlam', 'paths': ('data/bedlam',), 'weight': 1.5}}"
  # A source already in the config (a config file of your own: README, Training mixture) is tuned from the command
  # line as --config.data.mixture.<name>.weight=0.5.
  c.data = config_utils.section(PipelineConfig, derived=("batch_size", "seed"), format="clipfolder", paths=(),
                                mixture=ml_collections.ConfigDict(), num_workers=0)
  # num_frames: the longest window F = 4k + 1 (the paper's 81); clips too short for it give windows of the longest
  # 4k+1 they hold, down to min_frames (each global batch has one length; one compiled step per length).
  if arg.variant == "tiny":
    c.data.num_frames, c.data.height, c.data.width = 5, 64, 96
  # Pointmaps are divided by this quantile of the valid points' largest absolute coordinate, and clipped to [-1, 1]:
  # one far point (sky, a distant wall) does not squash the whole clip (1.0, the library's default: the exact
  # maximum, nothing clipped).
  c.data.normalize_quantile = 0.99
  # precomputed: a folder written by `python -m launch.precompute` with this config: training reads the windows'
  # latents, caption and CLIP embeddings from it, encodes only the UMC condition, and never loads umT5 or CLIP.
  c.data.precomputed = ""

  # Frozen encoders: folders written by `python -m checkpoints_convert.wan --component vae|t5|clip`; the umT5
  # tokenizer folder. Empty t5 / clip: zero text / image conditions. Empty vae: a random tiny VAE for `tiny` only.
  c.encoders = ml_collections.ConfigDict(dict(vae="", t5="", tokenizer="", clip=""))

  # Optimisation (one4d_jax.train.step.TrainConfig: AdamW, warmup, clipping, timesteps, loss weights) and the loop.
  # The paper's run: 8 GPUs x 1 clip x gradient accumulation 4 = 32 clips per optimiser step, 5,500 steps, AdamW at
  # 1e-4. batch_size: clips per optimiser step over all processes (-1: one per data-parallel device); accum_steps:
  # micro-batches it is split into, each spanning every data-parallel device (-1: batch_size / data-parallel devices,
  # i.e. one clip per device per micro-batch: 4 on a mesh with 8 data-parallel devices, 8 on the 14b default mesh of
  # fsdp 4 x context 2, where two devices share a clip); one4d_jax.pipeline.batch_plan turns both into the step's.
  # peak_tflops: per device, for MFU (0 = the datasheet figure of the device kind; none on CPU). Every
  # preview_every steps (0 = never) the current model reconstructs preview_clip ('' = the first training clip) with
  # preview_steps Euler steps; RGB, XYZ and depth strips go to TensorBoard and WORKDIR/previews/.
  c.train = config_utils.section(TrainConfig, derived=("accum_steps",), accum_steps=-1,
                                 batch_size=-1 if arg.variant == "tiny" or arg.runlocal else 32, steps=5_500,
                                 log_every=10, checkpoint_every=500, keep_checkpoints=3, peak_tflops=0.0,
                                 preview_every=0 if arg.variant == "tiny" else 500, preview_clip="",
                                 preview_steps=10)

  # Sampling (one4d_jax.sample.SamplerConfig) for launch.generate and launch.predict: the paper's 50 Euler steps, CFG 6
  # on both modalities, shift 5.
  c.sample = config_utils.section(SamplerConfig)

  if arg.runlocal:  # a run that finishes on a CPU in minutes: proves the whole path, learns nothing
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
    c.model.remat, c.model.context_parallel = "none", "none"
    c.data.num_frames, c.data.min_frames, c.data.height, c.data.width = 5, 5, 64, 96
    c.train.steps, c.train.warmup_steps, c.train.log_every, c.train.checkpoint_every = 20, 2, 1, 10
    c.sample.steps = 4
  return c


def sweep(add):
  """The learning rate against the LoRA rank (alpha = rank: LoRA scale 1), four runs:

    python -m launch.sweep --config=configs/one4d.py:variant=14b --workdir_root=runs/sweep [--print_only]
  """
  for lr in (1e-4, 3e-4):
    for rank in (16, 64):
      add(**{"train.lr": lr, "one4d.lora_rank": rank, "one4d.lora_alpha": float(rank)})
