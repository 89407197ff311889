"""Convert Wan2.1 checkpoints to one4d_jax orbax checkpoints.

  python -m checkpoints_convert.wan --component dit|t5|clip|vae --src SRC --dst DST [--dtype bf16|fp32] [--verify]

SRC is what the component reads (`core.REGISTRY` names the module declaring each): for the DiT, a diffusers transformer
folder or an original Wan folder (config.json + safetensors, single or sharded with an index); the layout is detected
from the tensor names. DST appears atomically: `DST/config.json` and `DST/params`. `--verify` runs the PyTorch
reference built from SRC and the converted JAX model on a small random input and prints `max_abs_err=<value>` as its
last line. Exit status: 0 done, 1 --verify above --tol, 2 a user error (one `error: ...` line).
"""

import argparse
import importlib.util
import sys

from checkpoints_convert import core

REFERENCE_PACKAGES = ("torch", "diffusers", "transformers")  # what --verify's PyTorch references import


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    """A bad flag is a user error like any other: one line and exit status 2, without argparse's usage text."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
  parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--component", required=True, choices=sorted(core.REGISTRY))
  parser.add_argument("--src", required=True, help="source checkpoint (folder or file)")
  parser.add_argument("--dst", required=True, help="output folder (must not exist)")
  parser.add_argument("--dtype", default="bf16", choices=sorted(core.DTYPES), help="stored weight dtype (norms and "
                      "modulation tables stay float32)")
  parser.add_argument("--write_mb", type=int, default=core.WRITE_MB, help="tensors written per orbax save, in MiB: "
                      "bounds host memory (peak is about 3x this plus the largest tensor)")
  parser.add_argument("--write-mb", type=int, dest="write_mb", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the old spelling
  parser.add_argument("--verify", action="store_true", help="compare against the PyTorch reference (needs torch, "
                      "diffusers, transformers)")
  parser.add_argument("--tol", type=float, default=1e-4, help="max abs error accepted by --verify")
  args = parser.parse_args(argv)

  try:
    if args.write_mb <= 0:
      raise ValueError(f"--write_mb must be positive, got {args.write_mb}")
    missing = [p for p in REFERENCE_PACKAGES if importlib.util.find_spec(p) is None] if args.verify else []
    if missing:
      raise ValueError(f"--verify needs {', '.join(missing)} installed (PyTorch references)")
    fmt, _ = core.convert(args.component, args.src, args.dst, args.dtype, write_mb=args.write_mb)
    print(f"converted {args.component} ({fmt} layout) {args.src} -> {args.dst}")
    if not args.verify:
      return 0
    err = core.verify(args.component, args.src, args.dst)
  except (ValueError, FileNotFoundError) as e:  # ConversionError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"max_abs_err={err:.3e}")
  return 0 if err <= args.tol else 1


if __name__ == "__main__":
  sys.exit(main())
