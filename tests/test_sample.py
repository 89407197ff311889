"""The sampler reproduces diffusers' FlowMatchEulerDiscreteScheduler (grid and steps) and guides both modalities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, optional_import, tiny_one4d

from one4d_jax import sample, samplers
from one4d_jax.models import one4d

torch = optional_import("torch")
diffusers = optional_import("diffusers")


@needs_torch
@pytest.mark.parametrize("steps,shift", [(50, 5.0), (10, 3.0), (1, 5.0)])
def test_sigma_grid_equals_diffusers_flow_match_euler(steps, shift):
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(steps)
  np.testing.assert_array_equal(samplers.flow_match_sigmas(steps, shift), scheduler.sigmas.numpy())
  np.testing.assert_allclose(1000 * samplers.flow_match_sigmas(steps, shift)[:-1], scheduler.timesteps.numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def model():
  return tiny_one4d()


@needs_torch
def test_sampling_equals_diffusers_scheduler_steps_with_cfg_on_both_modalities(model):
  """The reference loop: diffusers' scheduler.step on v = v_neg + 6 (v_pos - v_neg), each pass a separate forward."""
  cfg, frozen, trainable, cond, text, negative, image = model
  sc = sample.SamplerConfig(steps=4, guidance=6.0)
  rgb, xyz = sample.sample(frozen, trainable, cfg, jax.random.key(7), cond, text, negative, image, sc, progress=False)

  k_rgb, k_xyz = jax.random.split(jax.random.key(7))
  x = {"rgb": np.array(jax.random.normal(k_rgb, (2, 16, 2, 4, 6))),
       "xyz": np.array(jax.random.normal(k_xyz, (2, 16, 2, 4, 6)))}
  negative2 = jnp.broadcast_to(jnp.pad(negative, ((0, 0), (0, 2), (0, 0))), text.shape)
  forward = jax.jit(lambda r, z, t, txt: one4d.apply(frozen, trainable, cfg, r, z, cond, t, txt, image))
  schedulers = {k: diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0) for k in x}
  for s in schedulers.values():
    s.set_timesteps(4)
  for t in schedulers["rgb"].timesteps:
    tt = jnp.full((2,), float(t))
    pos = forward(x["rgb"], x["xyz"], tt, text)
    neg = forward(x["rgb"], x["xyz"], tt, negative2)
    for i, k in enumerate(x):
      v = np.asarray(neg[i]) + 6.0 * (np.asarray(pos[i]) - np.asarray(neg[i]))
      x[k] = schedulers[k].step(torch.from_numpy(v), t, torch.from_numpy(x[k])).prev_sample.numpy()
  np.testing.assert_allclose(rgb, x["rgb"], atol=2e-5)  # measured 4.6e-6 (values up to 5.6)
  np.testing.assert_allclose(xyz, x["xyz"], atol=2e-5)
  assert np.abs(np.asarray(rgb)).max() > 0.1


def test_guidance_one_is_the_conditional_pass_alone_and_bad_inputs_are_named(model):
  cfg, frozen, trainable, cond, text, negative, image = model
  one = sample.SamplerConfig(steps=2, guidance=1.0)
  a = sample.sample(frozen, trainable, cfg, jax.random.key(3), cond, text, None, image, one, progress=False)
  b = sample.sample(frozen, trainable, cfg, jax.random.key(3), cond, text, negative, image, one, progress=False)
  np.testing.assert_array_equal(a[0], b[0])  # the negative prompt is not used
  guided = sample.sample(frozen, trainable, cfg, jax.random.key(3), cond, text, negative, image,
                         sample.SamplerConfig(steps=2, guidance=3.0), progress=False)
  assert np.abs(np.asarray(guided[1]) - np.asarray(a[1])).max() > 1e-3  # guidance reaches the XYZ branch too
  with pytest.raises(ValueError, match="needs negative_text"):
    sample.sample(frozen, trainable, cfg, jax.random.key(3), cond, text, None, image, progress=False)
  with pytest.raises(ValueError, match=r"cond must be \[B, 20"):
    sample.sample(frozen, trainable, cfg, jax.random.key(3), cond[:, :16], text, negative, image, progress=False)
  with pytest.raises(ValueError, match="steps must be >= 1"):
    sample.SamplerConfig(steps=0)
