"""Parameter counts per group (frozen base, each LoRA tree, links, XYZ projections) from shapes only: no weights,
seconds on CPU. The paper's "M" are Mi (2^20): its 685M LoRA is 2 x 359,137,280 = 685.0 Mi.

  python -m launch.summary --config=configs/one4d.py:variant=14b
"""

import math

import jax
from absl import flags
from ml_collections import config_flags

from launch import cli
from one4d_jax import pipeline
from one4d_jax.models import one4d
from one4d_jax.models.wan import dit


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def groups(cfg: one4d.One4DConfig) -> dict[str, int]:
  """{group name: parameter count} for a One4D config."""
  frozen = dit.abstract_params(cfg.dit)
  trainable = jax.eval_shape(lambda: one4d.init_trainable(cfg, frozen, jax.random.key(0)))
  out = {"base": count(frozen)}
  out.update({f"lora.{name}": count(tree) for name, tree in trainable["lora"].items()})
  out.update({name: count(tree) for name, tree in trainable.items() if name != "lora"})
  return out


def table(cfg: one4d.One4DConfig) -> str:
  counts = groups(cfg)
  trainable = sum(n for name, n in counts.items() if name != "base")
  lines = [f"coupling={cfg.coupling} rank={cfg.lora_rank} alpha={cfg.lora_alpha} links after blocks {cfg.links}",
           f"{'group':<16}{'parameters':>18}{'Mi (2^20)':>12}{'GiB (bf16)':>12}"]
  row = lambda name, n: f"{name:<16}{n:>18,}{n / 2**20:>12.2f}{2 * n / 2**30:>12.2f}"
  lines += [row(name, n) for name, n in counts.items()]
  lines.append(row("trainable", trainable))
  return "\n".join(lines)


def main(argv):
  del argv
  print(table(pipeline.model_config(flags.FLAGS.config)))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/one4d.py", "ml_collections config file[:args]")
  cli.run(main, __doc__)
