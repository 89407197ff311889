"""How far each sampler (one4d_jax.samplers: euler, unipc, dpmpp) lands from the exact end of the flow ODE, at 10, 20
and 50 steps, on data whose exact velocity field is closed form (so the error is the solver's alone, no model error):

- gaussian: x0 ~ N(mu, diag(s^2)) in 64 dimensions, s log-spaced over [0.05, 1] (some directions nearly collapsed, as
  in real latents); the ODE's end is known exactly, mu + s eps (the flow map of a Gaussian path keeps each
  coordinate's standard score).
- mixture: x0 ~ 8 isotropic Gaussians (std 0.1, means N(0, 1)) in 16 dimensions: a nonlinear field; its end is
  solved in float64 by scipy's DOP853 (rtol = atol = 1e-10).

Wan's convention: x_sigma = (1 - sigma) x0 + sigma eps, the field is v = E[eps - x0 | x_sigma], each sampler on its
diffusers grid (shift 5 unless --shift), float32 as sampling runs. Error: RMS over samples and dimensions of
(x_end - exact); the data's own RMS spread is printed for scale. Also: RMS distance of 20-step UniPC from 50-step Euler.

    PYTHONPATH=. python benchmarks/samplers.py              # ~1 min on 2 CPU cores
    PYTHONPATH=. python benchmarks/samplers.py --shift 3

The last line is a machine-readable summary (`BENCH_SAMPLERS {json}`).
"""

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from one4d_jax import samplers


def gaussian(seed: int, n: int = 4096, d: int = 64):
  """(means [K, d], component std [d], weights [K], noise [n, d], exact end [n, d]) of one Gaussian (K = 1)."""
  rng = np.random.default_rng(seed)
  mu, s = rng.normal(0.0, 0.5, (1, d)), np.geomspace(0.05, 1.0, d)
  eps = rng.standard_normal((n, d))
  return mu, s, np.ones(1), eps, mu[0] + s * eps


def mixture(seed: int, n: int = 2048, d: int = 16, k: int = 8, std: float = 0.1):
  """The same for an equal mixture of k isotropic Gaussians; the end solved by DOP853 in float64."""
  rng = np.random.default_rng(seed)
  mu, s, w = rng.standard_normal((k, d)), np.full(d, std), np.full(k, 1.0 / k)
  eps = rng.standard_normal((n, d))
  field = lambda sigma, x: np.asarray(velocity(x.reshape(n, d), sigma, mu, s, w, np)).ravel()
  end = solve_ivp(field, (1.0, 0.0), eps.ravel(), method="DOP853", rtol=1e-10, atol=1e-10).y[:, -1]
  return mu, s, w, eps, end.reshape(n, d)


def velocity(x, sigma, mu, s, w, xp=jnp):
  """E[eps - x0 | x_sigma = x] for x0 ~ sum_k w_k N(mu_k, diag(s^2)), x [n, d]: per component
  v_k = (sigma - (1 - sigma) s^2) / r^2 (x - (1 - sigma) mu_k) - mu_k with r^2 = (1 - sigma)^2 s^2 + sigma^2,
  weighted by the components' posterior at x."""
  r2 = (1 - sigma) ** 2 * s ** 2 + sigma ** 2  # [d]
  centred = x[:, None, :] - (1 - sigma) * mu[None]  # [n, K, d]
  logp = xp.log(w)[None] - 0.5 * xp.sum(centred ** 2 / r2 + xp.log(r2), axis=-1)  # [n, K]
  post = xp.exp(logp - logp.max(axis=1, keepdims=True))
  post = post / post.sum(axis=1, keepdims=True)
  v = (sigma - (1 - sigma) * s ** 2) / r2 * centred - mu[None]
  return xp.sum(post[..., None] * v, axis=1)


def solve(sampler: str, steps: int, shift: float, data) -> np.ndarray:
  """x at sigma = 0 from the data's noise: `steps` steps of `sampler`, float32, the field evaluated once a step."""
  mu, s, w, eps, _ = (jnp.asarray(a, jnp.float32) for a in data)
  sigmas = jnp.asarray(samplers.schedule(sampler, steps, shift).sigmas)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state):
    return samplers.step(sampler, sigmas, state, velocity(state.x, sigmas[state.step], mu, s, w))

  state = samplers.init(sampler, eps)
  for _ in range(steps):
    state = step(state)
  return np.asarray(state.x, np.float64)


def rms(a) -> float:
  return float(np.sqrt(np.mean(np.square(a))))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shift", type=float, default=5.0)
  parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  summary = {"shift": args.shift, "steps": args.steps, "rms_error": {}}
  for name, make in (("gaussian", gaussian), ("mixture", mixture)):
    data = make(args.seed)
    exact = data[-1]
    spread = rms(exact - exact.mean(axis=0))
    print(f"{name}: {exact.shape[0]} samples x {exact.shape[1]} dims, data RMS spread {spread:.4f}, "
          f"shift {args.shift:g}")
    print(f"  {'sampler':10s}" + "".join(f"{f'{n} steps':>12s}" for n in args.steps))
    ends, errors = {}, {}
    for sampler in samplers.SAMPLERS:
      for n in args.steps:
        ends[sampler, n] = solve(sampler, n, args.shift, data)
        errors[f"{sampler}@{n}"] = rms(ends[sampler, n] - exact)
      print(f"  {sampler:10s}" + "".join(f"{errors[f'{sampler}@{n}']:12.2e}" for n in args.steps))
    if ("unipc", 20) in ends and ("euler", 50) in ends:
      gap = rms(ends["unipc", 20] - ends["euler", 50])
      errors["unipc@20_vs_euler@50"] = gap
      print(f"  20-step UniPC vs 50-step Euler: RMS distance {gap:.2e} ({gap / spread:.2%} of the data spread)")
    summary["rms_error"][name] = errors
  print("BENCH_SAMPLERS " + json.dumps(summary))


if __name__ == "__main__":
  main()
