"""avjax's audio net: shapes at any clip length, masking (what the padding holds
never reaches the logits), attentive pooling weights, test-time crop averaging."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax import models
from avjax.models import avjax_audio

SMALL = dict(conv2d_features=(4, 8), tdnn_features=(16, 16), attention_hidden=8, hidden=12,
             dropout_rate=0.3)


def _inputs(batch=3, t=160, real=(160, 120, 90), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, t, 64)).astype(np.float32)
  mask = np.zeros((batch, t), bool)
  for i, n in enumerate(real):
    mask[i, :n] = True
  return {"logmel": jnp.asarray(x), "logmel_mask": jnp.asarray(mask)}


@pytest.fixture(scope="module")
def net():
  model = models.get_model("avjax_audio", num_classes=8, **SMALL)
  variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                         _inputs(), train=False)
  return model, variables


def test_registered_and_outputs_have_the_trainer_shapes_at_any_length(net):
  model, variables = net
  assert "avjax_audio" in models.registered_models()
  for t in (160, 400, 96):
    out = model.apply(variables, _inputs(t=t, real=(t, t, t)), train=False)
    assert out["logits"].shape == (3, 8) and out["logits"].dtype == jnp.float32
    assert out["embedding"].shape == (3, SMALL["hidden"])
    assert np.isfinite(np.asarray(out["logits"])).all()


def test_train_mode_updates_batch_stats_and_uses_dropout(net):
  model, variables = net
  x = _inputs()
  rngs = lambda k: {"dropout": jax.random.PRNGKey(k)}  # noqa: E731
  a, new = model.apply(variables, x, train=True, rngs=rngs(0), mutable=["batch_stats"])
  b, _ = model.apply(variables, x, train=True, rngs=rngs(1), mutable=["batch_stats"])
  assert not np.allclose(a["logits"], b["logits"])
  changed = jax.tree.map(lambda u, v: not np.allclose(u, v), variables["batch_stats"],
                         new["batch_stats"])
  assert any(jax.tree.leaves(changed))


def test_padding_content_never_reaches_the_logits(net):
  model, variables = net
  x = _inputs()
  garbage = np.asarray(x["logmel"]).copy()
  mask = np.asarray(x["logmel_mask"])
  garbage[~mask] = 1e3 * np.random.default_rng(5).normal(size=garbage[~mask].shape)
  a = model.apply(variables, x, train=False)["logits"]
  b = model.apply(variables, {**x, "logmel": jnp.asarray(garbage)}, train=False)["logits"]
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # ...while the real frames do.
  changed = np.asarray(x["logmel"]).copy()
  changed[:, :40] += 3.0 * np.random.default_rng(6).normal(size=changed[:, :40].shape)
  c = model.apply(variables, {**x, "logmel": jnp.asarray(changed)}, train=False)["logits"]
  assert not np.allclose(a, c, atol=1e-3)


def test_per_utterance_normalisation_removes_a_level_and_band_offset(net):
  model, variables = net
  x = _inputs(real=(160, 160, 160))
  offset = jnp.asarray(np.linspace(-5, 5, 64), jnp.float32)
  a = model.apply(variables, x, train=False)["logits"]
  b = model.apply(variables, {**x, "logmel": x["logmel"] * 2.0 + offset + 7.0},
                  train=False)["logits"]
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # 'global' removes the clip's level and scale but keeps its spectral envelope.
  g = models.get_model("avjax_audio", num_classes=8, normalize="global", **SMALL)
  a = g.apply(variables, x, train=False)["logits"]
  b = g.apply(variables, {**x, "logmel": x["logmel"] * 2.0 + 7.0}, train=False)["logits"]
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  c = g.apply(variables, {**x, "logmel": x["logmel"] + offset}, train=False)["logits"]
  assert not np.allclose(a, c, atol=1e-3)


def test_attentive_pooling_gives_padded_steps_no_weight():
  pool = avjax_audio.AttentiveStatsPool(hidden=4)
  h = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 5)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]], jnp.float32)
  variables = pool.init(jax.random.PRNGKey(0), h, mask)
  (pooled, w) = pool.apply(variables, h, mask)
  assert pooled.shape == (2, 10)
  np.testing.assert_allclose(np.asarray(w).sum(axis=1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(w)[1, 3:] == 0.0)
  # The weighted mean over the real steps only.
  np.testing.assert_allclose(pooled[1, :5], (w[1, :3, None] * h[1, :3]).sum(0), rtol=1e-5)


def test_pool_mask_marks_a_step_real_if_any_frame_in_it_is():
  m = jnp.asarray([[1, 1, 1, 0, 0, 0, 0]], jnp.float32)
  np.testing.assert_array_equal(avjax_audio.pool_mask(m, 2), [[1, 1, 0]])


def test_eval_crops_average_the_crops_log_probabilities(net):
  _, variables = net
  crop = 64
  tta = models.get_model("avjax_audio", num_classes=8, eval_crop=crop, eval_crops=3, **SMALL)
  plain = models.get_model("avjax_audio", num_classes=8, **SMALL)
  x = _inputs(batch=2, t=200, real=(200, 150))
  got = np.asarray(tta.apply(variables, x, train=False)["logits"])
  xs, ms = np.asarray(x["logmel"]), np.asarray(x["logmel_mask"])
  # The crop statistics are the whole clip's (normalised before cropping).
  from avjax import layers
  xn = np.asarray(layers.masked_cmvn(jnp.asarray(xs), jnp.asarray(ms, jnp.float32)[..., None]))
  expected = []
  for i, real in enumerate((200, 150)):
    logps = []
    for frac in (0.0, 0.5, 1.0):
      s = int(round((real - crop) * frac))
      one = {"logmel": jnp.asarray(xn[i:i + 1, s:s + crop]),
             "logmel_mask": jnp.asarray(ms[i:i + 1, s:s + crop])}
      no_norm = models.get_model("avjax_audio", num_classes=8, normalize="none", **SMALL)
      logits = no_norm.apply(variables, one, train=False)["logits"]
      logps.append(np.asarray(jax.nn.log_softmax(logits, axis=-1))[0])
    expected.append(np.mean(logps, axis=0))
  np.testing.assert_allclose(got, np.stack(expected), rtol=1e-4, atol=1e-4)
  # A clip no longer than the crop is scored whole.
  short = _inputs(batch=3, t=crop, real=(crop, crop, crop))
  np.testing.assert_allclose(tta.apply(variables, short, train=False)["logits"],
                             plain.apply(variables, short, train=False)["logits"], rtol=1e-6)


def test_eval_crops_lie_in_the_active_span(net):
  """With active_db, the crops are spread over the speech between the silence
  around a take (frames 40-129 here), not from the clip's first frame."""
  _, variables = net
  crop, span = 32, (40, 130)
  tta = models.get_model("avjax_audio", num_classes=8, eval_crop=crop, eval_crops=3,
                         active_db=30.0, **SMALL)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 160, 64)).astype(np.float32)
  x[:, :span[0]] = -12.0 + 0.1 * rng.normal(size=(1, span[0], 64))
  x[:, span[1]:] = -12.0 + 0.1 * rng.normal(size=(1, 160 - span[1], 64))
  inputs = {"logmel": jnp.asarray(x), "logmel_mask": jnp.ones((1, 160), bool)}
  got = np.asarray(tta.apply(variables, inputs, train=False)["logits"])
  active = avjax_audio.active_frames(jnp.asarray(x), jnp.ones((1, 160)), 30.0)
  xn = np.asarray(avjax_audio.normalize_utterance(jnp.asarray(x), active, tta.normalize))
  no_norm = models.get_model("avjax_audio", num_classes=8, normalize="none", **SMALL)
  logps = []
  for frac in (0.0, 0.5, 1.0):
    s = span[0] + int(round((span[1] - span[0] - crop) * frac))
    one = {"logmel": jnp.asarray(xn[:, s:s + crop]), "logmel_mask": jnp.ones((1, crop), bool)}
    logits = no_norm.apply(variables, one, train=False)["logits"]
    logps.append(np.asarray(jax.nn.log_softmax(logits, axis=-1))[0])
  np.testing.assert_allclose(got[0], np.mean(logps, axis=0), rtol=1e-4, atol=1e-4)


def test_active_db_masks_the_silence_around_a_take(net):
  _, variables = net
  model = models.get_model("avjax_audio", num_classes=8, active_db=30.0, **SMALL)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 160, 64)).astype(np.float32)
  x[:, :40] = -12.0 + 0.1 * rng.normal(size=(2, 40, 64))    # ~50 dB below the speech
  x[:, 130:] = -12.0 + 0.1 * rng.normal(size=(2, 30, 64))
  mask = jnp.ones((2, 160), bool)
  active = np.asarray(avjax_audio.active_frames(jnp.asarray(x), mask.astype(jnp.float32), 30.0))
  assert active[:, 40:130].all() and not active[:, :40].any() and not active[:, 130:].any()
  other = x.copy()
  other[:, :40] = -11.0 + 0.1 * rng.normal(size=(2, 40, 64))  # Other silence.
  a = model.apply(variables, {"logmel": jnp.asarray(x), "logmel_mask": mask}, train=False)
  b = model.apply(variables, {"logmel": jnp.asarray(other), "logmel_mask": mask}, train=False)
  np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
  plain = models.get_model("avjax_audio", num_classes=8, **SMALL)
  c = plain.apply(variables, {"logmel": jnp.asarray(x), "logmel_mask": mask}, train=False)
  d = plain.apply(variables, {"logmel": jnp.asarray(other), "logmel_mask": mask}, train=False)
  assert not np.allclose(c["logits"], d["logits"], atol=1e-4)
