"""Loss registry: per-example losses from a model's outputs and the batch.

A loss is `fn(outputs, batch, *, num_classes, **params) -> (B,) float32`. The
trainer averages it over valid examples, so padding and masking live in one place.
A config names one loss, or several with weights (cross-entropy plus a triplet
term, as S4 does), and the trainer never knows which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import inspect

import jax.numpy as jnp
import optax

from avjax.errors import UserError

LossFn = Callable[..., jnp.ndarray]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str):
  def wrap(fn: LossFn) -> LossFn:
    if name in _LOSSES and _LOSSES[name] is not fn:
      raise ValueError(f"loss {name!r} is already registered")
    _LOSSES[name] = fn
    return fn
  return wrap


def get_loss(name: str) -> LossFn:
  if name not in _LOSSES:
    raise UserError(f"unknown loss {name!r} (known: {', '.join(sorted(_LOSSES))})")
  return _LOSSES[name]


def _smoothed_ce(logits, labels, num_classes: int, label_smoothing: float,
                 class_weights) -> jnp.ndarray:
  targets = optax.smooth_labels(jax_one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax_one_hot(labels, num_classes)
  loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if class_weights is not None:
    loss = loss * jnp.asarray(class_weights, jnp.float32)[labels]
  return loss


def jax_one_hot(labels, num_classes: int) -> jnp.ndarray:
  return (labels[..., None] == jnp.arange(num_classes)).astype(jnp.float32)


@register_loss("cross_entropy")
def cross_entropy(outputs: Mapping[str, Any], batch: Mapping[str, Any], *,
                  num_classes: int, label_smoothing: float = 0.0,
                  class_weights=None) -> jnp.ndarray:
  """Softmax cross-entropy with optional label smoothing and per-class weights.

  If the batch carries `mixup_label`/`mixup_lambda` (the loader's Mixup), the two
  targets' losses are mixed with the same weight the inputs were.
  """
  logits, labels = outputs["logits"], batch["label"]
  loss = _smoothed_ce(logits, labels, num_classes, label_smoothing, class_weights)
  if "mixup_label" in batch:
    lam = batch["mixup_lambda"].astype(jnp.float32)
    other = _smoothed_ce(logits, batch["mixup_label"], num_classes, label_smoothing,
                         class_weights)
    loss = lam * loss + (1.0 - lam) * other
  return loss


def make_loss(loss_config: Mapping[str, Any], num_classes: int) -> LossFn:
  """`fn(outputs, batch) -> (B,)` from a config section.

  `loss.name` is used alone unless `loss.weights` maps loss names to weights, in
  which case the weighted sum is returned. Other fields of the section (besides
  name/weights) go to every term as keyword parameters it accepts.
  """
  cfg = dict(loss_config)
  name = cfg.pop("name", "cross_entropy")
  weights = dict(cfg.pop("weights", None) or {}) or {name: 1.0}
  params = {k: v for k, v in cfg.items() if v is not None}
  if "class_weights" in params:
    params["class_weights"] = tuple(params["class_weights"]) or None
  terms = []
  for n, w in weights.items():
    fn = get_loss(n)
    accepted = inspect.signature(fn).parameters
    terms.append((fn, float(w), {k: v for k, v in params.items() if k in accepted}))

  def loss_fn(outputs, batch):
    total = 0.0
    for fn, w, kw in terms:
      total = total + w * fn(outputs, batch, num_classes=num_classes, **kw)
    return total
  return loss_fn
