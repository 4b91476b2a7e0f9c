"""S4 (Mocanu et al. 2023): attention layers, the snippet network, the
emotion-constrained triplet loss, model-parallel placement and the config."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import avjax.models.mocanu  # noqa: F401  Registers mocanu_av.
from avjax import layers, losses, models
from avjax.configs import load_config
from avjax.errors import UserError
from avjax.train import runtime, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "mocanu2023.py")

# Tiny network and inputs: 4 clips x 4 snippets of 4 frames at 16x16, 16x16 mels.
TINY = dict(widths=(4, 8), blocks=(1, 1), stem_stride=(1, 2, 2), attention_reduction=2,
            model_dim=8, num_heads=2, temporal_hidden=8, fusion_dim=8)
B, S, C = 4, 4, 8


def _inputs(seed=0, b=B):
  rng = np.random.default_rng(seed)
  return {"video_snippets": rng.integers(0, 256, (b, S, 4, 16, 16, 3), dtype=np.uint8),
          "audio_snippets": rng.normal(size=(b, S, 16, 16)).astype(np.float32)}


def _train_apply(model):
  return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])


@pytest.fixture(scope="module")
def tiny():
  """The tiny model, its variables, inputs and one single-device training-mode
  forward (shared: compiling the network dominates this file's run time)."""
  model = models.get_model("mocanu_av", num_classes=C, **TINY)
  inputs = _inputs()
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(inputs)
  dev = jax.devices()[0]
  forward = jax.jit(_train_apply(model))(jax.device_put(variables, dev),
                                         jax.device_put(inputs, dev))
  assert len(forward[0]["logits"].sharding.device_set) == 1
  return model, variables, inputs, forward


# --- network --------------------------------------------------------------------


def _resnet_params(widths, blocks, in_ch, stem_kernel, ndim):
  """Parameter count of a ResNet trunk from its layer shapes (BN: scale + bias)."""
  k = 3 ** ndim
  total = math.prod(stem_kernel) * in_ch * widths[0] + 2 * widths[0]
  c_in = widths[0]
  for stage, (w, n) in enumerate(zip(widths, blocks)):
    for i in range(n):
      total += k * c_in * w + k * w * w + 4 * w
      if c_in != w or (stage > 0 and i == 0):
        total += c_in * w + 2 * w
      c_in = w
  return total


def test_full_size_shapes_and_resnet18_trunks():
  model = models.get_model("mocanu_av", num_classes=8)
  inputs = {"video_snippets": jnp.zeros((2, 4, 8, 112, 112, 3), jnp.uint8),
            "audio_snippets": jnp.zeros((2, 4, 64, 64), jnp.float32)}
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, inputs, train=False), variables)
  assert out["logits"].shape == (2, 8) and out["logits"].dtype == jnp.float32
  assert out["embedding"].shape == (2, model.fusion_dim)
  params = variables["params"]
  count = lambda t: sum(math.prod(x.shape) for x in jax.tree.leaves(t))  # noqa: E731
  widths, blocks = (64, 128, 256, 512), (2, 2, 2, 2)
  assert count(params["video_trunk"]) == _resnet_params(widths, blocks, 3, (3, 7, 7), 3)
  assert count(params["audio_trunk"]) == _resnet_params(widths, blocks, 1, (7, 7), 2)
  kernel = params["video_trunk"]["stage3_block1"]["Conv_1"]["kernel"]
  assert kernel.shape == (3, 3, 3, 512, 512)
  # bf16 compute keeps float32 parameters and float32 outputs.
  bf16 = models.get_model("mocanu_av", num_classes=8, dtype=jnp.bfloat16)
  out = jax.eval_shape(lambda v: bf16.apply(v, inputs, train=False), variables)
  assert out["logits"].dtype == jnp.float32 and out["embedding"].dtype == jnp.float32


def test_tiny_outputs_and_attention_weights(tiny):
  _, variables, _, (out, state) = tiny
  assert set(variables) == {"params", "batch_stats"}
  assert out["logits"].shape == (B, C) and out["embedding"].shape == (B, TINY["fusion_dim"])
  assert np.isfinite(np.asarray(out["logits"])).all()
  inter = state["intermediates"]
  for name in ("video_temporal_weights", "audio_temporal_weights"):
    w = np.asarray(inter[name][0])
    assert w.shape == (B, S) and (w >= 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  for name in ("video_channel_gate", "video_spatial_gate"):  # Sigmoid gates.
    g = np.asarray(inter[name][0])
    assert g.shape[0] == B * S and (g > 0).all() and (g < 1).all()
  # Training updated the running statistics.
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(state["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(after, before))


def test_temporal_attention_softmax_and_mask():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 6)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], jnp.float32)
  layer = layers.TemporalAttention(hidden=4)
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
  pooled, w = jax.jit(layer.apply)(params, x, mask)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)
  assert (np.asarray(w)[np.asarray(mask) == 0] == 0).all()
  # The output is the weighted sum of the snippets.
  np.testing.assert_allclose(np.asarray(pooled), np.einsum("bs,bsd->bd", w, x), atol=1e-5)


def test_cross_modal_attention_mixes_modalities():
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
  audio = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
  layer = layers.CrossModalAttention(num_heads=2, sow_weights=True)
  params = jax.jit(lambda v, a: layer.init(jax.random.PRNGKey(0), v, a, train=False))(
      video, audio)
  apply = jax.jit(lambda v, a: layer.apply(params, v, a, train=False,
                                           mutable=["intermediates"]))
  (v_out, a_out), inter = apply(video, audio)
  assert v_out.shape == video.shape and a_out.shape == audio.shape
  (v_same, _), _ = apply(video, audio)
  np.testing.assert_array_equal(np.asarray(v_out), np.asarray(v_same))
  # Only the audio changes: the video-attended output must change, per snippet.
  (v_new, _), _ = apply(video, audio + jnp.asarray(rng.normal(size=audio.shape), jnp.float32))
  assert (np.abs(np.asarray(v_new - v_out)).max(-1) > 1e-4).all()
  # And the other direction.
  (_, a_new), _ = apply(video * -1.0, audio)
  assert (np.abs(np.asarray(a_new - a_out)).max(-1) > 1e-4).all()
  # Each query snippet's weights over the other modality's snippets sum to one.
  for name in ("audio_to_video", "video_to_audio"):
    w = np.asarray(inter["intermediates"][name]["attention_weights"][0])
    assert w.shape == (2, 2, 4, 4)  # (batch, heads, queries, keys)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


# --- emotion-constrained triplet loss -----------------------------------------------

# Classes 0 (happy), 1 (surprised), 2 (sad): 0 and 1 similar, 2 opposite to both.
SIM = ((1.0, 0.8, 0.0), (0.8, 1.0, 0.2), (0.0, 0.2, 1.0))


def _jit_loss(**kw):
  """The loss jitted with its parameters fixed (one compile, not one per op)."""
  kw.setdefault("triplet_margin", 0.2)
  kw.setdefault("emotion_margin", 0.1)
  return jax.jit(lambda outputs, batch: losses.emotion_triplet(
      outputs, batch, num_classes=3, **kw))


def _loss(emb, labels, valid=None, **kw):
  batch = {"label": jnp.asarray(labels, jnp.int32)}
  if valid is not None:
    batch["valid"] = jnp.asarray(valid, jnp.float32)
  return np.asarray(_jit_loss(**kw)({"embedding": jnp.asarray(emb, jnp.float32)}, batch))


def _on_circle(degrees):
  rad = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(rad), np.sin(rad)], -1).astype(np.float32)


def test_triplet_zero_when_constraints_hold_with_margin():
  # Tight clusters; surprised 60 deg from happy, sad 180 deg away: every triplet
  # and every similar-before-opposite ordering holds by more than its margin.
  emb = _on_circle([0, 2, 60, 62, 180, 182]) * 3.0  # Scale is normalised away.
  loss = _loss(emb, [0, 0, 1, 1, 2, 2], emotion_similarity=SIM)
  assert loss.shape == (6,)
  np.testing.assert_array_equal(loss, 0.0)


def test_triplet_positive_when_violated():
  # Same-class points on opposite sides, the other class in between.
  emb = np.asarray([[1, 0], [-1, 0], [0, 1]], np.float32)
  loss = _loss(emb, [0, 0, 1], triplet_margin=0.2)
  expected = 2.0 - math.sqrt(2.0) + 0.2  # d(a, p) - d(a, n) + margin.
  np.testing.assert_allclose(loss, [expected, expected, 0.0], atol=1e-5)


def test_emotion_constraint_positive_when_similar_is_farther():
  # Anchor happy at the origin with a close positive; the triplet holds, but sad
  # (opposite) sits nearer than surprised (similar).
  emb = np.asarray([[0, 0], [0.05, 0], [0, 2], [1, 0]], np.float32)
  labels = [0, 0, 1, 2]
  plain = _loss(emb, labels, triplet_normalize=False)
  assert plain[0] == 0.0 and plain[1] == 0.0
  loss = _loss(emb, labels, triplet_normalize=False, emotion_similarity=SIM,
               emotion_weight=1.0)
  # d(a, surprised) - d(a, sad) + 0.1 * (S[happy, surprised] - S[happy, sad]).
  np.testing.assert_allclose(loss[0], 2.0 - 1.0 + 0.1 * 0.8, atol=1e-5)
  assert loss[1] > 0


def _step_anchor(emb, labels, **kw):
  """One gradient-descent step on the anchor's (row 0) embedding only."""
  def total(e):
    batch = {"label": jnp.asarray(labels, jnp.int32)}
    return jnp.sum(losses.emotion_triplet({"embedding": e}, batch, num_classes=3,
                                          triplet_normalize=False, **kw))
  grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(emb)))
  assert np.isfinite(grad).all() and np.abs(grad[0]).sum() > 0
  moved = emb.copy()
  moved[0] -= 0.05 * grad[0]
  return moved


def test_triplet_gradient_pulls_positive_pushes_negative():
  emb = np.asarray([[0, 0], [2, 0], [0.3, 0.5]], np.float32)  # anchor, pos, neg
  moved = _step_anchor(emb, [0, 0, 1], triplet_margin=0.2)
  dist = lambda e, j: np.linalg.norm(e[0] - e[j])  # noqa: E731
  assert dist(moved, 1) < dist(emb, 1)
  assert dist(moved, 2) > dist(emb, 2)


def test_emotion_gradient_moves_toward_similar_away_from_opposite():
  emb = np.asarray([[0, 0], [0.05, 0], [0, 2], [1, 0]], np.float32)  # as above
  moved = _step_anchor(emb, [0, 0, 1, 2], triplet_margin=0.2, emotion_similarity=SIM,
                       emotion_margin=0.1)
  dist = lambda e, j: np.linalg.norm(e[0] - e[j])  # noqa: E731
  assert dist(moved, 2) < dist(emb, 2)  # toward surprised
  assert dist(moved, 3) > dist(emb, 3)  # away from sad


def test_invalid_examples_are_not_mined_and_lonely_anchors_are_finite():
  emb = _on_circle([0, 2, 60, 62, 180, 182])
  labels = [0, 0, 1, 1, 2, 2]
  clean = _loss(emb, labels, emotion_similarity=SIM)
  # A padded example of another class right on top of anchor 0 would violate
  # everything if it were mined.
  padded = _loss(np.concatenate([emb, emb[:1]]), labels + [2],
                 valid=[1] * 6 + [0], emotion_similarity=SIM)
  np.testing.assert_array_equal(padded[:6], clean)
  unmasked = _loss(np.concatenate([emb, emb[:1]]), labels + [2], emotion_similarity=SIM)
  assert unmasked[0] > 0
  # One example per class: no positives anywhere, yet gradients stay finite.
  grad = jax.jit(jax.grad(lambda e: jnp.sum(losses.emotion_triplet(
      {"embedding": e}, {"label": jnp.arange(3)}, num_classes=3,
      emotion_similarity=SIM))))(jnp.asarray(emb[::2]))
  assert np.isfinite(np.asarray(grad)).all()


def test_similarity_must_match_classes():
  with pytest.raises(UserError, match="emotion_similarity"):
    jax.eval_shape(lambda: losses.emotion_triplet(
        {"embedding": jnp.ones((2, 2))}, {"label": jnp.zeros(2, jnp.int32)},
        num_classes=4, emotion_similarity=SIM))


# --- config ---------------------------------------------------------------------


def test_smoke_config_builds_model_and_combined_loss():
  config = load_config(CONFIG + ":av,smoke")
  assert config.data.feature_set == "snippets"
  assert tuple(config.model.inputs) == ("video_snippets", "audio_snippets")
  assert config.paper_accuracy == 89.25
  model = runtime.make_model(config, 8)
  assert isinstance(model, avjax.models.mocanu.AttentiveR3DResNetAV)
  inputs = {"video_snippets": jnp.zeros((1, 4, 8, 112, 112, 3), jnp.uint8),
            "audio_snippets": jnp.zeros((1, 4, 64, 64), jnp.float32)}
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.PRNGKey(0), inputs, train=False)[0])
  assert out["logits"].shape == (1, 8)
  # The default similarity: 8x8, symmetric, happy nearer surprised than sad.
  sim = np.asarray(config.loss.emotion_similarity)
  assert sim.shape == (8, 8) and np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1)
  happy, sad, surprised = 2, 3, 7
  assert sim[happy, surprised] > sim[happy, sad]
  # Cross-entropy + weighted triplet, as the trainer builds it.
  loss_fn = losses.make_loss(config.loss.to_dict(), 8)
  rng = np.random.default_rng(0)
  outputs = {"logits": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
             "embedding": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}
  batch = {"label": jnp.asarray([0, 2, 2, 3, 7, 7], jnp.int32)}

  @jax.jit
  def both(outputs, batch):
    ce = losses.cross_entropy(outputs, batch, num_classes=8)
    trip = losses.emotion_triplet(outputs, batch, num_classes=8,
                                  emotion_similarity=config.loss.emotion_similarity,
                                  triplet_margin=config.loss.triplet_margin,
                                  emotion_margin=config.loss.emotion_margin)
    return loss_fn(outputs, batch), ce, trip
  total, ce, trip = both(outputs, batch)
  w = config.loss.weights["emotion_triplet"]
  np.testing.assert_allclose(np.asarray(total), np.asarray(ce + w * trip), rtol=1e-6)
  assert np.asarray(trip).max() > 0  # Random embeddings violate something.
  crema = load_config(CONFIG + ":av,crema_d,smoke")
  assert np.asarray(crema.loss.emotion_similarity).shape == (6, 6)
  assert load_config(CONFIG + ":av,model_parallel").mesh.model == 2
  with pytest.raises(UserError):
    load_config(CONFIG + ":av,audio")


# --- model parallel ---------------------------------------------------------------


def test_model_parallel_splits_kernels_and_matches_single_device(tiny):
  if jax.device_count() != 8:
    pytest.fail(f"expected 8 simulated devices, have {jax.device_count()}")
  model, variables, inputs, (single, single_state) = tiny
  mesh = sharding.make_mesh({"data": 4, "model": 2})
  shardings = sharding.state_shardings(mesh, jax.eval_shape(lambda: variables))
  placed = jax.device_put(variables, shardings)

  kernel = placed["params"]["video_trunk"]["stage1_block0"]["Conv_1"]["kernel"]
  assert kernel.shape == (3, 3, 3, 8, 8)
  assert kernel.sharding.spec == P(None, None, None, None, "model")
  assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 3, 8, 4)}
  fusion = placed["params"]["fusion"]["kernel"]
  assert {s.data.shape for s in fusion.addressable_shards} == {(16, 4)}
  query = placed["params"]["cross"]["audio_to_video"]["query"]["kernel"]  # (D, heads, hd)
  assert query.sharding.spec[-1] == "model"
  # The spatial gate's conv has one output channel: replicated.
  gate = placed["params"]["video_cbam"]["spatial"]["conv"]["kernel"]
  assert {s.data.shape for s in gate.addressable_shards} == {gate.shape}

  batch_sh = NamedSharding(mesh, P("data"))
  sharded_inputs = jax.device_put(inputs, batch_sh)
  # Training mode, so BatchNorm's batch statistics span the devices too.
  sharded, sharded_state = jax.jit(_train_apply(model), in_shardings=(shardings, batch_sh))(
      placed, sharded_inputs)
  assert len(sharded["logits"].sharding.device_set) == 8
  for key in ("logits", "embedding"):
    np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(single[key]), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                        atol=1e-5),
               sharded_state["batch_stats"], single_state["batch_stats"])
