"""Each solver of one4d_jax.samplers equals its diffusers scheduler (grid, timesteps and every step, history
included) on both modalities at once, and the one-program loop gives the per-step loop's latents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, optional_import, tiny_one4d

from one4d_jax import pipeline, sample, samplers
from one4d_jax.models import one4d

torch = optional_import("torch")
diffusers = optional_import("diffusers")


def diffusers_scheduler(sampler: str, shift: float):
  """The scheduler each sampler reproduces, configured as Wan2.1 / VideoX-Fun use it."""
  if sampler == "euler":
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  if sampler == "unipc":
    return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             flow_shift=shift, solver_order=2, solver_type="bh2")
  return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_flow_sigmas=True,
                                               flow_shift=shift, prediction_type="flow_prediction")


@needs_torch
@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
@pytest.mark.parametrize("steps", [1, 4, 7, 50])
@pytest.mark.parametrize("shift", [5.0, 3.0])
def test_sigmas_and_timesteps_equal_diffusers(sampler, steps, shift):
  scheduler = diffusers_scheduler(sampler, shift)
  scheduler.set_timesteps(steps)
  ours = samplers.schedule(sampler, steps, shift)
  assert ours.sigmas.dtype == np.float32 and ours.sigmas[-1] == 0.0
  np.testing.assert_array_equal(ours.sigmas, scheduler.sigmas.numpy())
  np.testing.assert_array_equal(ours.timesteps, scheduler.timesteps.numpy().astype(np.float32))


def fake_model(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
  """A fixed function of (x, sigma) standing in for the DiT: v = W x + sigma b - x along the last axis."""
  rng = np.random.default_rng(seed)
  d = x.shape[-1]
  w = rng.standard_normal((d, d)).astype(np.float32) * np.float32(0.8 / np.sqrt(d))
  b = rng.standard_normal(d).astype(np.float32)
  return (x @ w.T + np.float32(sigma) * b - x).astype(np.float32)


def trajectories(sampler: str, steps: int, shift: float):
  """Every sample of the RGB and XYZ trajectories from the same noise: ours (one jitted step, state carried) and
  diffusers' (one scheduler per modality), each modality with its own fake model."""
  rng = np.random.default_rng(steps)
  noise = [rng.standard_normal((2, 3, 16)).astype(np.float32) for _ in range(2)]
  schedule = samplers.schedule(sampler, steps, shift)
  step = jax.jit(samplers.step, static_argnums=0)
  state, ours = samplers.init(sampler, tuple(jnp.asarray(n) for n in noise)), []
  for i in range(steps):
    v = tuple(jnp.asarray(fake_model(np.asarray(x), schedule.sigmas[i], k)) for k, x in enumerate(state.x))
    state = step(sampler, schedule.sigmas, state, v)
    ours.append([np.asarray(x) for x in state.x])
  theirs, xs = [], [torch.from_numpy(n) for n in noise]
  schedulers = [diffusers_scheduler(sampler, shift) for _ in noise]
  for s in schedulers:
    s.set_timesteps(steps)
  for i, t in enumerate(schedulers[0].timesteps):
    xs = [s.step(torch.from_numpy(fake_model(x.numpy(), float(s.sigmas[i]), k)), t, x).prev_sample
          for k, (s, x) in enumerate(zip(schedulers, xs))]
    theirs.append([x.numpy() for x in xs])
  return np.array(ours), np.array(theirs)


@needs_torch
@pytest.mark.parametrize("shift", [5.0, 3.0])
@pytest.mark.parametrize("steps", [4, 7])
def test_every_step_of_every_sampler_equals_diffusers_on_both_modalities(steps, shift):
  runs = {}
  for sampler in samplers.SAMPLERS:
    ours, theirs = trajectories(sampler, steps, shift)
    assert ours.shape == (steps, 2, 2, 3, 16)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6, err_msg=sampler)  # measured <= 2e-6 of ~8
    runs[sampler] = ours[-1]
  # the three are different solvers (a sampler name falling through to another would fail here)
  assert min(np.abs(runs[a] - runs[b]).max() for a, b in [("euler", "unipc"), ("euler", "dpmpp"),
                                                          ("unipc", "dpmpp")]) > 1e-3


def test_bad_sampler_names_are_one_clear_error():
  with pytest.raises(ValueError, match="unknown sampler 'rk4'; choose one of euler, unipc, dpmpp"):
    sample.SamplerConfig(sampler="rk4")
  with pytest.raises(ValueError, match="unknown sampler 'Euler'"):
    samplers.schedule("Euler", 4, 5.0)
  from configs import one4d as config_lib
  c = config_lib.get_config("variant=tiny")
  c.sample.sampler = "unipc2"
  with pytest.raises(ValueError, match="unknown sampler 'unipc2'"):
    pipeline.sampler_config(c)
  c.sample.sampler, c.sample.compiled_loop = "dpmpp", True
  assert pipeline.sampler_config(c) == sample.SamplerConfig(sampler="dpmpp", compiled_loop=True, steps=c.sample.steps)
  assert sample.SamplerConfig(steps=20, sampler="unipc").describe() == "20 UniPC steps, guidance 6, shift 5"


@needs_torch
def test_unipc_with_cfg_on_the_tiny_model_equals_diffusers_and_the_compiled_loop_equals_the_step_loop():
  """Guidance 6 on both modalities; the reference feeds the DiT diffusers' integer timesteps, pos and neg passes
  separately."""
  cfg, frozen, trainable, cond, text, negative, image = tiny_one4d()
  steps = 4
  sc = sample.SamplerConfig(steps=steps, guidance=6.0, sampler="unipc")
  rgb, xyz = sample.sample(frozen, trainable, cfg, jax.random.key(7), cond, text, negative, image, sc, progress=False)
  looped = sample.sample(frozen, trainable, cfg, jax.random.key(7), cond, text, negative, image,
                         sample.SamplerConfig(steps=steps, guidance=6.0, sampler="unipc", compiled_loop=True))
  np.testing.assert_allclose(looped[0], rgb, atol=1e-6)  # measured: bit-identical on CPU
  np.testing.assert_allclose(looped[1], xyz, atol=1e-6)

  x = [np.array(jax.random.normal(k, (2, 16, 2, 4, 6))) for k in jax.random.split(jax.random.key(7))]
  negative2 = jnp.broadcast_to(jnp.pad(negative, ((0, 0), (0, 2), (0, 0))), text.shape)
  forward = jax.jit(lambda r, z, t, txt: one4d.apply(frozen, trainable, cfg, r, z, cond, t, txt, image))
  schedulers = [diffusers_scheduler("unipc", 5.0) for _ in x]
  for s in schedulers:
    s.set_timesteps(steps)
  for t in schedulers[0].timesteps:
    tt = jnp.full((2,), float(t))
    pos, neg = forward(*x, tt, text), forward(*x, tt, negative2)
    v = [np.asarray(n) + 6.0 * (np.asarray(p) - np.asarray(n)) for p, n in zip(pos, neg)]
    x = [s.step(torch.from_numpy(vk), t, torch.from_numpy(xk)).prev_sample.numpy()
         for s, vk, xk in zip(schedulers, v, x)]
  # measured 8.1e-6 (values up to 7); feeding 1000 sigma instead of the integer timesteps misses by 0.8
  np.testing.assert_allclose(rgb, x[0], atol=2e-5)
  np.testing.assert_allclose(xyz, x[1], atol=2e-5)
  assert np.abs(np.asarray(rgb)).max() > 0.1
