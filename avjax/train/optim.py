"""Optimisers from a config section, all through optax.

The papers use Adam (S1, S3), SGD with momentum and ReduceLROnPlateau (S3); a
config picks one by name, a schedule, clipping and the plateau rule. The plateau
rule needs the loss: the train step always passes `value=loss` to `update`, which
every optax transformation here accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from avjax.errors import UserError


def make_schedule(cfg: Mapping[str, Any], num_train_steps: int) -> optax.Schedule:
  lr = float(cfg["learning_rate"])
  name = cfg.get("schedule", "constant")
  warmup = int(cfg.get("warmup_steps", 0) or 0)
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, max(num_train_steps, 1))
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(num_train_steps, warmup + 1))
  raise UserError(f"unknown schedule {name!r} (known: constant, cosine, warmup_cosine)")


def make_optimizer(cfg: Mapping[str, Any], num_train_steps: int,
                   steps_per_epoch: int = 1) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer chain: clip -> base optimizer -> plateau scaling."""
  schedule = make_schedule(cfg, num_train_steps)
  name = cfg.get("name", "adam")
  wd = float(cfg.get("weight_decay", 0.0) or 0.0)
  if name == "adam":
    base = optax.adam(schedule)
  elif name == "adamw":
    base = optax.adamw(schedule, weight_decay=wd)
  elif name == "sgd":
    base = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.0)) or None,
                     nesterov=bool(cfg.get("nesterov", False)))
  else:
    raise UserError(f"unknown optimizer {name!r} (known: adam, adamw, sgd)")
  chain = []
  clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
  if clip > 0:
    chain.append(optax.clip_by_global_norm(clip))
  if wd and name == "sgd":
    chain.append(optax.add_decayed_weights(wd))
  chain.append(base)
  plateau = cfg.get("reduce_on_plateau") or {}
  if plateau.get("enabled", False):
    # Keras' ReduceLROnPlateau watches an epoch's loss; the accumulation window
    # of one epoch of train-step losses is the closest in-step equivalent.
    chain.append(optax.contrib.reduce_on_plateau(
        factor=float(plateau.get("factor", 0.5)),
        patience=int(plateau.get("patience", 3)),
        cooldown=int(plateau.get("cooldown", 0)),
        min_scale=float(plateau.get("min_scale", 0.0)),
        accumulation_size=int(plateau.get("accumulation_size", 0) or steps_per_epoch)))
  return optax.chain(*chain)


def freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...]
           ) -> optax.GradientTransformation:
  """Leaves the named top-level parameter subtrees untouched (zero updates, no
  optimizer state): the pretrained branches of a two-stage system."""
  if not frozen:
    return tx
  frozen = tuple(frozen)

  def labels(params):
    unknown = [name for name in frozen if name not in params]
    if unknown:
      raise UserError(f"train.frozen names {unknown}, which are not parameter subtrees "
                      f"of the model (has: {sorted(params)})")
    return {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "trained", v)
            for k, v in params.items()}
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
