"""S2 (DV EmotionNet): FERCNN at the paper's shapes, the MFA fit hook, the config."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import avjax.models.dvemotionnet as dv
from avjax import configs, models
from avjax.errors import UserError

PAPER_TOTAL_PARAMS = 152_614  # Printed total of the paper's Keras summary.


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_fercnn_param_count_at_paper_shapes():
  model = models.get_model("fercnn", num_classes=6)
  params = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), {"handcrafted162": jnp.zeros((1, 162))}, train=False))["params"]
  assert _count(params) == PAPER_TOTAL_PARAMS
  # The same total from the layer shapes: k * c_in * c_out + c_out per conv.
  expected, c_in = 0, 1
  for width in model.features:
    expected += model.kernel_size * c_in * width + width
    c_in = width
  expected += c_in * model.hidden + model.hidden + model.hidden * 6 + 6
  assert expected == PAPER_TOTAL_PARAMS


def test_fercnn_layer_shapes_match_the_summary():
  model = models.get_model("fercnn", num_classes=6)
  x = jnp.zeros((2, 162, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  out, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, mutable=["intermediates"]), variables)
  got = {k: v[0].shape[1:] for k, v in state["intermediates"].items()}
  summary = {  # (length, channels) per layer, from the paper's table.
      "conv1": (160, 256), "pool1": (53, 256), "conv2": (51, 128), "pool2": (17, 128),
      "conv3": (15, 64), "pool3": (5, 64), "conv4": (3, 64), "pool4": (3, 64),
      "conv5": (1, 32), "pool5": (1, 32), "flatten": (32,)}
  assert got == summary
  assert out["logits"].shape == (2, 6) and out["embedding"].shape == (2, 256)


def test_fercnn_rejects_short_inputs():
  model = models.get_model("fercnn", num_classes=6, features=(4, 4, 4, 4, 4), hidden=8)
  assert dv.min_input_length(3, (3, 3, 3, 1, 1)) == 161
  init = lambda n: jax.eval_shape(  # noqa: E731
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, n)), train=False))
  init(161)
  with pytest.raises(UserError):
    init(160)


def _toy_inputs(n=60, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes
  centres = rng.normal(size=(classes, 162))
  a = (centres[y] + rng.normal(size=(n, 162))) * 30.0 + 5.0  # Unscaled, as mel power.
  b = rng.normal(size=(n, 162))
  return {"handcrafted162": a.astype(np.float32), "stip": b.astype(np.float32)}, y


SMALL = dict(features=(4, 4, 4, 4, 4), hidden=8, mfa_k1=3, mfa_k2=10)


@pytest.mark.parametrize("use_mfa,keys", [(True, ("handcrafted162", "stip")),
                                          (False, ("handcrafted162",))])
def test_fit_hook_fills_fitted_and_model_applies_it(use_mfa, keys):
  model = models.get_model("dvemotionnet", num_classes=4, input_keys=keys, mfa=use_mfa,
                           **SMALL)
  inputs, y = _toy_inputs()
  inputs = {k: inputs[k] for k in keys}
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
      {k: v[:1] for k, v in inputs.items()})
  fit = models.get_fit("dvemotionnet")
  assert fit is dv.fit_dvemotionnet
  fitted = fit(model, variables, inputs, y)
  assert set(fitted) == {models.FITTED}
  assert jax.tree.map(np.shape, fitted[models.FITTED]) == \
      jax.tree.map(np.shape, variables[models.FITTED])
  # Only the given training data count, not what the variables held before.
  shifted = jax.tree.map(lambda v: v + 5.0, variables)
  again = fit(model, shifted, inputs, y)
  jax.tree.map(np.testing.assert_array_equal, again, fitted)
  d_in = 162 * len(keys)
  pre = fitted[models.FITTED]["preprocess"]
  assert pre["mean"].shape == (d_in,)
  if use_mfa:
    assert pre["projection"].shape == (d_in, 162)
  x = np.concatenate([inputs[k] for k in keys], axis=1).astype(np.float64)
  np.testing.assert_allclose(pre["mean"], x.mean(0), rtol=1e-5)

  new_vars = {"params": variables["params"], **fitted}
  out, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
      new_vars, inputs)
  # FERCNN sees the fitted map of the inputs: zero mean, unit variance over train.
  seen = np.asarray(state["intermediates"]["fercnn"]["conv1"][0])
  assert seen.shape == (len(y), 160, 4)
  z = (x - pre["mean"]) / pre["std"]
  if use_mfa:
    z = z @ pre["projection"] + pre["bias"]
    # 60 samples of 4 classes span at most 56 directions (the PCA step); the
    # remaining outputs are constant zero.
    rank = len(y) - len(np.unique(y))
    np.testing.assert_array_equal(z[:, rank:], 0.0)
    z = z[:, :rank]
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
  assert out["logits"].shape == (len(y), 4) and out["logits"].dtype == jnp.float32
  # The unfitted (identity) variables give a different result: the fit is used.
  before = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, inputs)
  assert not np.allclose(before["logits"], out["logits"])


def test_fit_rejects_missing_inputs():
  model = models.get_model("dvemotionnet", num_classes=4,
                           input_keys=("handcrafted162", "stip"), **SMALL)
  inputs, y = _toy_inputs()
  with pytest.raises(UserError):
    dv.fit_dvemotionnet(model, {}, {"handcrafted162": inputs["handcrafted162"]}, y)


def test_bf16_compute_and_dropout():
  model = models.get_model("dvemotionnet", num_classes=8, input_keys=("stip",), mfa=False,
                           dtype=jnp.bfloat16, **SMALL)
  inputs = {"stip": np.random.default_rng(0).normal(size=(3, 162)).astype(np.float32)}
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(inputs)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  apply = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={"dropout": r}))
  a = apply(variables, inputs, jax.random.PRNGKey(1))
  b = apply(variables, inputs, jax.random.PRNGKey(2))
  assert a["logits"].dtype == jnp.float32 and a["embedding"].shape == (3, 8)
  assert not np.allclose(a["logits"], b["logits"])  # Dropout is on in training.


@pytest.mark.parametrize("variant", ["audio", "video", "fusion"])
@pytest.mark.parametrize("flags", ["", ",smoke", ",demo,tpu_v3_8"])
def test_config_loads_and_builds(variant, flags):
  c = configs.load_config(f"experiments/dvemotionnet2024.py:{variant}{flags}")
  assert c.model.name == "dvemotionnet"
  assert tuple(c.model.input_keys) == tuple(c.model.inputs)
  assert c.data.feature_set == c.model.inputs[0]
  assert tuple(c.data.feature_sets) == tuple(c.model.inputs[1:])
  assert c.model.mfa == (variant == "fusion")
  assert c.paper_accuracy > 0 and "leaky" in c.paper_protocol
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in c.model.to_dict().items()
            if k not in ("name", "inputs", "conv_impl")}
  model = models.get_model(c.model.name, num_classes=8, dtype=jnp.float32, **kwargs)
  dummy = {k: jnp.zeros((1, 162)) for k in c.model.inputs}
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False))
  if not flags:
    # The unsmoked config is the paper's network (8 classes: 152,614 + 2 * 257).
    assert _count(shapes["params"]) == PAPER_TOTAL_PARAMS + 2 * (256 + 1)


def test_config_paper_numbers():
  c = configs.load_config("experiments/dvemotionnet2024.py:audio")
  assert c.paper_accuracy == pytest.approx(94.66)
  assert configs.load_config("experiments/dvemotionnet2024.py:video").paper_accuracy == \
      pytest.approx(95.82)
  assert configs.load_config("experiments/dvemotionnet2024.py:fusion").paper_accuracy == \
      pytest.approx(94.36)
  with pytest.raises(UserError):
    configs.load_config("experiments/dvemotionnet2024.py:audio,video")


def test_fusion_smoke_fit_end_to_end():
  c = configs.load_config("experiments/dvemotionnet2024.py:fusion,smoke")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in c.model.to_dict().items()
            if k not in ("name", "inputs", "conv_impl")}
  model = models.get_model(c.model.name, num_classes=4, dtype=jnp.float32, **kwargs)
  inputs, y = _toy_inputs(seed=1)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
      {k: v[:1] for k, v in inputs.items()})
  fitted = models.get_fit(c.model.name)(model, variables, inputs, y)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      {"params": variables["params"], **fitted}, inputs)
  assert np.isfinite(np.asarray(out["logits"])).all()
