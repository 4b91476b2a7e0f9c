"""Report figures: a confusion matrix and training curves (matplotlib, Agg).

Plots are files for a report, never windows, so the Agg backend is forced and no
display is needed on a TPU VM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top


def confusion_matrix_figure(confusion: np.ndarray, class_names: Sequence[str],
                            path: str, title: str) -> None:
  """Row-normalised colours (recall per true class) with raw counts in cells."""
  cm = np.asarray(confusion, np.float64)
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
  im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
              color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="recall")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def curves_figure(series: Mapping[str, Sequence[tuple[int, float]]], path: str,
                  title: str) -> None:
  """Two panels against step: every `*/loss`, then accuracy/UAR/macro-F1."""
  fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
  for name in sorted(series):
    points = series[name]
    if not points:
      continue
    steps, values = zip(*points)
    metric = name.rsplit("/", 1)[-1]
    if metric == "loss":
      ax_loss.plot(steps, values, marker=".", label=name)
    elif metric in ("accuracy", "uar", "macro_f1"):
      ax_metric.plot(steps, values, marker=".", label=name)
  ax_loss.set_title("loss")
  ax_metric.set_title("accuracy (WA), UAR, macro-F1")
  ax_metric.set_ylim(0.0, 1.0)
  for ax in (ax_loss, ax_metric):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
