"""one4d_jax.adapters and launch.export_lora: a trained adapter as one safetensors file that loads back exactly, and
every way a file can disagree with the sampling config named at once, before any array is placed. Tiny variant,
nothing compiled but the placement of a few small arrays."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from configs import one4d as one4d_config_lib
from launch import cli, export_lora
from launch import generate as gen
from one4d_jax import adapters, checkpoints, pipeline, sharding
from one4d_jax.train import step as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**one4d):
  c = one4d_config_lib.get_config("variant=tiny")
  c.one4d.update(one4d)
  return c


def random_like(abstract, seed: int):
  """Host arrays of random values shaped as `abstract` (a fresh trainable tree has zero LoRA B and links: too easy)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract)


def random_trainable(c, seed: int) -> dict:
  return random_like(train_lib.abstract_trainable(pipeline.model_config(c)), seed)


def assert_trees_equal(a: dict, b: dict) -> None:
  a, b = checkpoints.flatten(a), checkpoints.flatten(b)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A training run's folder as launch.train leaves it, with TrainStates of random values (trainable tree and
  optimiser state) at steps 3 and 5, written with orbax from host arrays. Returns (workdir, {step: trainable})."""
  tx = train_lib.make_optimizer(train_lib.TrainConfig())
  abstract = train_lib.abstract_state(pipeline.model_config(tiny()), tx)
  workdir = str(tmp_path_factory.mktemp("run"))
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  trees = {}
  for step in (3, 5):
    state = random_like(abstract, step).replace(step=np.int32(step))
    trees[step] = state.trainable
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  return workdir, trees


@pytest.fixture
def no_placing(monkeypatch):
  """Any array placed onto devices fails the test: errors must come from the header alone."""
  def place(*_):
    raise AssertionError("an array was placed")
  monkeypatch.setattr(adapters, "_place", place)


def test_save_then_load_gives_the_same_tree_on_the_training_shardings(tmp_path):
  c = tiny()
  cfg, mesh = pipeline.model_config(c), sharding.make_mesh(**c.mesh)
  tree = random_trainable(c, 0)
  path = str(tmp_path / "adapter.safetensors")
  written = adapters.save_adapter(path, tree, cfg, step=7, workdir="runs/x", variant="tiny")
  loaded = adapters.load_adapter(path, cfg, mesh)
  assert_trees_equal(loaded, tree)
  assert jax.tree.map(lambda a: a.sharding, loaded) == train_lib.trainable_shardings(cfg, mesh)
  assert sorted(loaded) == ["links", "lora", "xyz_projections"] and sorted(loaded["lora"]) == ["rgb", "xyz"]
  metadata, shapes = adapters.read_header(path)
  assert shapes["lora/rgb/blocks/self_attn/q/a"] == (loaded["lora"]["rgb"]["blocks"]["self_attn"]["q"]["a"].shape,
                                                     "float32")
  assert set(shapes) == set(checkpoints.flatten(tree))
  assert metadata == written
  assert (metadata["format"], metadata["version"], metadata["step"], metadata["lora_rank"], metadata["variant"]) == (
      "one4d-adapter", "1", "7", "4", "tiny")
  assert metadata["workdir"] == os.path.abspath("runs/x") and metadata["dtype"] == "float32"
  assert os.listdir(tmp_path) == ["adapter.safetensors"]  # no temporary file left


def test_a_tree_that_is_not_the_configs_is_not_written(tmp_path):
  c = tiny()
  tree = random_trainable(c, 0)
  del tree["links"]
  with pytest.raises(ValueError, match="missing links/rgb_from_xyz/bias"):
    adapters.save_adapter(str(tmp_path / "a.safetensors"), tree, pipeline.model_config(c), step=1)
  assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  """The run's newest checkpoint exported by launch.export_lora's function: (path, metadata)."""
  path = str(tmp_path_factory.mktemp("exported") / "newest.safetensors")
  return path, export_lora.export(tiny(), run[0], path)


def test_an_exported_run_loads_as_load_trainable_restores_it(run, exported, tmp_path):
  (workdir, trees), (newest, metadata) = run, exported
  c = tiny()
  cfg, mesh = pipeline.model_config(c), sharding.make_mesh(**c.mesh)
  loaded = adapters.load_adapter(newest, cfg, mesh)
  assert_trees_equal(loaded, pipeline.load_trainable(cfg, workdir, c.seed, mesh))
  assert_trees_equal(loaded, trees[5])
  assert metadata["step"] == "5" and metadata["workdir"] == workdir and metadata["preset"] == "tiny"
  older = str(tmp_path / "older.safetensors")
  assert export_lora.export(c, workdir, older, step=3)["step"] == "3"
  assert_trees_equal(adapters.load_adapter(older, cfg, mesh), trees[3])
  with pytest.raises(FileNotFoundError, match=r"has no step 4; it holds steps \[3, 5\]"):
    export_lora.export(c, workdir, str(tmp_path / "x.safetensors"), step=4)
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    export_lora.export(c, workdir, older)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    export_lora.export(c, str(tmp_path / "no_run"), str(tmp_path / "y.safetensors"))


def test_pipeline_load_takes_the_lora_and_links_from_the_file(run, exported, monkeypatch):
  (workdir, trees), (path, _) = run, exported
  monkeypatch.setattr(pipeline, "frozen_params", lambda *_: "frozen")  # no DiT or VAE built: the trainable tree only
  monkeypatch.setattr(pipeline, "config_encoders", lambda *_: "encoders")
  assert_trees_equal(pipeline.load(tiny(), lora=path).trainable, trees[5])
  with pytest.raises(ValueError, match="not both"):
    pipeline.load(tiny(), workdir, path)


def _rewrite(src: str, dst: str, change) -> None:
  """dst: src's tensors after `change(tensors)`, with src's metadata."""
  with safe_open(src, framework="np") as f:
    tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
  change(tensors)
  save_file(tensors, dst, metadata=metadata)


def test_missing_unexpected_and_misshapen_tensors_are_all_named_in_one_line(tmp_path, no_placing):
  c = tiny()
  cfg = pipeline.model_config(c)
  good, bad = str(tmp_path / "good.safetensors"), str(tmp_path / "bad.safetensors")
  adapters.save_adapter(good, random_trainable(c, 0), cfg, step=1)

  def change(t):
    del t["lora/xyz/blocks/ffn_1/a"], t["links/xyz_from_rgb/kernel"]
    t["lora/rgb/blocks/extra/a"], t["something_else"] = np.zeros(3, np.float32), np.zeros(1, np.float32)
    t["lora/rgb/blocks/self_attn/q/b"] = t["lora/rgb/blocks/self_attn/q/b"][:, :2]
  _rewrite(good, bad, change)
  with pytest.raises(ValueError) as e:
    adapters.load_adapter(bad, cfg, sharding.make_mesh())
  message = str(e.value)
  assert "\n" not in message and "does not hold the config's trainable tree" in message
  for part in ("missing lora/xyz/blocks/ffn_1/a [", "missing links/xyz_from_rgb/kernel [",
               "unexpected lora/rgb/blocks/extra/a", "unexpected something_else",
               "lora/rgb/blocks/self_attn/q/b: stored [2, 2, 32] float32, expected [2, 4, 32] float32"):
    assert part in message, (part, message)


@pytest.mark.parametrize("sampling, named", [
    ({"lora_rank": 8}, "lora_rank: file 4, config 8"),
    ({"lora_alpha": 8.0}, "lora_alpha: file 4.0, config 8.0"),
    ({"link_layers": (0,)}, "link_layers: file [0, 1], config [0]"),
    ({"xyz_projections": False}, "xyz_projections: file true, config false"),
    ({"lora_targets": "all"}, "lora_targets: file"),
])
def test_a_file_of_other_one4d_settings_is_refused_naming_the_setting(tmp_path, no_placing, sampling, named):
  path = str(tmp_path / "a.safetensors")
  adapters.save_adapter(path, random_trainable(tiny(), 0), pipeline.model_config(tiny()), step=1)
  with pytest.raises(ValueError, match="other One4D settings") as e:
    adapters.load_adapter(path, pipeline.model_config(tiny(**sampling)), sharding.make_mesh())
  assert named in str(e.value) and "\n" not in str(e.value)


def test_a_file_of_another_base_model_names_the_architecture_field(tmp_path, no_placing):
  path = str(tmp_path / "a.safetensors")
  cfg = pipeline.model_config(tiny())
  adapters.save_adapter(path, random_trainable(tiny(), 0), cfg, step=1)
  other = cfg.replace(dit=cfg.dit.replace(num_layers=3), link_layers=(0, 1))
  with pytest.raises(ValueError, match="architecture.num_layers: file 2, config 3"):
    adapters.check_adapter(path, other)


def test_files_that_are_not_adapters_are_named(tmp_path, no_placing):
  cfg = pipeline.model_config(tiny())
  (tmp_path / "text.safetensors").write_text("not a safetensors file")
  save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "peft.safetensors"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    adapters.check_adapter(str(tmp_path / "missing.safetensors"), cfg)
  with pytest.raises(ValueError, match="is not a readable safetensors file"):
    adapters.check_adapter(str(tmp_path / "text.safetensors"), cfg)
  with pytest.raises(ValueError, match="not a One4D adapter"):
    adapters.check_adapter(str(tmp_path / "peft.safetensors"), cfg)


def test_generate_refuses_a_bad_adapter_before_any_model_loads(tmp_path, monkeypatch):
  image = tmp_path / "image.png"
  from PIL import Image
  Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image)
  path = str(tmp_path / "a.safetensors")
  adapters.save_adapter(path, random_trainable(tiny(), 0), pipeline.model_config(tiny()), step=1)

  def load(*_):
    raise AssertionError("reached model loading")
  monkeypatch.setattr(pipeline, "load", load)
  c = tiny(lora_rank=8)
  with pytest.raises(cli.USER_ERRORS, match="lora_rank: file 4, config 8"):
    gen.generate(c, str(tmp_path / "out"), image=str(image), lora=path, progress=False)
  with pytest.raises(AssertionError, match="reached model loading"):  # the config it was trained with: accepted
    gen.generate(tiny(), str(tmp_path / "out"), image=str(image), lora=path, progress=False)
  assert not os.path.exists(tmp_path / "out")


def test_the_export_command_writes_a_file_that_loads_and_generate_refuses_a_missing_one_in_one_line(run, tmp_path):
  """The real commands (their --help: tests/test_cli.py): export_lora --step=3 writes a file holding step 3;
  generate with a missing --lora fails with one `error:` line before `loading:`."""
  workdir, trees = run
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  out = str(tmp_path / "a.safetensors")
  config = "--config=configs/one4d.py:variant=tiny"
  commands = [["launch.export_lora", config, f"--workdir={workdir}", f"--out={out}", "--step=3"],
              ["launch.generate", config, f"--out={tmp_path}/gen", f"--lora={tmp_path}/missing.safetensors"]]
  runs = [subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for cmd in commands]
  (code, stdout, stderr), (gen_code, gen_stdout, gen_stderr) = [(r.wait(timeout=300), *r.communicate()) for r in runs]
  assert code == 0, stderr[-2000:]
  assert stdout.startswith(f"wrote {out}: step 3 of {workdir}") and "(finite)" in stdout
  assert_trees_equal(adapters.load_adapter(out, pipeline.model_config(tiny()), sharding.make_mesh()), trees[3])
  assert gen_code == 2 and len(gen_stderr.strip().splitlines()) == 1, gen_stderr[-2000:]
  assert gen_stderr.startswith("error: ") and "missing.safetensors does not exist" in gen_stderr
  assert "loading:" not in gen_stdout
