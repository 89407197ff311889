"""Export a training run's One4D adapter (both LoRA branches, the control links, the XYZ patch embedding and head) as
one safetensors file, which `launch.generate --lora=FILE` and `launch.predict --lora=FILE` load without the run.

  python -m launch.export_lora --config=configs/one4d.py:variant=14b --workdir=runs/one4d --out=one4d.safetensors

The config must describe the run's model (the One4D settings shape the tree: variant, config.one4d); --step picks a
checkpoint (default: the newest). The file holds one float32 tensor per leaf of the trainable tree, named by its path
(`lora/rgb/blocks/self_attn/q/a`, layers stacked [L, ...]), and metadata (format version, architecture, coupling,
LoRA rank, alpha and targets, link layers, training step and workdir) that loading checks against the sampling
config (one4d_jax.adapters). OUT is written whole or not at all.
"""

import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from launch import cli
from one4d_jax import adapters, checkpoints, pipeline, sharding


def export(c, workdir: str, out: str, step: int | None = None, overwrite: bool = False) -> dict[str, str]:
  """The trainable tree of `workdir`'s checkpoint of `step` (None: the newest), checked finite, written to `out`;
  returns the metadata written."""
  if not out:
    raise ValueError("--out is required (a .safetensors file)")
  if os.path.isdir(out) or (os.path.exists(out) and not overwrite):
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
  if not workdir:
    raise ValueError("--workdir is required (a training run of launch.train)")
  step = pipeline.checkpoint_step(workdir, step)
  cfg = pipeline.model_config(c)
  trainable = pipeline.load_trainable(cfg, workdir, c.seed, sharding.make_mesh(), step)  # any mesh: read back whole
  bad = [k for k, v in checkpoints.flatten(trainable).items() if not np.isfinite(np.asarray(v)).all()]
  if bad:
    raise FloatingPointError(f"{workdir} step {step} holds non-finite values in {', '.join(bad)}")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  return adapters.save_adapter(out, trainable, cfg, step, workdir, variant=c.variant, preset=c.model.preset)


def define_flags():
  """Command-line flags, defined only when run as a program."""
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args] of the run")
  flags.DEFINE_string("workdir", None, "training run (launch.train) whose checkpoint to export")
  flags.DEFINE_string("out", None, "the adapter file to write (.safetensors; must not exist unless --overwrite)")
  flags.DEFINE_integer("step", None, "the checkpoint's training step (default: the newest)")
  flags.DEFINE_bool("overwrite", False, "replace an existing --out (only once the new one is complete)")


def main(argv):
  del argv
  f = flags.FLAGS
  metadata = export(f.config, f.workdir or "", f.out or "", f.step, f.overwrite)
  _, shapes = adapters.read_header(f.out)
  print(f"wrote {f.out}: step {metadata['step']} of {f.workdir}, {len(shapes)} tensors, "
        f"{sum(np.prod(s.shape, dtype=int) for s in shapes.values()):,} parameters (finite), LoRA rank "
        f"{metadata['lora_rank']}, {os.path.getsize(f.out) / 2**20:.1f} MiB")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
