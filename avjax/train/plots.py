"""Report figures: a confusion matrix and training curves (matplotlib, Agg).

Plots are files for a report, never windows, so the Agg backend is forced and no
display is needed on a TPU VM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.ticker

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


_SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
_METRIC_STYLES = {"uar": "-", "accuracy": "--", "macro_f1": ":"}
_METRIC_NAMES = {"uar": "UAR", "accuracy": "WA", "macro_f1": "macro-F1"}


def curves_figure(series: Mapping[str, Sequence[tuple[int, float]]], path: str,
                  title: str, *, reported_step: int | None = None,
                  chance: float | None = None) -> None:
  """Two panels against step: every `<split>/loss`, then UAR, WA and macro-F1.
  A split keeps one colour in both panels and a metric one line style, so the
  nine metric lines stay apart with a five-entry legend; the step the report was
  made from and chance are marked, which is what a reader checks first."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
  order = {s: i for i, s in enumerate(_SPLIT_COLOURS)}
  for name in sorted(series, key=lambda n: (order.get(n.rpartition("/")[0], 9), n)):
    points = series[name]
    split, _, metric = name.rpartition("/")
    if not points or (metric != "loss" and metric not in _METRIC_STYLES):
      continue
    steps, values = zip(*points)
    colour = _SPLIT_COLOURS.get(split)
    if metric == "loss":
      ax_loss.plot(steps, values, marker=".", color=colour, label=split or name)
    else:
      ax_metric.plot(steps, values, marker=".", markersize=4, color=colour,
                     linestyle=_METRIC_STYLES[metric])
  ax_loss.set_title("loss (colour: split)")
  ax_metric.set_title("UAR, WA and macro-F1")
  ax_metric.set_ylim(0.0, 1.0)
  keys = [Line2D([], [], color="0.2", linestyle=style, label=_METRIC_NAMES[m])
          for m, style in _METRIC_STYLES.items()]
  if chance is not None:
    ax_metric.axhline(chance, color="0.5", linewidth=0.8, linestyle="-.")
    keys.append(Line2D([], [], color="0.5", linestyle="-.", label=f"chance ({chance:.3g})"))
  if reported_step is not None:
    for ax in (ax_loss, ax_metric):
      ax.axvline(reported_step, color="0.3", linewidth=0.8, linestyle=(0, (1, 3)))
    keys.append(Line2D([], [], color="0.3", linestyle=(0, (1, 3)),
                       label=f"reported checkpoint (step {reported_step})"))
  for ax in (ax_loss, ax_metric):
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  if ax_loss.get_legend_handles_labels()[0]:
    ax_loss.legend(fontsize=7)
  ax_metric.legend(handles=keys, fontsize=7, loc="lower right")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
