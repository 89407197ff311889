"""One4D: the Wan2.1-Fun-InP DiT with Decoupled LoRA Control.

Variants pick the base model size: `tiny` (tests, seconds on CPU), `1.3b` (Wan2.1-Fun-1.3B-InP), `14b`
(Wan2.1-Fun-V1.1-14B-InP, the paper's model). `runlocal=True` shrinks everything that costs memory or time so the
config runs on a laptop CPU.

  python -m checkpoints_convert.wan --component dit --src Wan2.1-Fun-V1.1-14B-InP --dst ckpt/dit
  python -m launch.<command> --config configs/one4d.py:variant=14b,runlocal=True --config.model.remat=dots

Every field can be overridden on the command line as `--config.key=value`.
"""

import ml_collections

from configs.common import parse_arg

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
  c.model.attention = "auto"  # per_head on CPU, cudnn on GPU (bf16), xla on TPU: one4d_jax.models.attention
  c.model.lora_mode = "factored"  # "auto" for sampling: merges W + s A B where cheaper (one4d_jax.models.lora)
  # remat: one4d_jax.models.wan.dit.remat_policy; context_parallel: none | ulysses | ring, self-attention over the
  # mesh's `context` axis. 14b: what fits 8 devices of 80 GB at 81 x 352 x 624 (README, Planning: 37 GiB).
  c.model.remat = {"tiny": "none", "1.3b": "full", "14b": "full"}[arg.variant]
  c.model.context_parallel = "ulysses" if arg.variant == "14b" else "none"
  c.model.checkpoint = ""  # a folder written by `python -m checkpoints_convert.wan --component dit`

  # Decoupled LoRA Control (one4d_jax.models.one4d.One4DConfig). link_layers: block indices followed by a control
  # link; empty = five evenly spaced.
  c.one4d = ml_collections.ConfigDict()
  c.one4d.coupling = "dlc"
  c.one4d.lora_rank = 64
  c.one4d.lora_alpha = 64.0
  c.one4d.lora_targets = "blocks"  # a name in one4d_jax.models.one4d.TARGET_SETS: blocks | all
  c.one4d.link_layers = ()
  c.one4d.xyz_projections = True  # the XYZ branch's own patch embedding and head (False: Wan's frozen ones)
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

  # Training data (one4d_jax.data): clip folders read by `format` (a name in one4d_jax.data.READERS); each path is a
  # clip or a folder of clips. Frames F = 4k + 1.
  c.data = ml_collections.ConfigDict()
  c.data.format = "clipfolder"
  c.data.paths = ()
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
  c.data.mixture = ml_collections.ConfigDict()
  # num_frames: the longest window (the paper's 81); clips too short for it give windows of the longest 4k+1 they
  # hold, down to min_frames (each global batch has one length; one compiled step per length).
  c.data.num_frames = 5 if arg.variant == "tiny" else 81
  c.data.min_frames = 5
  c.data.height, c.data.width = (64, 96) if arg.variant == "tiny" else (352, 624)
  c.data.frame_stride = 1
  # Pointmaps are divided by this quantile of the valid points' largest absolute coordinate, and clipped to [-1, 1]:
  # one far point (sky, a distant wall) does not squash the whole clip (1.0: the exact maximum, nothing clipped).
  c.data.normalize_quantile = 0.99
  c.data.num_workers = 0
  # precomputed: a folder written by `python -m launch.precompute` with this config: training reads the windows'
  # latents, caption and CLIP embeddings from it, encodes only the UMC condition, and never loads umT5 or CLIP.
  c.data.precomputed = ""

  # Frozen encoders: folders written by `python -m checkpoints_convert.wan --component vae|t5|clip`; the umT5
  # tokenizer folder. Empty t5 / clip: zero text / image conditions. Empty vae: a random tiny VAE for `tiny` only.
  c.encoders = ml_collections.ConfigDict(dict(vae="", t5="", tokenizer="", clip=""))

  # Optimisation (one4d_jax.train.step.TrainConfig) and the loop.
  c.train = ml_collections.ConfigDict()
  # The paper's run: 8 GPUs x 1 clip x gradient accumulation 4 = 32 clips per optimiser step, 5,500 steps, AdamW at
  # 1e-4. batch_size: clips per optimiser step over all processes (-1: one per data-parallel device); accum_steps:
  # micro-batches it is split into, each spanning every data-parallel device (-1: batch_size / data-parallel devices,
  # i.e. one clip per device per micro-batch: 4 on a mesh with 8 data-parallel devices, 8 on the 14b default mesh of
  # fsdp 4 x context 2, where two devices share a clip).
  c.train.batch_size = -1 if arg.variant == "tiny" or arg.runlocal else 32
  c.train.accum_steps = -1
  c.train.steps = 5_500
  c.train.lr = 1e-4
  c.train.warmup_steps = 100
  c.train.text_drop_prob = 0.1
  c.train.log_every = 10
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3

  if arg.runlocal:
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
    c.model.remat, c.model.context_parallel = "none", "none"
  return c


def one4d_config(c: ml_collections.ConfigDict):
  """The One4DConfig a config describes."""
  from one4d_jax.models import one4d
  return one4d.One4DConfig(dit_config(c), coupling=c.one4d.coupling, lora_rank=c.one4d.lora_rank,
                           lora_alpha=c.one4d.lora_alpha, lora_targets=one4d.TARGET_SETS[c.one4d.lora_targets],
                           link_layers=tuple(c.one4d.link_layers) or None,
                           xyz_projections=c.one4d.xyz_projections)


def dit_config(c: ml_collections.ConfigDict):
  """The DiTConfig a config describes, with the config's sharding rules for its activations."""
  from one4d_jax.models.wan import dit
  return dit.preset(c.model.preset, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
                    attention=c.model.attention, remat=c.model.remat, lora_mode=c.model.lora_mode,
                    context_parallel=c.model.context_parallel, sharding_rules=sharding_rules(c))


def sharding_rules(c: ml_collections.ConfigDict):
  """config.sharding_rules as the checked, hashable rules of one4d_jax.sharding."""
  from one4d_jax import sharding
  return sharding.as_rules(c.sharding_rules)
