"""The ODE solvers of sampling as pure update rules: Euler (VideoX-Fun's and the paper's), UniPC (Wan2.1's default) and
DPM++ 2M, each equal to its diffusers scheduler step for step.

Wan's convention throughout: sigma = 1 - t of the paper, x_sigma = (1 - sigma) x0 + sigma eps, and the model's output
v = eps - x0 (diffusers' "flow_prediction"), so its data prediction is x0 = x - sigma v. A solver is a `Schedule`
(sigmas and the timesteps the DiT is fed, made as diffusers makes them) and `step(sampler, sigmas, state, v)` on an
explicit `State` pytree (the sample, the history of data predictions, UniPC's pre-predictor sample, the step index),
so one jitted step serves every step and the whole loop can run as one `lax.fori_loop`. The sample may be any pytree
(here the RGB and XYZ latents): every leaf gets the same update with the same coefficients.

- euler: diffusers' FlowMatchEulerDiscreteScheduler(shift), x <- x + (sigma' - sigma) v.
- unipc: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
  solver_order=2, solver_type="bh2", lower_order_final=True): a 2nd-order predictor, then at the next step a corrector
  that reuses that step's model output (no extra evaluation). Wan2.1's own FlowUniPCMultistepScheduler has the same
  update; its sigma grid is linspace(0.999, 0) where diffusers' is linspace(1, 0.001) (both shifted).
- dpmpp: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_flow_sigmas=True,
  flow_shift=shift, prediction_type="flow_prediction"); first order on the first and last steps.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from one4d_jax.flow import NUM_TRAIN_TIMESTEPS, shift_sigma

SAMPLERS = {"euler": "Euler", "unipc": "UniPC", "dpmpp": "DPM++ 2M"}  # name -> what the launchers print
HISTORY = {"euler": 0, "unipc": 2, "dpmpp": 1}  # data predictions of earlier steps a step needs


def check_sampler(name: str) -> None:
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


class Schedule(NamedTuple):
  sigmas: np.ndarray  # float32 [steps + 1], from near 1 down to the final 0
  timesteps: np.ndarray  # float32 [steps], what the DiT is fed at each step


def flow_match_sigmas(steps: int, shift: float) -> np.ndarray:
  """The sigma grid of diffusers' FlowMatchEulerDiscreteScheduler(shift).set_timesteps(steps), float32, with the
  final 0: a linspace between the ends of its 1000-entry *shifted* training grid, shifted once more (so the last
  step stops at ~0.025 for shift 5, not at 1/1000)."""
  train = np.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS, dtype=np.float32)[::-1] / NUM_TRAIN_TIMESTEPS
  train = np.asarray(shift_sigma(train, shift), np.float32)
  sigmas = np.linspace(float(train[0]) * NUM_TRAIN_TIMESTEPS, float(train[-1]) * NUM_TRAIN_TIMESTEPS,
                       steps) / NUM_TRAIN_TIMESTEPS
  return np.append(np.asarray(shift_sigma(sigmas, shift), np.float32), np.float32(0.0))


def schedule(sampler: str, steps: int, shift: float) -> Schedule:
  """Sigmas and timesteps as diffusers' `set_timesteps(steps)` makes them. Euler feeds 1000 sigma (float32); the
  multistep schedulers make their grid in float64 and feed int64(1000 sigma), truncated, as Wan's pipelines do."""
  check_sampler(sampler)
  if sampler == "euler":
    sigmas = flow_match_sigmas(steps, shift)
    return Schedule(sigmas, NUM_TRAIN_TIMESTEPS * sigmas[:-1])
  if sampler == "unipc":  # linspace(1, 1/1000) shifted, its first entry nudged below 1 so the log-SNR is finite
    sigmas = shift_sigma(np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, steps + 1)[:-1], shift)
    if abs(sigmas[0] - 1) < 1e-6:
      sigmas[0] -= 1e-6
  else:  # dpmpp: 1 - linspace(1, 1/1000), shifted and reversed, its final 0 dropped (so the first is below 1)
    sigmas = np.flip(shift_sigma(1.0 - np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, steps + 1), shift))[:-1]
  timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64).astype(np.float32)
  return Schedule(np.append(sigmas, 0.0).astype(np.float32), timesteps)


class State(NamedTuple):
  x: Any  # the sample (a pytree of arrays)
  outputs: tuple  # data predictions x0 of the last HISTORY[sampler] steps, oldest first (zeros before the first step)
  last: Any  # unipc: the sample its last predictor started from (where the corrector restarts); else None
  step: jax.Array  # int32 scalar: the index of the step to take


def init(sampler: str, x) -> State:
  check_sampler(sampler)
  zeros = lambda: jax.tree.map(jnp.zeros_like, x)  # a buffer each, so the state can be donated
  return State(x, tuple(zeros() for _ in range(HISTORY[sampler])), zeros() if sampler == "unipc" else None,
               np.int32(0))


def step(sampler: str, sigmas: jax.Array, state: State, v) -> State:
  """One step of `sampler` from sigmas[i] to sigmas[i + 1] (i = state.step) given the model output v (the same
  pytree as state.x). Pure and jittable, with i traced: orders are chosen with `where` on coefficients, never on
  tensors that may hold infinities."""
  check_sampler(sampler)
  i, n = state.step, sigmas.shape[0] - 1
  sigma = lambda k: sigmas[jnp.clip(k, 0, n)]
  if sampler == "euler":
    dt = sigma(i + 1) - sigma(i)
    return State(jax.tree.map(lambda x, v: x + dt * v, state.x, v), (), None, i + 1)
  m = jax.tree.map(lambda x, v: x - sigma(i) * v, state.x, v)  # the data prediction x0
  return (_dpmpp if sampler == "dpmpp" else _unipc)(sigma, i, n, state, m)


def _log_snr(sigma):
  """lambda = log(alpha / sigma) of the flow path (alpha = 1 - sigma); +inf at sigma = 0."""
  return jnp.log(1.0 - sigma) - jnp.log(sigma)


def _dpmpp(sigma, i, n, state: State, m) -> State:
  """DPM-Solver++(2M), midpoint form: x' = (s'/s) x - a' (e^-h - 1) (m + (m - m_prev) / (2 r)); first order at the
  first step (no history) and the last (sigma' = 0, as diffusers' final_sigmas_type "zero" forces)."""
  (m_prev,) = state.outputs
  second = (i >= 1) & (i <= n - 2)
  lambda_s0 = _log_snr(sigma(i))
  h = _log_snr(sigma(i + 1)) - lambda_s0
  r0 = jnp.where(second, (lambda_s0 - _log_snr(sigma(i - 1))) / h, 1.0)
  phi = (1.0 - sigma(i + 1)) * (jnp.exp(-h) - 1.0)
  ratio, half = sigma(i + 1) / sigma(i), jnp.where(second, 0.5 * phi, 0.0)
  x = jax.tree.map(lambda x, m, mp: ratio * x - phi * m - half * ((1.0 / r0) * (m - mp)), state.x, m, m_prev)
  return State(x, (m,), None, i + 1)


def _uni_coefficients(sigma_t, sigma_s0, sigma_s1):
  """UniPC's B(h) = e^h - 1 (bh2) quantities for a step from s0 to t, in data-prediction form: sigma_t / sigma_s0,
  alpha_t h phi_1, alpha_t B(h), r = (lambda_s1 - lambda_s0) / h, and the corrector's 2x2 system solved (rho)."""
  alpha_t, lambda_s0 = 1.0 - sigma_t, _log_snr(sigma_s0)
  h = _log_snr(sigma_t) - lambda_s0
  rk = (_log_snr(sigma_s1) - lambda_s0) / h
  hh = -h
  h_phi_1 = b_h = jnp.expm1(hh)
  k1 = h_phi_1 / hh - 1.0
  k2 = k1 / hh - 1.0 / 2
  b1, b2 = k1 * 1 / b_h, k2 * 2 / b_h
  rho0 = (b1 - b2) / (1.0 - rk)  # [[1, 1], [rk, 1]] rho = [b1, b2]
  return sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * b_h, rk, (rho0, b1 - rho0)


def _unipc(sigma, i, n, state: State, m) -> State:
  """UniC (correct the sample the last predictor made, with this step's m: order 1 at step 1, 2 after) then UniP
  (predict the next sample: order 1 at the first and last steps, 2 between)."""
  m2, m1 = state.outputs  # data predictions of steps i-2 and i-1
  ratio, a_phi, a_b, rk, (rho0, rho1) = _uni_coefficients(sigma(i), sigma(i - 1), sigma(i - 2))
  second = i >= 2
  rk, rho0, rho1 = jnp.where(second, rk, 1.0), jnp.where(second, rho0, 0.0), jnp.where(second, rho1, 0.5)
  corrected = jax.tree.map(
      lambda x, last, m, m1, m2: jnp.where(i >= 1, ratio * last - a_phi * m1 - a_b * (
          rho0 * ((m2 - m1) / rk) + rho1 * (m - m1)), x), state.x, state.last, m, m1, m2)
  ratio, a_phi, a_b, rk, _ = _uni_coefficients(sigma(i + 1), sigma(i), sigma(i - 1))
  second = (i >= 1) & (i <= n - 2)
  rk, a_b = jnp.where(second, rk, 1.0), jnp.where(second, a_b, 0.0)
  x = jax.tree.map(lambda x, m, m1: ratio * x - a_phi * m - a_b * (0.5 * ((m1 - m) / rk)), corrected, m, m1)
  return State(x, (m1, m), corrected, i + 1)
