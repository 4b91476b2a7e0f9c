"""Fusion of per-modality networks: feature-level concat (S1) and decision-level
rules, max-confidence (S3) and fixed weights (S6).

A fusion model owns its branches as submodules named after the branch (`audio`,
`video`, ...), so `params["audio"]` has exactly the layout of a standalone audio
net and a trained unimodal checkpoint drops straight in (the trainer does that
from `config.pretrained`). Branches are frozen by default: run in inference mode
(no dropout, batch-norm running statistics) and cut from the gradient, as in a
two-stage system where the unimodal nets are trained first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax.errors import UserError
from avjax.models import from_section, register_model

Array = Any
# Log of the probability floor used when decision rules return log-probabilities as
# logits: softmax(log p) == p for p summing to one.
_PROB_FLOOR = 1e-12


def build_branch(branch_name: str, spec: Mapping[str, Any], num_classes: int,
                 dtype: Any) -> nn.Module:
  """A registered model from its config section ({name, inputs, **kwargs})."""
  return from_section(spec, where=f"model.branches.{branch_name}", num_classes=num_classes,
                      dtype=dtype, name=branch_name)


def _run_branches(module: nn.Module, inputs, train: bool) -> dict[str, dict]:
  """Runs every branch inside `module`'s compact scope. Branches are direct
  children (params["audio"], not params["branches"]["audio"]) so a unimodal
  checkpoint's tree drops in unchanged; frozen ones run in inference mode and
  without gradient."""
  if not module.branches or len(module.branches) < 2:
    raise UserError("a fusion model needs at least two branches, got "
                    f"{list(module.branches or ())}")
  outs = {}
  for name in sorted(module.branches):
    net = build_branch(name, module.branches[name], module.num_classes, module.dtype)
    out = net(inputs, train=train and not module.freeze_branches)
    outs[name] = (jax.tree.map(jax.lax.stop_gradient, out) if module.freeze_branches
                  else out)
  return outs


@register_model("feature_concat_fusion")
class FeatureConcatFusion(nn.Module):
  """Concatenates the branches' penultimate embeddings -> Dense ReLU stack -> logits.

  S1 joins the 64-wide embeddings of its audio and video nets and trains Dense 128
  ReLU -> Dense 8 on top of the frozen branches.
  """
  branches: Mapping[str, Mapping[str, Any]]
  num_classes: int = 8
  hidden: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  freeze_branches: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    outs = _run_branches(self, inputs, train)
    x = jnp.concatenate([outs[n]["embedding"] for n in sorted(outs)], axis=-1)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.hidden):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fusion_dense_{i}")(x))
    embedding = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fusion_logits")(x)
    return {"logits": logits.astype(jnp.float32), "embedding": embedding.astype(jnp.float32),
            **{f"{n}_logits": outs[n]["logits"] for n in sorted(outs)}}


# --- decision-level rules ---------------------------------------------------------


def max_confidence(probs: Array) -> Array:
  """(M, B, C) per-branch probabilities -> (B, C): per example, the distribution of
  the branch whose top probability is highest (ties: the first branch)."""
  probs = jnp.asarray(probs)
  pick = jnp.argmax(jnp.max(probs, axis=-1), axis=0)          # (B,)
  return jnp.take_along_axis(probs, pick[None, :, None], axis=0)[0]


def weighted(probs: Array, weights: Sequence[float], normalize: bool = True) -> Array:
  """(M, B, C) probabilities, M weights -> sum_m w_m p_m, divided by sum w when
  `normalize` (so the result is a distribution; the arg-max is the same)."""
  probs = jnp.asarray(probs)
  w = jnp.asarray(weights, probs.dtype)
  if w.shape != probs.shape[:1]:
    raise UserError(f"{probs.shape[0]} branches but {w.shape[0]} fusion weights")
  fused = jnp.tensordot(w, probs, axes=1)
  return fused / jnp.sum(w) if normalize else fused


def mean_probability(probs: Array) -> Array:
  return jnp.mean(jnp.asarray(probs), axis=0)


DECISION_RULES = ("max_confidence", "weighted", "mean")


@register_model("decision_fusion")
class DecisionFusion(nn.Module):
  """Per-branch softmax probabilities fused by a fixed rule; no parameters of its own.

  `weights` maps branch name -> weight for the `weighted` rule (S6: video 0.55,
  audio 0.38; the paper's text weight 0.07 has no branch on RAVDESS). The fused
  distribution is returned as log-probabilities in `logits`, so softmax, arg-max
  and cross-entropy downstream all see the fused probabilities.
  """
  branches: Mapping[str, Mapping[str, Any]]
  num_classes: int = 8
  rule: str = "max_confidence"
  weights: Mapping[str, float] | None = None
  normalize_weights: bool = True
  freeze_branches: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    if self.rule not in DECISION_RULES:
      raise UserError(f"model.rule {self.rule!r} not in {DECISION_RULES}")
    outs = _run_branches(self, inputs, train)
    names = sorted(outs)
    probs = jnp.stack([jax.nn.softmax(outs[n]["logits"].astype(jnp.float32), axis=-1)
                       for n in names])
    if self.rule == "max_confidence":
      fused = max_confidence(probs)
    elif self.rule == "weighted":
      weights = dict(self.weights or {})
      missing = [n for n in names if n not in weights]
      if missing:
        raise UserError(f"model.weights has no weight for branches {missing} "
                        f"(has: {sorted(weights)})")
      fused = weighted(probs, [float(weights[n]) for n in names], self.normalize_weights)
    else:
      fused = mean_probability(probs)
    embedding = jnp.concatenate([outs[n]["embedding"] for n in names], axis=-1)
    return {"logits": jnp.log(jnp.maximum(fused, _PROB_FLOOR)),
            "embedding": embedding.astype(jnp.float32),
            **{f"{n}_logits": outs[n]["logits"] for n in names}}
