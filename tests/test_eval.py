"""Evaluation metrics reproduce the reference code (MonST3R / Geo4D / DepthCrafter / evo) number for number."""

import dataclasses
import json
import os

import numpy as np
import pytest

from one4d_jax.eval import camera, depth, protocol, report
from one4d_jax.geometry.sim3 import umeyama

DEPTH_SETTINGS = {
  "monst3r_sintel_lad2_max70_postclip70": dict(align="lad2", max_depth=70.0, post_clip_max=70.0),
  "monst3r_bonn_lad2_max70": dict(align="lad2", max_depth=70.0),
  "monst3r_median_scale_max70": dict(align="median", max_depth=70.0),
  "monst3r_lstsq_scale_shift_max70": dict(align="lstsq", max_depth=70.0),
  "monst3r_scale_only_irls_max70": dict(align="scale", max_depth=70.0),
  "geo4d_lad2_lr1e-2_it5000_max70_postclip70_alignmask_all":
    dict(align="lad2", max_depth=70.0, post_clip_max=70.0, lr=1e-2, max_iters=5000),
}

@pytest.fixture
def fixtures(shared_dir):
  root = os.path.join(shared_dir, "reference", "eval_fixtures")
  with open(os.path.join(root, "expected_outputs.json")) as f:
    expected = json.load(f)
  return root, expected


def _load(root, name):
  return np.load(os.path.join(root, name))


@pytest.mark.parametrize("setting", list(DEPTH_SETTINGS))
def test_depth_protocol_reproduces_reference_per_sequence_and_pixel_weighted(fixtures, setting):
  root, expected = fixtures
  ref = expected["depth"][setting]
  rtol = 1e-4
  per_seq = []
  for i in range(2):
    out, _ = depth.depth_evaluation(_load(root, f"depth_seq{i}_pred.npy"), _load(root, f"depth_seq{i}_gt.npy"),
                                    **DEPTH_SETTINGS[setting])
    want = ref["per_sequence"][f"seq{i}"]
    assert out["valid_pixels"] == want["valid_pixels"]
    for k in depth.METRIC_KEYS:
      np.testing.assert_allclose(out[k], want[k], rtol=rtol, err_msg=f"{setting} seq{i} {k}")
    per_seq.append(out)
  agg = depth.pixel_weighted_average(per_seq)
  for k in depth.METRIC_KEYS:
    np.testing.assert_allclose(agg[k], ref["pixel_weighted_average"][k], rtol=rtol, err_msg=f"{setting} {k}")


def test_lad2_adam_stops_where_the_reference_stops_not_at_the_l1_optimum(fixtures):
  root, expected = fixtures
  for i in range(2):
    p, g = _load(root, f"depth_seq{i}_pred.npy"), _load(root, f"depth_seq{i}_gt.npy")
    valid = (g > 0) & (g < 70)
    ref = expected["depth"]["alignment_parameters_s_t"][f"seq{i}"]
    np.testing.assert_allclose(depth.fit_alignment(p[valid], g[valid], "median")[0], ref["median_ratio_init_s"], 1e-6)
    np.testing.assert_allclose(depth.fit_alignment(p[valid], g[valid], "lad2"), ref["monst3r_adam_lr1e-4_it1000"],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(depth.fit_alignment(p[valid], g[valid], "lad2", lr=1e-2, max_iters=5000),
                               ref["geo4d_adam_lr1e-2_it5000"], rtol=1e-4, atol=1e-4)


def test_geo4d_align_mask_restricts_the_fit_only(fixtures):
  root, expected = fixtures
  ref = expected["depth"]["geo4d_lad2_seq0_with_alignmask_file"]
  out, _ = depth.depth_evaluation(_load(root, "depth_seq0_pred.npy"), _load(root, "depth_seq0_gt.npy"), align="lad2",
                                  max_depth=70.0, post_clip_max=70.0, lr=1e-2, max_iters=5000,
                                  align_mask=_load(root, "depth_seq0_alignmask.npy"))
  assert out["valid_pixels"] == ref["valid_pixels"]
  for k in depth.METRIC_KEYS:
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, err_msg=k)
  np.testing.assert_allclose(out["s"], ref["s"], rtol=1e-4)


@pytest.mark.parametrize("cap", [70, 10])
def test_depthcrafter_disparity_protocol(fixtures, cap):
  root, expected = fixtures
  ref = expected["depthcrafter"][f"depthcrafter_eval_single_depthdomain_max{cap}"]
  out = depth.depthcrafter_evaluation(_load(root, "depth_seq0_pred_disparity.npy"), _load(root, "depth_seq0_gt.npy"),
                                      max_depth=cap)
  for k in ref:
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("name,prefix,est", [("synthetic_24", "cam_synth", "pred"),
                                             ("tum_fr1xyz_rgbdslam_90", "cam_tum_fr1xyz", "est")])
def test_camera_metrics_reproduce_monst3r_eval_metrics(fixtures, name, prefix, est):
  root, expected = fixtures
  ref = expected["camera_monst3r_eval_metrics"][name]
  out = camera.camera_metrics(camera.tum_to_c2w(_load(root, f"{prefix}_{est}_tum.npy")),
                              camera.tum_to_c2w(_load(root, f"{prefix}_gt_tum.npy")))
  np.testing.assert_allclose(out["ate"], ref["ATE"], rtol=1e-6)
  np.testing.assert_allclose(out["rpe_t"], ref["RPE_trans"], rtol=1e-6)
  np.testing.assert_allclose(out["rpe_r"], ref["RPE_rot_deg"], rtol=1e-6)


def test_tum_quaternion_roundtrip_and_c2w_fixture_agree(fixtures):
  root, _ = fixtures
  c2w = camera.tum_to_c2w(_load(root, "cam_synth_gt_tum.npy"))
  np.testing.assert_allclose(c2w, _load(root, "cam_synth_gt_c2w.npy"), atol=1e-9)
  np.testing.assert_allclose(camera.tum_to_c2w(camera.c2w_to_tum(c2w)), c2w, atol=1e-12)


def test_relative_pose_loss_matches_monst3r(fixtures):
  root, expected = fixtures
  ref = expected["temporal_smoothing"]
  c2w = _load(root, "cam_synth_pred_c2w.npy").astype(np.float32)
  per_pair = camera.relative_pose_loss(c2w[:-1], c2w[1:])
  np.testing.assert_allclose(per_pair, ref["per_pair"], rtol=1e-5)
  np.testing.assert_allclose(per_pair.sum(), ref["sum"], rtol=1e-6)


@pytest.mark.parametrize("gt_file,est_file", [("freiburg1_xyz-groundtruth.txt", "freiburg1_xyz-ORB_kf_mono.txt"),
                                              ("fr2_desk_groundtruth.txt", "fr2_desk_ORB_kf_mono.txt")])
def test_camera_metrics_match_evo_on_real_monocular_trajectories(shared_dir, gt_file, est_file):
  """Real TUM GT vs monocular ORB-SLAM keyframes (arbitrary scale): evo APE/RPE after Sim(3) alignment."""
  pytest.importorskip("evo")
  import copy

  from evo.core import metrics, sync
  from evo.tools import file_interface

  root = os.path.join(shared_dir, "data", "evo_reference_trajectories")
  ref = file_interface.read_tum_trajectory_file(os.path.join(root, gt_file))
  est = file_interface.read_tum_trajectory_file(os.path.join(root, est_file))
  ref, est = sync.associate_trajectories(ref, est, max_diff=0.01)
  aligned = copy.deepcopy(est)
  aligned.align(ref, correct_scale=True)
  ape = metrics.APE(metrics.PoseRelation.translation_part)
  ape.process_data((ref, aligned))
  want = {"ate": ape.get_statistic(metrics.StatisticsType.rmse)}
  relations = (("rpe_t", metrics.PoseRelation.translation_part), ("rpe_r", metrics.PoseRelation.rotation_angle_deg))
  for key, rel in relations:
    rpe = metrics.RPE(rel, delta=1, delta_unit=metrics.Unit.frames, rel_delta_tol=0.01, all_pairs=True)
    rpe.process_data((ref, aligned))
    want[key] = rpe.get_statistic(metrics.StatisticsType.rmse)
  got = camera.camera_metrics(np.stack(est.poses_se3), np.stack(ref.poses_se3))
  assert est.num_poses > 20
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)


def test_umeyama_recovers_a_known_similarity_in_numpy_and_jax():
  import jax.numpy as jnp
  from scipy.spatial.transform import Rotation

  rng = np.random.default_rng(0)
  src = rng.normal(size=(50, 3))
  rot = Rotation.from_rotvec([0.3, -0.5, 0.2]).as_matrix()
  dst = 0.37 * src @ rot.T + np.array([1.0, -2.0, 0.5])
  for xp in (np, jnp):
    s, r, t = umeyama(xp.asarray(src), xp.asarray(dst))
    np.testing.assert_allclose(float(s), 0.37, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r), rot, atol=1e-5)
    np.testing.assert_allclose(np.asarray(t), [1.0, -2.0, 0.5], atol=1e-5)


def test_garbage_inputs_give_clear_errors():
  gt = np.ones((2, 4, 4), np.float32)
  with pytest.raises(ValueError, match="resize the prediction"):
    depth.depth_evaluation(np.ones((2, 4, 5)), gt)
  bad = np.ones_like(gt)
  bad[0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    depth.depth_evaluation(bad, gt)
  out, _ = depth.depth_evaluation(np.ones_like(gt), np.zeros_like(gt))
  assert out["valid_pixels"] == 0 and out["Abs Rel"] == 0.0
  poses = np.tile(np.eye(4), (5, 1, 1))
  with pytest.raises(ValueError, match="associated"):
    camera.camera_metrics(poses[:4], poses)
  with pytest.raises(ValueError, match="at least 3"):
    camera.camera_metrics(poses[:2], poses[:2])
  with pytest.raises(ValueError, match="degenerate"):
    camera.camera_metrics(poses, poses)
  nan_poses = poses.copy()
  nan_poses[1, 0, 3] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    camera.camera_metrics(nan_poses, poses)


def test_runner_scores_scaled_gt_predictions_as_perfect_in_sparse_setting(shared_dir, tmp_path):
  """Predictions = GT depth x 2.5 and GT poses in a scaled, shifted frame: every error is ~0 after the alignments."""
  from one4d_jax.data.readers import open_clip

  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  clip = open_clip("sevenscenes", data)
  keep = protocol.sparse_indices(clip.num_frames, 0.1)
  assert keep[0] == 0 and keep[-1] == clip.num_frames - 1 and len(keep) == 6
  rec = clip.load(keep)
  c2w = rec.c2w.copy()
  c2w[:, :3, 3] = 0.4 * c2w[:, :3, 3] + 1.0
  pred_dir = tmp_path / "pred"
  pred_dir.mkdir()
  small = np.where(rec.valid, 2.5 * rec.depth, 1.0)[:, ::2, ::2]  # half resolution: exercises the bicubic resize
  np.savez(pred_dir / f"{clip.name}.npz", depth=small, c2w=c2w)
  settings = protocol.Settings("sevenscenes", predictions=str(pred_dir), sparsity=0.1, score="observed",
                               protocol="monst3r_median")
  res = protocol.evaluate(data, settings, progress=False)
  table = report.write(str(tmp_path / "out"), res)
  seq = res.sequences[clip.name]
  assert seq.frames == 6 and seq.selected_frames == 60
  assert seq.metrics["abs_rel"] < 0.02 and seq.metrics["delta_1.25"] > 0.97  # residual = bicubic resampling at edges
  assert seq.metrics["ate"] < 1e-6 and seq.metrics["rpe_t"] < 1e-6 and seq.metrics["rpe_r"] < 1e-4
  with open(tmp_path / "out" / "results.json") as f:
    saved = json.load(f)
  assert set(saved["overall"]) == set(protocol.METRICS) and set(protocol.METRICS) <= set(saved["sequences"][clip.name])
  assert saved["sequences"][clip.name]["observed_frames"] == [int(i) for i in keep]
  assert saved["settings"]["score"] == "observed" and saved["settings"]["data"] == data
  assert (tmp_path / "out" / "table.md").read_text() == table and table.count("|") > 10
  assert "observed frames scored: 6 of 60 selected, 1 sequence" in table
  assert (tmp_path / "out" / "plots" / f"{clip.name}_trajectory.png").is_file()


def test_runner_scores_every_frame_of_a_sparse_run_with_the_depthcrafter_protocol(shared_dir, tmp_path):
  """--score all (default): the prediction holds every frame; a prediction of the observed frames only is refused."""
  from one4d_jax.data.readers import open_clip

  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  clip = open_clip("sevenscenes", data)
  frames = np.arange(0, 40, 2)  # --frames 0:40:2
  rec = clip.load(frames)
  pred_dir = tmp_path / "pred"
  pred_dir.mkdir()
  np.savez(pred_dir / f"{clip.name}.npz", depth=np.where(rec.valid, 1.7 * rec.depth, 1.0), c2w=rec.c2w)
  settings = protocol.Settings("sevenscenes", predictions=str(pred_dir), frames="0:40:2", sparsity=0.2,
                               protocol="depthcrafter", max_depth=10.0)
  res = protocol.evaluate(data, settings, progress=False)
  seq = res.sequences[clip.name]
  assert seq.frames == 20 and seq.observed_frames == [0, 12, 26, 38]  # 4 of 20, as clip frame indices
  assert seq.metrics["abs_rel"] < 1e-5 and seq.metrics["delta_1.25"] == 1.0 and seq.metrics["ate"] < 1e-6
  assert res.overall["abs_rel"] == seq.metrics["abs_rel"]  # DepthCrafter: unweighted mean over sequences
  assert "all 20 selected frames scored" in report.write(str(tmp_path / "out"), res)
  with pytest.raises(FileExistsError, match="already exists"):
    report.write(str(tmp_path / "out"), res)
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    protocol.evaluate(data, dataclasses.replace(settings, predictions=str(tmp_path / "nope")))
  np.savez(pred_dir / f"{clip.name}.npz", depth=rec.depth[:5], c2w=rec.c2w[:5])
  with pytest.raises(ValueError, match=r"has 5 frames; expected 20 \(every frame of the selection 0..38\)"):
    report.write(str(tmp_path / "out2"), protocol.evaluate(data, settings, progress=False))
  assert not (tmp_path / "out2").exists()  # nothing half-written
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".out2")]


def test_evaluate_command_writes_its_outputs_and_refuses_bad_input_in_one_line(shared_dir, tmp_path):
  """The absl launcher: --help exits 0 listing its flags; a run writes results.json and prints the table; an existing
  --out is one `error:` line, exit status 2, before any work."""
  import subprocess
  import sys

  from one4d_jax.data.readers import open_clip

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  data = os.path.join(shared_dir, "data", "sevenscenes_redkitchen_60f")
  clip = open_clip("sevenscenes", data)
  rec = clip.load(np.arange(6))
  (tmp_path / "pred").mkdir()
  np.savez(tmp_path / "pred" / f"{clip.name}.npz", depth=rec.depth, c2w=rec.c2w)
  (tmp_path / "taken").mkdir()
  base = ["--data", data, "--format=sevenscenes", f"--predictions={tmp_path / 'pred'}", "--frames=0:6",
          "--protocol=monst3r_median"]
  cases = {"help": ["--help"], "run": base + [f"--out={tmp_path / 'out'}"], "taken": base + [f"--out={tmp_path}/taken"]}
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
  procs = {k: subprocess.Popen([sys.executable, "-m", "launch.evaluate", *args], cwd=root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, args in cases.items()}
  out = {k: (p.communicate(timeout=300), p.returncode) for k, p in procs.items()}
  (stdout, stderr), rc = out["help"]
  assert rc == 0 and all(f"  --{f}:" in stdout for f in ("data", "oracle", "max_depth", "score", "overwrite")), stderr
  (stdout, stderr), rc = out["run"]
  assert rc == 0, stderr[-2000:]
  assert "| ATE (mm) ↓ |" in stdout and "all 6 selected frames scored" in stdout
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert saved["sequences"][clip.name]["frames"] == 6 and saved["overall"]["abs_rel"] < 1e-6
  (stdout, stderr), rc = out["taken"]
  assert rc == 2 and stderr.strip().splitlines() == [f"error: {tmp_path}/taken exists; pass --overwrite to replace it"]


@pytest.mark.parametrize("fields, message", [
  ({"format": "kitti_raw", "oracle": True}, "--format 'kitti_raw': expected one of"),
  ({"format": "bonn"}, "give either --predictions PRED or --oracle"),
  ({"format": "bonn", "predictions": "p", "oracle": True}, "give either --predictions PRED or --oracle"),
  ({"format": "bonn", "predictions": "p", "noise": 0.02}, "need --oracle"),
  ({"format": "bonn", "oracle": True, "outliers": 1.5}, r"--outliers a fraction in \[0, 1\]"),
  ({"format": "bonn", "oracle": True, "protocol": "monst3r"}, "--protocol 'monst3r': expected one of"),
  ({"format": "bonn", "oracle": True, "sparsity": 0.0}, r"--sparsity must be in \(0, 1\]"),
  ({"format": "bonn", "oracle": True, "sparsity": 0.5, "score": "all"}, "scores those: --score observed"),
  ({"format": "bonn", "predictions": "p", "score": "some"}, "--score 'some': expected one of"),
  ({"format": "bonn", "oracle": True, "max_depth": 0.0}, "--max_depth must be a positive number"),
  ({"format": "tum", "oracle": True, "protocol": "depthcrafter"}, "no published depth cap for 'tum'; pass --max_depth"),
  ({"format": "bonn", "oracle": True, "stride": 0}, "--stride and --iters must be >= 1"),
  ({"format": "bonn", "oracle": True, "frames": "1-9"}, "--frames '1-9': expected 'auto', 'all' or START:STOP"),
])
def test_settings_name_each_bad_field(fields, message):
  with pytest.raises(ValueError, match=message):
    protocol.Settings(**fields)


def test_settings_fill_defaults_from_the_format_and_the_source():
  s = protocol.Settings("sintel", oracle=True)
  assert (s.protocol, s.score, s.max_depth_used) == ("monst3r_sintel", "observed", 70.0)
  s = protocol.Settings("bonn", predictions="p", protocol="depthcrafter")
  assert (s.protocol, s.score, s.max_depth_used) == ("depthcrafter", "all", 10.0)
  assert protocol.Settings("tum", predictions="p", protocol="depthcrafter", max_depth=5.0).max_depth_used == 5.0
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.sparsity = 0.5


def _row(score, ate):
  return protocol.SequenceResult({**score.metrics, "ate": ate, "rpe_t": 0.0, "rpe_r": 1.0}, score.valid_pixels, 5, 5,
                                 [], "", score.aligned[0], score.aligned[0], None, None)


def test_results_speak_one_vocabulary_translated_from_the_reference_names(fixtures):
  """score_depth and aggregate report METRICS' names holding the reference functions' values (fixture numbers), and
  the table prints those metrics, ATE and RPE-T in millimetres."""
  root, expected = fixtures
  ref = expected["depth"]["monst3r_sintel_lad2_max70_postclip70"]
  s = protocol.Settings("sintel", oracle=True)  # monst3r_sintel: lad2, cap 70, post-clip 70
  rows = []
  for i in range(2):
    score = protocol.score_depth(_load(root, f"depth_seq{i}_pred.npy"), _load(root, f"depth_seq{i}_gt.npy"), s)
    want = ref["per_sequence"][f"seq{i}"]
    assert list(score.metrics) == list(protocol.DEPTH_METRICS) and score.valid_pixels == want["valid_pixels"]
    np.testing.assert_allclose([score.metrics["abs_rel"], score.metrics["delta_1.25"]],
                               [want["Abs Rel"], want["δ < 1.25"]], rtol=1e-4)
    rows.append(_row(score, ate=0.01 * (i + 1)))
  overall = protocol.aggregate(rows, s.protocol)
  assert list(overall) == list(protocol.METRICS)
  want = ref["pixel_weighted_average"]
  np.testing.assert_allclose([overall["abs_rel"], overall["delta_1.25"]], [want["Abs Rel"], want["δ < 1.25"]], 1e-4)
  np.testing.assert_allclose(overall["ate"], 0.015)  # cameras: the unweighted mean over sequences
  results = protocol.Results("d", s, {"a": rows[0], "b": rows[1]}, overall)
  assert set(results.to_json()["sequences"]["a"]) >= set(protocol.METRICS)
  assert f"| **overall** | {overall['abs_rel']:.3f} | {100 * overall['delta_1.25']:.1f} | 15.00 | 0.00 | 1.000 |" in (
    report.markdown_table(results))

  s = protocol.Settings("sintel", oracle=True, protocol="depthcrafter")  # cap 70 for Sintel
  score = protocol.score_depth(1 / _load(root, "depth_seq0_pred_disparity.npy"), _load(root, "depth_seq0_gt.npy"), s)
  want = expected["depthcrafter"]["depthcrafter_eval_single_depthdomain_max70"]
  np.testing.assert_allclose([score.metrics["abs_rel"], score.metrics["delta_1.25"]],
                             [want["abs_relative_difference"], want["delta1_acc"]], rtol=1e-4)
  skipped = _row(score, None)._replace(camera_skipped="camera metrics need at least 3 poses, got 2")
  overall = protocol.aggregate([_row(score, 0.02), skipped], "depthcrafter")
  assert overall["abs_rel"] == score.metrics["abs_rel"] and overall["ate"] == 0.02  # a skipped camera is left out


def test_frame_selection_follows_the_published_cuts():
  assert protocol.frame_cut("auto", "monst3r_bonn", "bonn") == slice(30, 140)
  assert len(np.arange(1000)[protocol.frame_cut("auto", "geo4d", "tum")]) == 90
  assert protocol.frame_cut("auto", "depthcrafter", "sintel") == slice(0, 50)
  assert protocol.frame_cut("auto", "monst3r_sintel", "sintel") == slice(None)
  assert protocol.frame_cut("10:20", "geo4d", "bonn") == slice(10, 20)
  with pytest.raises(ValueError, match="START:STOP"):
    protocol.frame_cut("every other", "geo4d", "bonn")


@pytest.mark.parametrize("n", [5, 17, 100, 2016, 3233, 40000, 1_000_003])
def test_torch_order_sum_is_bit_identical_to_torch_cpu_sum(n):
  """The scale-only IRLS is chaotic in float32 rounding (weights 1/(|r| + 1e-8)); its fixture needs torch's order."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(n)
  x = (rng.standard_normal(n) * np.exp(3 * rng.standard_normal(n))).astype(np.float32)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # above 32768 elements torch splits the sum across threads
  try:
    want = torch.sum(torch.from_numpy(x)).numpy()
  finally:
    torch.set_num_threads(threads)
  assert depth.torch_order_sum(x) == want
