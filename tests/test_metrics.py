"""Metrics and the evaluation report, checked against hand-computed values.

A fake model predicts exactly the class an input field names, so the confusion
matrix, WA, UAR, macro-F1 and the loss are known in closed form.
"""

from __future__ import annotations

import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avjax import models
from avjax.train import evaluate, runtime
from avjax.train import metrics as metrics_lib
from input_pipeline import loader

SCALE = 5.0  # The fake's logit for its predicted class (others 0).
LABELS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDS = [0, 0, 0, 1, 1, 0, 2, 2, 0, 2]
# By hand from the lists above (rows true, columns predicted):
#   class 0: 4 examples, 3 right, 1 -> 1.   class 1: 2, 1 right, 1 -> 0.
#   class 2: 4, 3 right, 1 -> 0.
CONFUSION = [[3, 1, 0], [1, 1, 0], [1, 0, 3]]
RECALL = [3 / 4, 1 / 2, 3 / 4]
PRECISION = [3 / 5, 1 / 2, 3 / 3]
F1 = [2 * p * r / (p + r) for p, r in zip(PRECISION, RECALL)]  # 2/3, 1/2, 6/7
WA, UAR, MACRO_F1 = 7 / 10, (3 / 4 + 1 / 2 + 3 / 4) / 3, (2 / 3 + 1 / 2 + 6 / 7) / 3

@models.register_model("test_fixed_predictions")
class FixedPredictions(nn.Module):
  """Logits SCALE * one_hot(inputs['pred']): a model whose outputs we know."""
  num_classes: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, *, train: bool):
    scale = self.param("scale", lambda _: jnp.asarray(SCALE, jnp.float32))
    logits = scale * jax.nn.one_hot(inputs["pred"], self.num_classes)
    return {"logits": logits, "embedding": logits}

def _config():
  return ml_collections.ConfigDict({
      "seed": 0,
      "model": {"name": "test_fixed_predictions", "inputs": ("pred",)},
      "loss": {"name": "cross_entropy", "label_smoothing": 0.0},
      "optimizer": {"name": "adam", "learning_rate": 1e-3},
      "train": {"global_batch_size": 8, "num_train_steps": 1, "compute_dtype": "float32"},
      "mesh": {"data": -1, "model": 1},
  })

def _info(leaky: bool):
  return loader.DataInfo(
      num_classes=3, class_names=("neutral", "happy", "sad"),
      element_spec={"pred": ((), np.int32)},
      protocol="ravdess_random" if leaky else "ravdess_6fold", leaky=leaky, fold=2,
      split_actors={"train": (1, 2), "test": (3,)}, num_examples={"test": len(LABELS)})

def _report(tmp_path, leaky: bool) -> dict:
  config, info = _config(), _info(leaky)
  setup = runtime.build(config, info, runtime.make_mesh(config))
  state = runtime.init_state(setup, 0)
  source = [{"pred": np.int32(p), "label": np.int32(y)} for p, y in zip(PREDS, LABELS)]
  # Batches of 8: the second is 2 examples + 6 padding rows (label 0, pred 0,
  # i.e. "correct"): counting them would raise the accuracy.
  results = runtime.run_evals(setup, state, {"test": lambda: loader.eval_batches(
      source, batch_size=8, keys=("pred",))})
  report = evaluate.build_report(results, info, config_name="fake", checkpoint_step=0)
  evaluate.write_report(str(tmp_path), report)
  with open(tmp_path / "report.json", encoding="utf-8") as f:
    return json.load(f)

def test_report_matches_hand_computed_metrics(tmp_path):
  report = _report(tmp_path, leaky=False)
  test = report["splits"]["test"]
  assert test["confusion_matrix"] == CONFUSION
  assert test["num_examples"] == len(LABELS)
  assert report["accuracy"] == pytest.approx(WA, abs=1e-9)
  assert report["uar"] == pytest.approx(UAR, abs=1e-9)
  assert report["macro_f1"] == pytest.approx(MACRO_F1, abs=1e-9)
  for i, name in enumerate(("neutral", "happy", "sad")):
    pc = test["per_class"][name]
    assert pc["precision"] == pytest.approx(PRECISION[i], abs=1e-9)
    assert pc["recall"] == pytest.approx(RECALL[i], abs=1e-9)
    assert pc["f1"] == pytest.approx(F1[i], abs=1e-9)
    assert pc["support"] == LABELS.count(i)
  # Cross-entropy of logits SCALE*one_hot: right -> log(e^S + 2) - S, wrong -> log(e^S + 2).
  right = sum(p == y for p, y in zip(PREDS, LABELS))
  z = math.log(math.exp(SCALE) + 2)
  expected_loss = (right * (z - SCALE) + (len(LABELS) - right) * z) / len(LABELS)
  assert test["loss"] == pytest.approx(expected_loss, rel=1e-5)
  assert report["leaky"] is False and "LEAKY" not in report["protocol_label"]
  assert report["split_actors"] == {"train": [1, 2], "test": [3]}
  assert report["fold"] == 2 and report["primary_split"] == "test"
  assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
  assert (tmp_path / "curves.png").stat().st_size > 0

def test_leaky_protocol_is_labelled(tmp_path):
  report = _report(tmp_path, leaky=True)
  assert report["leaky"] is True
  assert report["protocol_label"].startswith("LEAKY")

def test_numpy_metrics_zero_division_and_absent_classes():
  # Class 2 is never predicted and class 3 never occurs nor is predicted.
  cm = metrics_lib.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], num_classes=4)
  assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
  pc = metrics_lib.per_class(cm)
  assert pc["precision"].tolist() == [0.5, 0.5, 0.0, 0.0]
  assert pc["recall"].tolist() == [0.5, 1.0, 0.0, 0.0]
  s = metrics_lib.summarize(cm)
  assert s["accuracy"] == pytest.approx(2 / 4)
  assert s["uar"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # Class 3 has no support.
  f1_1 = 2 * 0.5 * 1.0 / 1.5
  assert s["macro_f1"] == pytest.approx((0.5 + f1_1 + 0.0) / 3)

def test_device_stats_mask_padding_and_merge():
  logits = jnp.asarray([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
  labels = jnp.asarray([0, 0, 1])
  loss = jnp.asarray([0.1, 2.0, 4.0])
  a = metrics_lib.batch_stats(logits, labels, loss, valid=jnp.asarray([True, True, False]))
  assert np.asarray(a["confusion"]).tolist() == [[1, 1], [0, 0]]
  assert float(a["loss_sum"]) == pytest.approx(2.1) and float(a["count"]) == 2
  b = metrics_lib.batch_stats(logits, labels, jnp.asarray([0.0, jnp.nan, 0.0]), step=7)
  c = metrics_lib.batch_stats(logits, labels, loss, step=9)
  merged = metrics_lib.merge(metrics_lib.merge(None, b), c)
  assert int(merged["first_bad_step"]) == 7
  assert np.asarray(merged["confusion"]).tolist() == [[2, 2], [2, 0]]

# --- Losses and optimizers from config -------------------------------------------

def test_cross_entropy_label_smoothing_and_weighted_terms():
  from avjax import losses  # pylint: disable=g-import-not-at-top
  logits = jnp.asarray([[2.0, 0.0, -1.0]])
  batch = {"label": jnp.asarray([0])}
  log_p = np.asarray(jax.nn.log_softmax(logits))[0]
  eps, k = 0.3, 3
  # Smoothed target: 1 - eps + eps/k on the label, eps/k elsewhere.
  target = np.full(k, eps / k)
  target[0] += 1 - eps
  fn = losses.make_loss({"name": "cross_entropy", "label_smoothing": eps}, num_classes=k)
  assert float(fn({"logits": logits}, batch)[0]) == pytest.approx(-(target * log_p).sum(), rel=1e-6)
  plain = -log_p[0]
  doubled = losses.make_loss({"name": "cross_entropy", "label_smoothing": 0.0,
                              "weights": {"cross_entropy": 2.0}}, num_classes=k)
  assert float(doubled({"logits": logits}, batch)[0]) == pytest.approx(2 * plain, rel=1e-6)
  mixed = losses.make_loss({"name": "cross_entropy"}, num_classes=k)(
      {"logits": logits}, {"label": jnp.asarray([0]), "mixup_label": jnp.asarray([2]),
                           "mixup_lambda": jnp.asarray([0.75])})
  assert float(mixed[0]) == pytest.approx(0.75 * plain - 0.25 * log_p[2], rel=1e-6)

def test_reduce_on_plateau_scales_updates_down():
  import optax  # pylint: disable=g-import-not-at-top
  from avjax.train import optim  # pylint: disable=g-import-not-at-top
  tx = optim.make_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.0,
                             "reduce_on_plateau": {"enabled": True, "patience": 1,
                                                   "factor": 0.5, "accumulation_size": 1}},
                            num_train_steps=10)
  params = {"w": jnp.ones(())}
  state = tx.init(params)
  sizes = []
  for _ in range(4):  # A loss that never improves.
    updates, state = tx.update({"w": jnp.ones(())}, state, params, value=jnp.asarray(1.0))
    sizes.append(abs(float(updates["w"])))
  assert sizes[0] == pytest.approx(0.1)
  assert sizes[-1] < sizes[0]  # The plateau rule has cut the step.
  assert float(optax.tree_utils.tree_get(state, "scale")) < 1.0


def test_curves_mark_the_reported_step_and_chance_and_keep_split_colours(tmp_path,
                                                                          monkeypatch):
  from avjax.train import plots
  figures = []
  monkeypatch.setattr(plots.plt, "close", figures.append)
  series = {f"{split}/{metric}": [(2, 0.1 + i / 10), (4, 0.2 + i / 10)]
            for i, split in enumerate(("train", "val", "test"))
            for metric in ("loss", "uar", "accuracy", "macro_f1")}
  reported, chance = 4, 1 / 8
  plots.curves_figure(series, str(tmp_path / "c.png"), "t", reported_step=reported,
                      chance=chance)
  assert (tmp_path / "c.png").stat().st_size > 0
  ax_loss, ax_metric = figures[0].axes
  lines = [ln for ln in ax_metric.get_lines() if len(ln.get_xdata()) == 2
           and list(ln.get_xdata()) == [2, 4]]
  assert len(lines) == 9
  # One colour per split across both panels, one line style per metric.
  colours = {ln.get_color() for ln in lines}
  assert len(colours) == 3
  assert {ln.get_color() for ln in ax_loss.get_lines()
          if list(ln.get_xdata()) == [2, 4]} == colours
  assert len({ln.get_linestyle() for ln in lines}) == 3
  flat_y = [ln for ln in ax_metric.get_lines() if list(ln.get_ydata()) == [chance, chance]]
  upright = [ln for ax in (ax_loss, ax_metric) for ln in ax.get_lines()
             if list(ln.get_xdata()) == [reported, reported]]
  assert len(flat_y) == 1 and len(upright) == 2
