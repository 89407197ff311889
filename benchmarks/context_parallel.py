"""Context-parallel self-attention (one4d_jax.models.context_parallel) on fake CPU devices: the bytes each device
sends through collectives, read from the compiled HLO beside the analytic figure, the compiled temp memory per
device, and wall times, for each contender `mode:kernel`:

  none:xla     sequence sharded over `context`, the `xla` kernel under plain GSPMD (XLA gathers K/V itself);
  none:flash   the same with the blockwise `flash` kernel: GSPMD cannot split its block loops and gathers q as well
               as K/V, so every device computes the whole attention (3x slower than none:xla at the default size;
               not run unless asked for);
  ulysses:flash  all-to-all sequence -> heads, whole-sequence attention on H/c heads, all-to-all back;
  ring:flash   K/V blocks around the ring (c-1 ppermutes of K and of V), partial results merged by log-sum-exp.

Bytes sent per device, from the result shapes R of each collective in `compiled.as_text()` (group size g):
all-to-all R (g-1)/g, collective-permute R, all-gather R (g-1)/g, reduce-scatter R (g-1), all-reduce 2 R (g-1)/g
(ring algorithm). Each op is counted once as written: one nested in a loop body runs once per iteration, so a
"(k nested)" count means the bytes sent are understated.
Analytic, with S the bytes of one local q/k/v/out block [N/b, T/c, H/t, d] and c the context size:
ulysses 4 S (c-1)/c forward (q, k, v, out), 8 S (c-1)/c forward+backward; ring 2 (c-1) S forward (K and V),
4 (c-1) S forward+backward (their cotangents travel back); none, if XLA all-gathers K and V and reduce-scatters
their gradients, the same as ring.

The fake devices share this machine's cores, so times show overheads and relative compute, not network costs or
real speed-ups.

    PYTHONPATH=. python benchmarks/context_parallel.py
    PYTHONPATH=. python benchmarks/context_parallel.py --batch 2 --meshes 1,1,8,1 1,2,4,1   # + context 4 x fsdp 2
    PYTHONPATH=. python benchmarks/context_parallel.py --tokens 2048 --repeats 2                # quick
"""

import argparse
import os
import re

from benchmarks.common import fmt_times, interleaved, loadavg, med, set_xla_flags

AXES = ("data", "fsdp", "context", "tensor")
COLLECTIVES = ("all-to-all", "collective-permute", "all-gather", "all-reduce", "reduce-scatter")
_OP = re.compile(r"= (?P<result>\(.*?\)|\S+) (?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\((?P<rest>.*)")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--tokens", type=int, default=8192)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--meshes", nargs="+", default=["1,1,8,1"], help="mesh shapes over (data, fsdp, context, tensor)")
  p.add_argument("--contenders", default="none:xla,ulysses:flash,ring:flash", help="mode:kernel, ...")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls of each after compilation")
  p.add_argument("--devices", type=int, default=8, help="fake CPU devices, unless $XLA_FLAGS already sets a count")
  p.add_argument("--xla-flags", default="", help="appended to $XLA_FLAGS before JAX is imported")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def collective_bytes(hlo: str, devices: int) -> tuple[dict[str, tuple[int, float]], int]:
  """{op: (count, bytes sent per device)} of the collectives in compiled HLO text, and how many are nested in other
  computations than ENTRY (loop bodies)."""
  found, nested, entry = {}, 0, False
  for line in hlo.splitlines():
    if line.endswith("{") and not line.startswith(" "):
      entry = line.startswith("ENTRY")
    m = _OP.search(line)
    if not m:
      continue
    if m["start"]:
      raise ValueError(f"async collective {m['op']}-start: its result tuple holds operand and result; not parsed")
    result = sum(_BYTES[t] * _prod(dims) for t, dims in _SHAPE.findall(m["result"]))
    g = _group_size(m["rest"], devices)
    sent = {"all-to-all": result * (g - 1) / g, "collective-permute": result, "all-gather": result * (g - 1) / g,
            "reduce-scatter": result * (g - 1), "all-reduce": 2 * result * (g - 1) / g}[m["op"]]
    count, total = found.get(m["op"], (0, 0.0))
    found[m["op"]] = (count + 1, total + sent)
    nested += not entry
  return found, nested


def _prod(dims: str) -> int:
  out = 1
  for d in filter(None, dims.split(",")):
    out *= int(d)
  return out


def _group_size(attributes: str, devices: int) -> int:
  """Devices per replica group: `replica_groups={{0,1},{2,3}}`, the iota form `replica_groups=[2,2]<=[4]`, or all."""
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attributes)
  if iota:
    return int(iota[2])
  listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
  return len(listed[1].split(",")) if listed and listed[1] else devices


def analytic_bytes(mode: str, c: int, local: float) -> tuple[float, float]:
  """(forward, forward+backward) bytes sent per device; `local` is one local q/k/v/out block."""
  if mode == "ulysses":
    return 4 * local * (c - 1) / c, 8 * local * (c - 1) / c
  return 2 * (c - 1) * local, 4 * (c - 1) * local


def main(argv=None):
  args = parse_args(argv)
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    set_xla_flags(f"--xla_force_host_platform_device_count={args.devices}")
  set_xla_flags(args.xla_flags)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from one4d_jax.models import context_parallel

  contenders = [tuple(c.split(":")) for c in args.contenders.split(",")]
  dtype = jnp.dtype(args.dtype)
  shape = (args.batch, args.tokens, args.heads, args.head_dim)
  print(f"# context-parallel attention  jax {jax.__version__}  {len(jax.devices())} {jax.default_backend()} devices  "
        f"cpus {os.cpu_count()}  load {loadavg()}")
  print(f"# q, k, v {list(shape)} {args.dtype}; contenders {args.contenders}")
  print(f"# NOTE: the {len(jax.devices())} fake devices share {os.cpu_count()} cores: times show overheads and "
        f"relative compute, not network costs or real speed-ups.")

  rng = np.random.default_rng(args.seed)
  q, k, v, cotangent = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
  for mesh_shape in args.meshes:
    sizes = tuple(int(s) for s in mesh_shape.split(","))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:np.prod(sizes)]).reshape(sizes), AXES)
    c, batch_shards, head_shards = sizes[2], sizes[0] * sizes[1], sizes[3]
    padded = -(-args.tokens // c) * c
    local = args.batch // batch_shards * padded // c * args.heads // head_shards * args.head_dim * dtype.itemsize
    # An array cannot be split unevenly: a ragged T enters unsplit, and the pad-and-split is part of what is timed.
    spec = NamedSharding(mesh, P(("data", "fsdp"), "context" if padded == args.tokens else None, "tensor", None))
    inputs = [jax.device_put(x, spec) for x in (q, k, v, cotangent)]
    print(f"\n## mesh {dict(zip(AXES, sizes))}: local block S = {local / 2**20:.2f} MiB (T padded to {padded})")
    print(f"{'contender':15} {'pass':7} {'collectives':42} {'sent MiB':>9} {'analytic':>9} {'temp MiB':>9}")

    fns, outputs = {}, {}
    with jax.set_mesh(mesh):
      for mode, kernel in contenders:
        attend = lambda q, k, v, mode=mode, kernel=kernel: context_parallel.attention(q, k, v, mode=mode, kernel=kernel)
        loss = lambda q, k, v, ct, attend=attend: jnp.sum(attend(q, k, v).astype(jnp.float32) * ct)
        passes = {"fwd": lambda q, k, v, ct, attend=attend: attend(q, k, v),
                  "fwd+bwd": jax.value_and_grad(loss, (0, 1, 2))}
        for name, fn in passes.items():
          compiled = jax.jit(fn).lower(*inputs).compile()
          found, nested = collective_bytes(compiled.as_text(), len(jax.devices()))
          ops = ", ".join(f"{n} {op}" for op, (n, _) in sorted(found.items())) or "-"
          ops += f" ({nested} nested)" if nested else ""
          sent = sum(b for _, b in found.values())
          expected = analytic_bytes(mode, c, local)[name == "fwd+bwd"]
          temp = compiled.memory_analysis().temp_size_in_bytes
          label = f"{mode}:{kernel}"
          print(f"{label:15} {name:7} {ops:42} {sent / 2**20:9.2f} {expected / 2**20:9.2f} {temp / 2**20:9.1f}",
                flush=True)
          fns[label, name] = lambda compiled=compiled: jax.block_until_ready(compiled(*inputs))
      for key, fn in fns.items():
        outputs[key] = fn()
        for _ in range(args.warmup):
          fn()
      wall, _ = interleaved(fns, args.repeats)

    first = ":".join(contenders[0])
    reference = np.asarray(outputs[first, "fwd"], np.float32)
    print(f"# wall times (load {loadavg()}), x = over {first} in the same pass; err = max |out - {first}'s out|")
    for (label, name), times in wall.items():
      error = np.abs(np.asarray(outputs[label, "fwd"], np.float32) - reference).max()
      print(f"{label:15} {name:7} {fmt_times(times)}  x{med(times) / med(wall[first, name]):5.2f}"
            + (f"  err {error:.1e}" if name == "fwd" else ""))


if __name__ == "__main__":
  main()
