"""The `splash` attention kernel compiled ahead of time by the real TPU compiler, from a CPU host with no TPU: for
each case, the forward and the forward+backward (value_and_grad of a sum of squares) at One4D 14B's self-attention
shape, [N, 18018, 40, 128] bf16 per branch, with compile time, `memory_analysis()` bytes and how many Mosaic custom
calls (the Pallas kernels: 1 forward, 3 with the dq and dkv backward) and while loops (0: not the interpreter) the
compiled program has.

Needs jax[tpu] (libtpu) for `jax.experimental.topologies`; no TPU hardware:

    TPU_ACCELERATOR_TYPE=v5p-8 TPU_WORKER_HOSTNAMES=localhost PYTHONPATH=. python benchmarks/splash_tpu.py
    ... python benchmarks/splash_tpu.py --topology v5p:2x2x1 --batch 1 2 --kernel flash   # the pure-JAX kernel

Cases: every array on one device; heads split over the topology's devices by shard_map (as dit._attend runs splash
under a mesh); Ulysses context parallelism over all devices (the 18,018 tokens padded to a multiple of the device
count, the padding masked by kv_len).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from one4d_jax.models import attention, context_parallel

TOKENS, HEADS, HEAD_DIM = 18018, 40, 128  # One4D 14B: one branch of an 81 x 352 x 624 clip, Wan 14B's heads


def compile_report(name: str, fn, x) -> None:
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)
  for what, f in (("fwd", fn), ("fwd+bwd", jax.value_and_grad(loss, (0, 1, 2)))):
    t = time.perf_counter()
    compiled = jax.jit(f).lower(x, x, x).compile()
    seconds, hlo, m = time.perf_counter() - t, compiled.as_text(), compiled.memory_analysis()
    mosaic, loops = hlo.count('custom_call_target="tpu_custom_call"'), hlo.count(" while(")
    print(f"{name:<36} {what:<8} {seconds:5.1f}s  temp {m.temp_size_in_bytes:>15,}  args {m.argument_size_in_bytes:>15,}"
          f"  out {m.output_size_in_bytes:>15,}  mosaic {mosaic}  loops {loops}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="N: examples x branches")
  parser.add_argument("--kernel", default="splash", help="a registered attention kernel")
  args = parser.parse_args()
  devices = np.array(topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices)
  kernel = attention.get(args.kernel)
  heads = Mesh(devices, ("tensor",))
  context = Mesh(devices.reshape(1, 1, -1, 1), ("data", "fsdp", "context", "tensor"))
  by_heads = P(None, None, "tensor", None)
  print(f"# jax {jax.__version__}, {args.topology}: {devices.size} {devices.flat[0].device_kind} devices, "
        f"kernel {args.kernel}")
  for n in args.batch:
    shape = (n, TOKENS, HEADS, HEAD_DIM)
    one = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=jax.sharding.SingleDeviceSharding(devices.flat[0]))
    compile_report(f"[{n}, {TOKENS}, {HEADS}, {HEAD_DIM}] one device", kernel, one)
    split = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(heads, by_heads))
    compile_report(f"  heads over {devices.size} (shard_map)", jax.shard_map(
        kernel, mesh=heads, in_specs=(by_heads,) * 3, out_specs=by_heads, check_vma=False), split)
    whole = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(context, P()))
    ulysses = lambda q, k, v: context_parallel.attention(q, k, v, mode="ulysses", kernel=args.kernel,
                                                         batch_axes=None, heads_axes=None)
    with jax.set_mesh(context):
      compile_report(f"  ulysses over {devices.size}", ulysses, whole)


if __name__ == "__main__":
  main()
