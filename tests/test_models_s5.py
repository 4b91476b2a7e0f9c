"""S5 (Aktürk & Keçeli 2024) dual-branch Self-ONN: shapes, which inputs each
variant reads, the network against a hand-written reference, configs, and a few
real trainer steps on the synthetic corpus."""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import avjax.models.akturk  # noqa: F401  Registers akturk_onn.
from avjax import models
from avjax.configs import load_config
from avjax.errors import UserError
from avjax.layers.operational import operational_init
from avjax.models.akturk import flat_operational_init

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "akturk2024.py")
BRANCHES = {"fusion": ("keyframe", "mel"), "keyframe": ("keyframe",), "mel": ("mel",)}
SMALL = dict(keyframe_features=(4, 6), mel_features=(3, 5), hidden=(7,))


def _inputs(seed: int, batch: int = 2, kf: int = 20, mel: int = 16) -> dict:
  rng = np.random.default_rng(seed)
  return {"keyframe": rng.integers(0, 256, (batch, kf, kf, 3), dtype=np.uint8),
          "mel_image": rng.uniform(0.0, 1.0, (batch, mel, mel)).astype(np.float32)}


def _model(variant: str, **kw):
  return models.get_model("akturk_onn", num_classes=5, branches=BRANCHES[variant],
                          **{**SMALL, **kw})


def _abstract(model, inputs):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))


@functools.lru_cache(maxsize=None)
def _random_net(variant: str, q: int):
  """(model, params, jitted apply) with random parameters of the init's shapes.

  Behaviour tests do not need the real init, and skipping it saves a compile per
  model (the trainer test below runs the real one)."""
  model = _model(variant, q_order=q)
  rng = np.random.default_rng(q)
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32),
                        _abstract(model, _inputs(0))["params"])
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)["logits"])
  return model, params, apply


@pytest.mark.parametrize("variant", list(BRANCHES))
def test_shapes_at_feature_set_shapes(variant):
  inputs = _inputs(0, batch=3, kf=96, mel=128)  # The keyframe_mel feature set.
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _model(variant, dtype=dtype)
    variables = _abstract(model, inputs)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))  # f32 params.
    out = jax.eval_shape(lambda v: model.apply(v, inputs, train=False), variables)
    assert out["logits"].shape == (3, 5) and out["logits"].dtype == jnp.float32
    assert out["embedding"].shape == (3, 7) and out["embedding"].dtype == jnp.float32
  # Without hidden layers the embedding is the concatenated branch vectors.
  bare = _model(variant, hidden=())
  out = jax.eval_shape(lambda v: bare.apply(v, inputs, train=False),
                       _abstract(bare, inputs))
  width = {"keyframe": 6, "mel": 5}
  assert out["embedding"].shape == (3, sum(width[b] for b in BRANCHES[variant]))


def test_flatten_pool_and_params_from_layer_shapes():
  q = 3
  model = _model("fusion", q_order=q, global_pool="flatten")
  inputs = _inputs(0, kf=24, mel=32)
  params = _abstract(model, inputs)["params"]
  assert set(params) == {"keyframe", "mel", "Dense_0", "Dense_1"}
  expected, flat = 0, 0
  for c_in, widths, size in ((3, (4, 6), 24), (1, (3, 5), 32)):
    for w in widths:  # Kernel (3, 3, Q * C, O) + bias; each pool halves the size.
      expected += 9 * q * c_in * w + w
      c_in, size = w, size // 2
    flat += size * size * c_in
  expected += flat * 7 + 7 + 7 * 5 + 5
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == expected


@pytest.mark.parametrize("variant", list(BRANCHES))
def test_each_variant_reads_only_its_inputs(variant):
  _, params, apply = _random_net(variant, 3)
  inputs = _inputs(1)
  base = np.asarray(apply(params, inputs))
  assert np.isfinite(base).all()
  other = _inputs(2)
  other["mel_image"][0, 0, 0] = np.nan  # A leak of an unread input would show.
  for key, branch in (("keyframe", "keyframe"), ("mel_image", "mel")):
    changed = np.asarray(apply(params, {**inputs, key: other[key]}))
    if branch in BRANCHES[variant]:
      assert np.abs(changed[1] - base[1]).max() > 1e-6, (variant, key)
    else:
      np.testing.assert_array_equal(changed, base)
  # A single-input model needs nothing but its own input.
  if variant != "fusion":
    model = _model(variant)
    own = {"keyframe": "keyframe", "mel": "mel_image"}[variant]
    out = jax.eval_shape(lambda v: model.apply(v, {own: inputs[own]}, train=False),
                         _abstract(model, {own: inputs[own]}))
    assert out["logits"].shape == (2, 5)


def _reference(params, inputs, q: int, branches) -> np.ndarray:
  """The network written out with Q separate plain convolutions per layer."""
  def conv(x, kernel, bias):
    c = x.shape[-1]
    t, y = np.tanh(x), 0.0
    for i in range(q):
      y = y + jax.lax.conv_general_dilated(
          jnp.asarray(t ** (i + 1)), kernel[:, :, i * c:(i + 1) * c, :], (1, 1), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    return np.asarray(y) + np.asarray(bias)

  def pool(x):
    b, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

  vectors = []
  for name in branches:
    if name == "keyframe":
      x = inputs["keyframe"].astype(np.float64) / 127.5 - 1.0
    else:
      x = inputs["mel_image"][..., None].astype(np.float64) * 2.0 - 1.0
    layers = params[name]
    for i in range(len(layers)):
      p = layers[f"OperationalConv_{i}"]
      x = pool(conv(x.astype(np.float32), p["kernel"], p["bias"]))
    vectors.append(np.tanh(x).mean(axis=(1, 2)))
  h = np.concatenate(vectors, axis=-1)
  d = params["Dense_0"]
  h = np.maximum(h @ np.asarray(d["kernel"]) + np.asarray(d["bias"]), 0.0)
  d = params["Dense_1"]
  return h @ np.asarray(d["kernel"]) + np.asarray(d["bias"])


@pytest.mark.parametrize("q,variant", [(1, "fusion"), (3, "fusion"), (3, "keyframe"),
                                       (3, "mel")])
def test_matches_reference_network(q, variant):
  """Q = 1 is a plain CNN on tanh-squashed inputs with the same weights; Q > 1
  adds the higher powers, each with its own kernel block."""
  _, params, apply = _random_net(variant, q)
  inputs = _inputs(3)
  got = np.asarray(apply(params, inputs))
  want = _reference(params, inputs, q, BRANCHES[variant])
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_real_init_gradients_finite_and_reach_both_branches():
  model = _model("fusion", dropout_rate=0.2)
  inputs = _inputs(4)
  labels = jnp.asarray([1, 3])

  def grads_at_init(x):
    params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]

    def loss(params):
      logits = model.apply({"params": params}, x, train=True,
                           rngs={"dropout": jax.random.PRNGKey(1)})["logits"]
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return jax.grad(loss)(params)

  grads = jax.jit(grads_at_init)(inputs)  # One compile for init and gradient.
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(np.asarray(g)).all(), path
  for branch in ("keyframe", "mel"):
    norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads[branch]))
    assert norm > 0.0, branch


@pytest.mark.parametrize("q,shape", [(3, (3, 3, 9, 4))])
def test_flat_init_is_the_layers_init(q, shape):
  """The model's faster-compiling init draws what operational_init draws (same
  key, same element order); were a JAX change to break the order, per-block
  standard deviations would still have to match."""
  key = jax.random.PRNGKey(7)
  want = np.asarray(operational_init(q)(key, shape))
  got = np.asarray(flat_operational_init(q)(key, shape))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [dict(branches=()), dict(branches=("audio",)),
                                 dict(branches=("mel", "mel")), dict(global_pool="sum")])
def test_bad_fields_raise(bad):
  model = models.get_model("akturk_onn", **{**SMALL, **bad})
  with pytest.raises(ValueError):
    model.init(jax.random.PRNGKey(0), _inputs(0), train=False)


@pytest.mark.parametrize("variant", list(BRANCHES))
@pytest.mark.parametrize("flags", ["", ",smoke", ",demo", ",tpu_v3_8", ",smoke,gpu"])
def test_every_config_variant_loads(variant, flags):
  c = load_config(f"{CONFIG}:{variant}{flags}")
  assert c.model.name == "akturk_onn" and c.data.feature_set == "keyframe_mel"
  assert tuple(c.model.branches) == BRANCHES[variant]
  keys = {"keyframe": "keyframe", "mel": "mel_image"}
  assert tuple(c.model.inputs) == tuple(keys[b] for b in BRANCHES[variant])
  assert c.paper_accuracy == (93.0 if variant == "fusion" else -1.0)
  assert c.paper_protocol
  if "smoke" in flags:
    assert c.train.num_train_steps > 0 and max(c.model.keyframe_features) <= 8
  # The trainer's constructor call: every model field except name/inputs/conv_impl.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in c.model.to_dict().items()
            if k not in ("name", "inputs", "conv_impl")}
  models.get_model(c.model.name, num_classes=8, dtype=jnp.float32, **kwargs)


def test_default_arg_is_fusion_and_unknown_arg_raises():
  assert tuple(load_config(CONFIG).model.branches) == ("keyframe", "mel")
  for bad in ("audio", "fusion,mel"):
    with pytest.raises(UserError, match="akturk2024"):
      load_config(f"{CONFIG}:{bad}")


def test_smoke_fusion_trains_on_synthetic_corpus(prepared, tmp_path):
  from avjax.train import trainer
  data_dir = prepared("keyframe_mel")
  config = load_config(f"{CONFIG}:fusion,smoke")
  config.data.data_dir = str(data_dir)
  config.data.protocol = "actor_kfold"
  config.data.k = 4
  workdir = tmp_path / "run"
  final = trainer.train_and_evaluate(config, str(workdir))
  assert np.isfinite(final["train/loss"]) and np.isfinite(final["test/loss"])
  assert final["report/checkpoint_step"] in (3, 6)  # Checkpoints every 3 of 6 steps.
  report = json.loads((workdir / "report.json").read_text())
  assert report["feature_set"] == "keyframe_mel" and report["leaky"] is False
  actors = report["split_actors"]
  assert not set(actors["test"]) & set(actors["train"])
  # The synthetic corpus holds one clip per emotion and actor.
  assert report["splits"]["test"]["num_examples"] == \
      len(report["class_names"]) * len(actors["test"])
