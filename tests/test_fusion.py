"""Fusion rules on hand-made probabilities, the fusion modules, and the two-stage
trainer path (branches trained first, grafted in, kept frozen)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.configs import load_config
from avjax.errors import UserError
from avjax.models import fusion
from avjax.train import checkpoint as ckpt_lib
from avjax.train import runtime, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S1 = os.path.join(REPO, "experiments", "sultana2024.py")
AVJAX_AUDIO = os.path.join(REPO, "experiments", "avjax_audio.py")


# --- rules --------------------------------------------------------------------------


def test_max_confidence_takes_the_more_confident_branch_per_example():
  audio = np.array([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]])
  video = np.array([[0.1, 0.5, 0.4], [0.1, 0.1, 0.8]])
  fused = np.asarray(fusion.max_confidence(np.stack([audio, video])))
  # Example 0: audio's top (0.7) beats video's (0.5); example 1: video's 0.8 wins.
  np.testing.assert_allclose(fused[0], audio[0])
  np.testing.assert_allclose(fused[1], video[1])


def test_weighted_rule_is_the_normalised_weighted_sum():
  video = np.array([[0.6, 0.4], [0.2, 0.8]])
  audio = np.array([[0.1, 0.9], [0.5, 0.5]])
  w_video, w_audio = 0.55, 0.38
  fused = np.asarray(fusion.weighted(np.stack([video, audio]), [w_video, w_audio]))
  expected = (w_video * video + w_audio * audio) / (w_video + w_audio)
  np.testing.assert_allclose(fused, expected, rtol=1e-6)
  np.testing.assert_allclose(fused.sum(-1), 1.0, rtol=1e-6)
  # Example 0: 0.55*0.6 + 0.38*0.1 = 0.368 < 0.55*0.4 + 0.38*0.9 = 0.562 -> class 1,
  # although video alone says class 0: the weights, not one branch, decide.
  assert fused[0].argmax() == 1
  raw = np.asarray(fusion.weighted(np.stack([video, audio]), [w_video, w_audio],
                                   normalize=False))
  np.testing.assert_allclose(raw, w_video * video + w_audio * audio, rtol=1e-6)


def test_weighted_rule_rejects_a_wrong_number_of_weights():
  with pytest.raises(UserError, match="weights"):
    fusion.weighted(np.ones((2, 1, 3)) / 3, [1.0, 2.0, 3.0])


def _inputs(batch=3, seed=0):
  rng = np.random.default_rng(seed)
  return {"mfcc": jnp.asarray(rng.normal(size=(batch, 180, 20)), jnp.float32),
          "mfcc_mask": jnp.ones((batch, 180), bool),
          "frames3d": jnp.asarray(rng.integers(0, 255, (batch, 30, 80, 70, 1)), jnp.uint8)}


def _decision_model(rule, weights=None):
  cfg = load_config(S1 + ":fusion,smoke")
  branches = cfg.model.branches.to_dict()
  return fusion.DecisionFusion(branches=branches, num_classes=8, rule=rule, weights=weights)


@pytest.mark.parametrize("rule", ["max_confidence", "weighted", "mean"])
def test_decision_fusion_applies_its_rule_to_the_branch_softmax(rule):
  weights = {"video": 0.55, "audio": 0.38}
  model = _decision_model(rule, weights)
  x = _inputs()
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  out = model.apply(variables, x, train=False)
  probs = np.stack([jax.nn.softmax(out["audio_logits"]), jax.nn.softmax(out["video_logits"])])
  if rule == "max_confidence":
    want = fusion.max_confidence(probs)
  elif rule == "weighted":
    want = fusion.weighted(probs, [weights["audio"], weights["video"]])
  else:
    want = probs.mean(0)
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(out["logits"])), want, atol=1e-6)
  assert set(variables["params"]) == {"audio", "video"}  # No parameters of its own.


def test_weighted_decision_fusion_needs_a_weight_per_branch():
  model = _decision_model("weighted", {"video": 0.55})
  with pytest.raises(UserError, match="audio"):
    model.init(jax.random.PRNGKey(0), _inputs(), train=False)


def test_feature_concat_fusion_joins_the_branch_embeddings_and_cuts_their_gradient():
  cfg = load_config(S1 + ":fusion,smoke")
  model = runtime.make_model(cfg, 8)
  x = _inputs()
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  head = variables["params"]["fusion_dense_0"]["kernel"]
  audio_dim = cfg.model.branches.audio.hidden[-1]
  video_dim = cfg.model.branches.video.hidden[-1]
  assert head.shape == (audio_dim + video_dim, cfg.model.hidden[0])

  def loss(params):
    return jnp.sum(model.apply({"params": params}, x, train=True,
                               rngs={"dropout": jax.random.PRNGKey(1)})["logits"] ** 2)
  grads = jax.grad(loss)(variables["params"])
  branch_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(
      {k: grads[k] for k in ("audio", "video")}))
  head_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["fusion_dense_0"]))
  assert branch_norm == 0.0 and head_norm > 0.0


def test_fusion_needs_two_branches():
  cfg = load_config(S1 + ":fusion,smoke")
  branches = {"audio": cfg.model.branches.audio.to_dict()}
  model = fusion.FeatureConcatFusion(branches=branches, num_classes=8)
  with pytest.raises(UserError, match="two branches"):
    model.init(jax.random.PRNGKey(0), _inputs(), train=False)


# --- two stages through the trainer --------------------------------------------------


def test_two_stage_fusion_trains_branches_then_keeps_them_frozen(prepared, tmp_path):
  data_dir = prepared("mfcc")
  prepared("frames3d_gray_80x70x30")
  config = load_config(S1 + ":fusion,smoke", [
      f"data.data_dir={data_dir}", "data.protocol=actor_kfold", "data.k=4"])
  workdir = str(tmp_path / "fusion")
  trainer.train_and_evaluate(config, workdir)

  for name in ("audio", "video"):
    branch = os.path.join(workdir, f"branch_{name}")
    with open(os.path.join(branch, "config.json"), encoding="utf-8") as f:
      branch_cfg = json.load(f)
    # Same actors as the fusion run: the branch never saw its test actors.
    assert branch_cfg["data"]["fold"] == config.data.fold
    assert branch_cfg["data"]["protocol"] == "actor_kfold"
    assert branch_cfg["model"]["name"] == config.model.branches[name].name

  # The fusion checkpoint's branch parameters are the branches' best checkpoints,
  # unchanged by the fusion steps.
  mesh = runtime.make_mesh(config)
  datasets = runtime.create_datasets(config, mesh)
  setup = runtime.build(config, datasets.info, mesh)
  fused_ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  fused = jax.device_get(runtime.restore_state(setup, fused_ckpt, fused_ckpt.latest_step()))
  fused_ckpt.close()
  assert int(fused.step) == config.train.num_train_steps
  for name in ("audio", "video"):
    branch_dir = os.path.join(workdir, f"branch_{name}")
    from avjax.train import stages
    sub_cfg = stages.branch_config(config, name)
    sub_setup = runtime.build(sub_cfg, datasets.info, mesh)
    ck = ckpt_lib.Checkpointer(branch_dir, best_metric=sub_cfg.train.best_metric,
                               read_only=True)
    sub = jax.device_get(runtime.restore_state(sub_setup, ck, ck.best_step()))
    ck.close()
    jax.tree.map(np.testing.assert_array_equal, fused.params[name], sub.params)
  with open(os.path.join(workdir, "report.json"), encoding="utf-8") as f:
    assert json.load(f)["num_examples"]["test"] > 0


def _must_not_train(config, workdir):
  pytest.fail(f"trained a branch into {workdir}: the check should have refused first")


def test_a_given_branch_run_of_another_fold_is_refused(prepared, tmp_path):
  from avjax.train import stages
  branch = tmp_path / "audio_run"
  branch.mkdir()
  (branch / "config.json").write_text(json.dumps(
      {"data": {"dataset": "ravdess", "protocol": "actor_kfold", "fold": 1}}))
  config = load_config(S1 + ":fusion,smoke", [
      "data.protocol=actor_kfold", "data.fold=0", f"pretrained.audio.workdir={branch}"])
  with pytest.raises(UserError, match="fold"):
    stages.prepare_branches(config, str(tmp_path / "fusion"), train_branch=_must_not_train)


def test_a_given_branch_run_of_another_k_is_refused(tmp_path):
  from avjax.train import stages
  branch = tmp_path / "audio_run"
  branch.mkdir()
  (branch / "config.json").write_text(json.dumps(
      {"data": {"dataset": "ravdess", "protocol": "actor_kfold", "fold": 0, "k": 3}}))
  config = load_config(S1 + ":fusion,smoke", [
      "data.protocol=actor_kfold", "data.k=4", "data.fold=0",
      f"pretrained.audio.workdir={branch}"])
  with pytest.raises(UserError, match="data.k"):
    stages.prepare_branches(config, str(tmp_path / "fusion"), train_branch=_must_not_train)


def test_a_finished_branch_in_the_workdir_is_reused_only_for_the_same_run(tmp_path):
  """A fusion workdir reused with another fold must not graft the branches
  trained on the old fold (they trained on the new fold's test actors)."""
  from avjax.train import stages

  def config_for(fold):
    return load_config(S1 + ":fusion,smoke", [
        "data.protocol=actor_kfold", "data.k=4", f"data.fold={fold}"])

  workdir = tmp_path / "fusion"
  old = config_for(1)
  for name in ("audio", "video"):  # As a finished fold-1 run leaves them.
    branch = workdir / f"branch_{name}"
    branch.mkdir(parents=True)
    (branch / "config.json").write_text(
        stages.branch_config(old, name).to_json_best_effort())
    (branch / stages.REPORT).write_text("{}")
  assert set(stages.prepare_branches(old, str(workdir), train_branch=_must_not_train)) == {"audio", "video"}
  with pytest.raises(UserError, match="data.fold"):
    stages.prepare_branches(config_for(0), str(workdir), train_branch=_must_not_train)


def test_an_ensemble_trains_each_member_with_its_own_seed(prepared, tmp_path):
  """avjax_audio's `ensemble`: the members are the same config on the same fold,
  seeds run seed + 0, 1, 2, so they differ; the run then only evaluates."""
  data_dir = prepared("logmel")
  config = load_config(AVJAX_AUDIO + ":ensemble,smoke", [
      f"data.data_dir={data_dir}", "data.protocol=actor_kfold", "data.k=4", "seed=5"])
  workdir = str(tmp_path / "ensemble")
  trainer.train_and_evaluate(config, workdir)
  names = sorted(config.model.branches)
  assert len(names) == 3
  seeds, kernels = [], []
  for name in names:
    branch = os.path.join(workdir, f"branch_{name}")
    with open(os.path.join(branch, "config.json"), encoding="utf-8") as f:
      saved = json.load(f)
    assert saved["data"]["fold"] == config.data.fold and saved["model"]["name"] == "avjax_audio"
    seeds.append(saved["seed"])
  assert seeds == [5, 6, 7]
  mesh = runtime.make_mesh(config)
  datasets = runtime.create_datasets(config, mesh)
  setup = runtime.build(config, datasets.info, mesh)
  ck = ckpt_lib.Checkpointer(workdir, read_only=True)
  fused = jax.device_get(runtime.restore_state(setup, ck, ck.latest_step()))
  ck.close()
  for name in names:
    kernels.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(fused.params[name])]))
  for a, b in [(0, 1), (0, 2), (1, 2)]:
    assert not np.allclose(kernels[a], kernels[b]), (names[a], names[b])
  with open(os.path.join(workdir, "report.json"), encoding="utf-8") as f:
    assert json.load(f)["num_examples"]["test"] > 0
