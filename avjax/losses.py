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


# --- S4: emotion-constrained triplet loss -------------------------------------------


def _relu(x) -> jnp.ndarray:
  return jnp.maximum(x, 0.0)


def _pairwise_distances(embeddings) -> jnp.ndarray:
  """Euclidean distances (B, B); the clamp keeps sqrt's gradient finite at 0."""
  diff = embeddings[:, None, :] - embeddings[None, :, :]
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), axis=-1), 1e-12))


@register_loss("emotion_triplet")
def emotion_triplet(outputs: Mapping[str, Any], batch: Mapping[str, Any], *,
                    num_classes: int, triplet_margin: float = 0.2,
                    emotion_similarity=None, emotion_margin: float = 0.1,
                    emotion_weight: float = 1.0,
                    triplet_normalize: bool = True) -> jnp.ndarray:
  """Batch-hard triplet loss on `outputs["embedding"]` plus S4's emotion constraint.

  Triplet term, per anchor a (Hermans et al. 2017's batch-hard mining, chosen over
  semi-hard because it needs no fallback when a batch has no semi-hard negative):
    relu(max_p d(a, p) - min_n d(a, n) + triplet_margin)
  over positives p != a of a's class and negatives n of other classes.

  Emotion term: among an anchor's negatives, one of a class more similar to the
  anchor's (emotion_similarity[y_a][y_i] > [y_a][y_j], e.g. happy/surprised vs
  happy/sad) must sit closer, by a margin that grows with the similarity gap:
    max_{i,j} relu(d(a, n_i) - d(a, n_j) + emotion_margin * (S[y_a,y_i] - S[y_a,y_j]))
  (hardest pair again). Skipped when `emotion_similarity` is empty or None; it is
  a (num_classes, num_classes) nested sequence from the config.

  Embeddings are L2-normalised first (`triplet_normalize`) so the margins have a
  fixed scale. Examples with `batch["valid"] == 0` (eval padding) are never
  mined as positives or negatives; an anchor without a positive or negative
  contributes 0 to that term.
  """
  emb = outputs["embedding"].astype(jnp.float32)
  labels = batch["label"]
  n = emb.shape[0]
  if triplet_normalize:
    emb = emb / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(emb), -1, keepdims=True), 1e-12))
  dist = _pairwise_distances(emb)
  valid = batch.get("valid")
  valid = jnp.ones((n,), bool) if valid is None else (valid > 0)
  same = labels[:, None] == labels[None, :]
  other = valid[None, :] & ~jnp.eye(n, dtype=bool)
  pos = same & other
  neg = ~same & valid[None, :]

  hardest_pos = jnp.max(jnp.where(pos, dist, -jnp.inf), axis=1)
  hardest_neg = jnp.min(jnp.where(neg, dist, jnp.inf), axis=1)
  has_both = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
  # The inner where keeps +-inf (no positive / no negative) out of the value and
  # of the gradient.
  gap_an = jnp.where(has_both, hardest_pos - hardest_neg, 0.0)
  trip = jnp.where(has_both, _relu(gap_an + triplet_margin), 0.0)

  if emotion_similarity is None or len(emotion_similarity) == 0:
    return trip
  sim = jnp.asarray(emotion_similarity, jnp.float32)
  if sim.shape != (num_classes, num_classes):
    raise UserError(f"loss.emotion_similarity is {sim.shape[0]}x{sim.shape[-1]} but the "
                    f"data has {num_classes} classes; give one row per class")
  s = sim[labels[:, None], labels[None, :]]                 # (B, B): S[y_a, y_k]
  gap = s[:, :, None] - s[:, None, :]                       # S[y_a,y_i] - S[y_a,y_j]
  pair = neg[:, :, None] & neg[:, None, :] & (gap > 0)
  violation = dist[:, :, None] - dist[:, None, :] + emotion_margin * gap
  emo = jnp.max(jnp.where(pair, _relu(violation), 0.0), axis=(1, 2))
  return trip + emotion_weight * emo
