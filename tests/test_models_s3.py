"""S3 networks (FrameCNN2D, MFCCConvLSTM) and experiments/satvik2025.py: shapes
from the paper's layer list, masking, BatchNorm train/eval, gradients, configs and
a few real trainer steps per unimodal smoke config."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import avjax.models.satvik  # noqa: F401  Registers frame_cnn2d and mfcc_conv_lstm.
from avjax import models
from avjax.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "satvik2025.py")

SMALL_VIDEO = {"features": (4, 4), "hidden": (8, 6)}
SMALL_AUDIO = {"conv_features": (4, 4, 8), "lstm_features": (6, 6, 5), "hidden": 7}


def _init(model, inputs):
  return jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(inputs)


def _frames(rng, b, t, size=16):
  return rng.integers(0, 256, (b, t, size, size, 3), dtype=np.uint8)


class _Built:
  """A small model, its variables (initialised once: compiling is the slow part
  on CPU) and one jitted eval function per dtype."""

  def __init__(self, name, inputs, **kwargs):
    self.name, self.kwargs, self.inputs = name, kwargs, inputs
    self.model = models.get_model(name, **kwargs)
    self.variables = _init(self.model, inputs)
    self._eval = {}

  def eval(self, variables, inputs, dtype=jnp.float32, **overrides):
    key = (dtype, tuple(sorted(overrides.items())))
    if key not in self._eval:
      model = models.get_model(self.name, dtype=dtype, **{**self.kwargs, **overrides})
      self._eval[key] = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return jax.device_get(self._eval[key](variables, inputs))


@pytest.fixture(scope="module")
def video():
  rng = np.random.default_rng(1)
  mask = np.ones((2, 5), bool)
  mask[0, 3:] = False  # Clip 0: 3 real frames; clip 1: all 5.
  return _Built("frame_cnn2d", {"frames2d": _frames(rng, 2, 5), "frames2d_mask": mask},
                **SMALL_VIDEO)


@pytest.fixture(scope="module")
def audio():
  rng = np.random.default_rng(3)
  x = (rng.normal(size=(2, 16, 8)) * 5 + 20).astype(np.float32)
  mask = np.ones((2, 16), bool)
  mask[0, 10:] = False  # Clip 0: 10 real frames, end-padded; clip 1: all 16.
  x[0, 10:] = 0.0
  return _Built("mfcc_conv_lstm", {"mfcc": x, "mfcc_mask": mask}, **SMALL_AUDIO)


# --- paper shapes -------------------------------------------------------------------


def test_frame_cnn_shapes_at_paper_sizes():
  model = models.get_model("frame_cnn2d")
  inputs = {"frames2d": jnp.zeros((2, 24, 64, 64, 3), jnp.uint8),
            "frames2d_mask": jnp.ones((2, 24), bool)}
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, inputs, train=False), variables)
  assert out["logits"].shape == (2, 8) and out["embedding"].shape == (2, model.hidden[-1])
  p = variables["params"]
  convs = [p[f"Conv_{i}"]["kernel"].shape for i in range(4)]
  assert convs == [(3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 128), (3, 3, 128, 256)]
  # Four 2x2 pools: 64 -> 4, so Flatten gives 4 * 4 * 256 features.
  side = 64 // 2 ** 4
  assert p["Dense_0"]["kernel"].shape == (side * side * 256, model.hidden[0])
  assert p["Dense_1"]["kernel"].shape == tuple(model.hidden)
  assert p["Dense_2"]["kernel"].shape == (model.hidden[-1], 8)
  assert len(model.hidden) == 2 and "batch_stats" not in variables


def test_mfcc_conv_lstm_shapes_at_paper_sizes():
  model = models.get_model("mfcc_conv_lstm")
  inputs = {"mfcc": jnp.zeros((2, 180, 20)), "mfcc_mask": jnp.ones((2, 180), bool)}
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, inputs, train=False), variables)
  assert out["logits"].shape == (2, 8) and out["embedding"].shape == (2, 64)
  p, stats = variables["params"], variables["batch_stats"]
  assert [p[f"Conv_{i}"]["kernel"].shape for i in range(3)] == [
      (3, 3, 1, 64), (3, 3, 64, 128), (3, 3, 128, 256)]
  # BatchNorm after the first two convolutions only.
  assert {k: v["mean"].shape for k, v in stats.items()} == {
      "BatchNorm_0": (64,), "BatchNorm_1": (128,)}
  # Two 2x2 pools: each LSTM step sees (20 / 4) coefficients x 256 channels.
  lstm_in = [(20 // 4) * 256, 256, 128]
  for i, (d_in, width) in enumerate(zip(lstm_in, (256, 128, 64))):
    cell = p[f"OptimizedLSTMCell_{i}"]
    assert cell["ii"]["kernel"].shape == (d_in, width)
    assert cell["hi"]["kernel"].shape == (width, width)
  assert p["Dense_0"]["kernel"].shape == (64, 64)
  assert p["Dense_1"]["kernel"].shape == (64, 8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_outputs_are_float32_with_float32_params(video, audio, dtype):
  for built, emb in ((video, SMALL_VIDEO["hidden"][-1]), (audio, SMALL_AUDIO["hidden"])):
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(built.variables))
    out = built.eval(built.variables, built.inputs, dtype=dtype)
    assert out["logits"].shape == (2, 8) and out["embedding"].shape == (2, emb)
    assert out["logits"].dtype == out["embedding"].dtype == jnp.float32
    assert np.isfinite(out["logits"]).all() and np.isfinite(out["embedding"]).all()


# --- FrameCNN2D: masked per-frame average ---------------------------------------------


def test_frame_mask_excludes_padded_frames(video):
  frames, mask = video.inputs["frames2d"], video.inputs["frames2d_mask"]
  base = video.eval(video.variables, video.inputs)

  padded_changed = frames.copy()
  padded_changed[0, 4] = 255 - padded_changed[0, 4]
  out = video.eval(video.variables, {"frames2d": padded_changed, "frames2d_mask": mask})
  for k in ("logits", "embedding"):
    np.testing.assert_array_equal(out[k], base[k])

  real_changed = frames.copy()
  real_changed[0, 1] = 255 - real_changed[0, 1]
  out = video.eval(video.variables, {"frames2d": real_changed, "frames2d_mask": mask})
  assert not np.allclose(out["logits"][0], base["logits"][0])
  np.testing.assert_array_equal(out["logits"][1], base["logits"][1])  # Clips independent.


def test_frame_clip_logits_are_mean_single_frame_log_probs(video):
  frames = video.inputs["frames2d"]
  clip = video.eval(video.variables, video.inputs)  # Clip 0 has 3 real frames.
  # Frame t of clip 0 alone, as a clip of 5 copies: its output is its own log-softmax.
  singles = [video.eval(video.variables, {
      "frames2d": np.repeat(frames[:1, t:t + 1], 5, axis=1).repeat(2, axis=0),
      "frames2d_mask": np.ones((2, 5), bool)}) for t in range(3)]
  log_probs = [np.asarray(jax.nn.log_softmax(s["logits"][0])) for s in singles]
  np.testing.assert_allclose(clip["logits"][0], np.mean(log_probs, axis=0),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(clip["embedding"][0],
                             np.mean([s["embedding"][0] for s in singles], axis=0),
                             rtol=1e-5, atol=1e-6)
  assert np.all(clip["logits"] <= 0)  # Means of log-probabilities.


# --- MFCCConvLSTM: padding, BatchNorm, dropout ----------------------------------------


def test_mfcc_padding_content_and_length_do_not_matter(audio):
  rng = np.random.default_rng(4)
  x16, mask16 = audio.inputs["mfcc"], audio.inputs["mfcc_mask"]
  x32 = np.zeros((2, 32, 8), np.float32)
  x32[:, :16] = x16
  mask32 = np.zeros((2, 32), bool)
  mask32[:, :16] = mask16
  garbage = x16.copy()
  garbage[0, 10:] = rng.normal(size=(6, 8)) * 1e3
  garbage[0, -1, 0] = np.inf

  for mask_padding in (True, False):
    a = audio.eval(audio.variables, audio.inputs, mask_padding=mask_padding)["logits"]
    b = audio.eval(audio.variables, {"mfcc": garbage, "mfcc_mask": mask16},
                   mask_padding=mask_padding)["logits"]
    np.testing.assert_array_equal(a, b)  # Padding content never matters.
    longer = audio.eval(audio.variables, {"mfcc": x32, "mfcc_mask": mask32},
                        mask_padding=mask_padding)["logits"]
    if mask_padding:  # The LSTMs stop at the last real step: padding length is irrelevant.
      np.testing.assert_allclose(a, longer, rtol=1e-5, atol=1e-6)
    else:  # Keras-like: the LSTMs run through the padding.
      assert not np.allclose(a, longer, rtol=1e-5, atol=1e-6)


def _train_fn(built):
  model = built.model

  @jax.jit
  def run(params, inputs, labels, key):
    def loss(p):
      out, new_state = model.apply({**built.variables, "params": p}, inputs, train=True,
                                   rngs={"dropout": key}, mutable=["batch_stats"])
      logp = jax.nn.log_softmax(out["logits"])
      return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), (out, new_state)
    (value, (out, new_state)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, out, new_state, grads
  return run


@pytest.fixture(scope="module")
def audio_train(audio):
  return _train_fn(audio)


def test_mfcc_batchnorm_train_and_eval_modes(audio, audio_train):
  variables = audio.variables
  assert set(variables) == {"params", "batch_stats"}
  labels = jnp.array([1, 5])
  _, out, new_state, _ = jax.device_get(
      audio_train(variables["params"], audio.inputs, labels, jax.random.PRNGKey(1)))
  assert out["logits"].shape == (2, 8)
  old = np.asarray(variables["batch_stats"]["BatchNorm_0"]["mean"])
  assert not np.allclose(old, new_state["batch_stats"]["BatchNorm_0"]["mean"])  # Updated.
  # Dropout is on in train mode (two keys differ) and off in eval (repeatable).
  _, out2, _, _ = audio_train(variables["params"], audio.inputs, labels, jax.random.PRNGKey(2))
  assert not np.allclose(out["logits"], np.asarray(out2["logits"]))
  updated = {"params": variables["params"], **new_state}
  e1 = audio.eval(updated, audio.inputs)
  e2 = audio.eval(updated, audio.inputs)
  np.testing.assert_array_equal(e1["logits"], e2["logits"])
  # Eval normalises with the running statistics: with the updated ones it moves.
  e0 = audio.eval(variables, audio.inputs)
  assert not np.allclose(e0["logits"], e1["logits"])


@pytest.mark.parametrize("which", ["video", "audio"])
def test_gradients_are_finite_and_reach_every_parameter(request, which):
  built = request.getfixturevalue(which)
  run = request.getfixturevalue("audio_train") if which == "audio" else _train_fn(built)
  value, _, _, grads = jax.device_get(
      run(built.variables["params"], built.inputs, jnp.array([0, 7]), jax.random.PRNGKey(0)))
  assert np.isfinite(value)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  for path, leaf in flat:
    assert np.isfinite(leaf).all(), jax.tree_util.keystr(path)
  zero = [jax.tree_util.keystr(p) for p, leaf in flat if not np.any(leaf != 0)]
  assert len(zero) <= 1, f"no gradient reaches {zero}"


# --- configs ------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["video", "audio", "decision", "video,smoke", "audio,smoke",
                                 "decision,smoke", "audio,demo", "video,tpu_v3_8",
                                 "decision,gpu,smoke"])
def test_every_variant_loads(arg):
  c = load_config(f"{CONFIG}:{arg}")
  variant = arg.split(",")[0]
  assert c.paper_accuracy == {"video": 96.88, "audio": 96.82, "decision": 100.0}[variant]
  assert "trained on" in c.paper_protocol
  if "smoke" in arg:
    assert c.train.global_batch_size == 8
  if variant != "decision":
    from avjax.train import runtime
    model = runtime.make_model(c, 8)  # Every model field is a constructor argument.
    assert model.num_classes == 8


def test_paper_hyperparameters():
  video = load_config(f"{CONFIG}:video")
  assert video.model.name == "frame_cnn2d"
  assert video.optimizer.name == "adam"
  assert math.isclose(video.optimizer.learning_rate, 1e-4)
  assert video.train.global_batch_size == 8 and video.train.num_epochs == 25
  assert video.data.feature_set == "frames2d_64"
  assert tuple(video.model.inputs) == ("frames2d", "frames2d_mask")
  assert tuple(video.model.features) == (32, 64, 128, 256)
  assert not video.optimizer.reduce_on_plateau.enabled

  audio = load_config(f"{CONFIG}:audio")
  assert audio.model.name == "mfcc_conv_lstm" and audio.optimizer.name == "adam"
  assert audio.train.global_batch_size == 32 and audio.train.num_epochs == 50
  plateau = audio.optimizer.reduce_on_plateau
  assert plateau.enabled and plateau.patience == 3 and plateau.factor == 0.5
  assert audio.data.feature_set == "mfcc"
  assert tuple(audio.model.inputs) == ("mfcc", "mfcc_mask")
  assert tuple(audio.model.conv_features) == (64, 128, 256)
  assert tuple(audio.model.lstm_features) == (256, 128, 64) and audio.model.hidden == 64


@pytest.mark.parametrize("flags", ["", ",smoke"])
def test_decision_config_is_consistent(flags):
  c = load_config(f"{CONFIG}:decision{flags}")
  assert c.model.name == "decision_fusion" and c.model.rule == "max_confidence"
  assert set(c.model.branches) == {"audio", "video"}
  assert tuple(c.train.frozen) == ("audio", "video")
  assert c.train.num_train_steps == 0
  inputs = set(c.model.inputs)
  assert len(inputs) == len(c.model.inputs)
  sets = {c.data.feature_set, *c.data.feature_sets}
  assert sets == {"mfcc", "frames2d_64"}
  union = set()
  for m in ("audio", "video"):
    sub = c.pretrained[m].config
    assert c.pretrained[m].workdir == ""
    # The branch section is the branch run's model section (bar conv_impl).
    own = {k: v for k, v in sub.model.to_dict().items() if k != "conv_impl"}
    assert c.model.branches[m].to_dict() == own
    assert sub.model.name == {"audio": "mfcc_conv_lstm", "video": "frame_cnn2d"}[m]
    assert sub.data.feature_set in sets
    assert sub.paper_accuracy == {"audio": 96.82, "video": 96.88}[m]
    assert (sub.train.num_train_steps == 6) == bool(flags)  # Smoke reaches the branches.
    union |= set(sub.model.inputs)
  assert inputs == union


def test_decision_model_builds_from_the_config():
  """Abstract shapes only (nothing compiled): the fused model holds each branch's
  parameters under the branch name, exactly as the unimodal run has them."""
  from avjax.train import runtime
  c = load_config(f"{CONFIG}:decision,smoke")
  if "decision_fusion" not in models.registered_models():
    pytest.skip("decision_fusion is not registered in this checkout")
  inputs = {"mfcc": jnp.zeros((2, 180, 20)), "mfcc_mask": jnp.ones((2, 180), bool),
            "frames2d": jnp.zeros((2, 24, 64, 64, 3), jnp.uint8),
            "frames2d_mask": jnp.ones((2, 24), bool)}

  def shapes(config):
    model = runtime.make_model(config, 8)
    x = {k: inputs[k] for k in config.model.inputs}
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    return v, jax.eval_shape(lambda v: model.apply(v, x, train=False), v)

  variables, out = shapes(c)
  assert out["logits"].shape == (2, 8)
  assert set(variables["params"]) == {"audio", "video"}
  for m in ("audio", "video"):
    branch_vars, _ = shapes(c.pretrained[m].config)
    assert (jax.tree.map(lambda s: s.shape, variables["params"][m]) ==
            jax.tree.map(lambda s: s.shape, branch_vars["params"]))


def test_unknown_argument_raises():
  with pytest.raises(Exception, match="unknown"):
    load_config(f"{CONFIG}:audio,nonsense")
  with pytest.raises(Exception):
    load_config(f"{CONFIG}:audio,video")


# --- the real trainer on the synthetic corpus -------------------------------------------


@pytest.mark.parametrize("variant,feature_set", [("audio", "mfcc"), ("video", "frames2d_64")])
def test_smoke_trains_on_synthetic_corpus(prepared, tmp_path, variant, feature_set):
  from avjax.train import trainer
  data_dir = prepared(feature_set)
  config = load_config(f"{CONFIG}:{variant},smoke")
  config.data.data_dir = str(data_dir)
  config.data.protocol = "actor_kfold"
  config.data.k = 4
  workdir = tmp_path / "run"
  final = trainer.train_and_evaluate(config, str(workdir))
  assert np.isfinite(final["train/loss"])
  assert any(k.startswith("test/") for k in final), sorted(final)
  assert final["report/checkpoint_step"] > 0
  assert json.loads((workdir / "report.json").read_text())
