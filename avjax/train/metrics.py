"""Classification metrics from a confusion matrix.

Steps accumulate a (C, C) confusion matrix, a loss sum and a count on device
(`batch_stats` + `merge`), so nothing leaves the accelerator until a log or eval
point. Everything reported (WA, UAR, macro-F1, per-class P/R/F1) is then a pure
numpy function of those totals, shared by the trainer and the reports. Rows of the
matrix are true classes, columns predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Marks "no non-finite loss seen" in the running minimum of bad steps.
NO_BAD_STEP = np.iinfo(np.int32).max


def batch_stats(logits, labels, per_example_loss, valid=None, step=None) -> dict:
  """On-device sums for one batch; `valid` masks eval padding."""
  num_classes = logits.shape[-1]
  valid = jnp.ones(labels.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
  preds = jnp.argmax(logits, axis=-1)
  confusion = jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, preds].add(valid)
  loss = jnp.where(valid > 0, per_example_loss, 0.0)
  stats = {"confusion": confusion, "loss_sum": jnp.sum(loss), "count": jnp.sum(valid)}
  if step is not None:
    finite = jnp.isfinite(jnp.sum(per_example_loss * valid))
    stats["first_bad_step"] = jnp.where(finite, NO_BAD_STEP, step).astype(jnp.int32)
  return stats


def merge(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> dict:
  """Adds two `batch_stats` results (keeps the earliest non-finite step)."""
  if a is None:
    return dict(b)
  out = {k: a[k] + b[k] for k in b if k != "first_bad_step"}
  if "first_bad_step" in b:
    out["first_bad_step"] = jnp.minimum(a["first_bad_step"], b["first_bad_step"])
  return out


merge_jit = jax.jit(merge)


# --- Pure numpy ------------------------------------------------------------------


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def confusion_matrix(labels: Sequence[int], preds: Sequence[int],
                     num_classes: int) -> np.ndarray:
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels, int), np.asarray(preds, int)), 1)
  return cm


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class. A class never predicted has
  precision 0; one absent from the labels has recall 0 (sklearn's zero_division=0)."""
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  support, predicted = cm.sum(axis=1), cm.sum(axis=0)
  precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
  f1 = _safe_div(2 * precision * recall, precision + recall)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def summarize(confusion: np.ndarray, loss_sum: float | None = None,
              count: float | None = None) -> dict[str, float]:
  """WA (accuracy), UAR (mean recall over classes present) and macro-F1.

  As sklearn does (balanced_accuracy_score, f1_score(average="macro")), UAR
  averages over the classes present in the labels and macro-F1 over the classes
  in the labels or the predictions, so a small fold lacking a class is not scored
  on a recall it could never have had.
  """
  cm = np.asarray(confusion, np.float64)
  pc = per_class(cm)
  present = pc["support"] > 0
  seen = present | (cm.sum(axis=0) > 0)
  total = cm.sum()
  out = {
      "accuracy": float(np.trace(cm) / total) if total else 0.0,
      "uar": float(pc["recall"][present].mean()) if present.any() else 0.0,
      "macro_f1": float(pc["f1"][seen].mean()) if seen.any() else 0.0,
  }
  if loss_sum is not None:
    out["loss"] = float(loss_sum) / max(float(count or total), 1.0)
  return out


def stats_to_scalars(stats: Mapping[str, Any]) -> dict[str, float]:
  """Host-side scalars from accumulated device `batch_stats`."""
  stats = jax.device_get(stats)
  return summarize(stats["confusion"], stats["loss_sum"], stats["count"])
