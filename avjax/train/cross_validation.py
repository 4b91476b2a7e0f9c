"""Cross-validation: every fold of a protocol trained and evaluated into
`workdir/fold_K`, summarised as mean ± std over the folds (cv_report.json, .md).

It sits above the trainer (it runs `train_and_evaluate` per fold); the trainer
never imports it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from avjax.train import evaluate, trainer


def cross_validate(config: ml_collections.ConfigDict, workdir: str,
                   folds: Sequence[int] | None = None, *,
                   datasets_fn: Callable[[int], Any] | None = None) -> dict:
  """Trains and evaluates each fold into `workdir/fold_K`; writes cv_report.json
  and cv_report.md (mean ± std over folds, per eval split). `folds=None` runs
  every fold of `config.data.protocol`. Folds already finished resume as no-ops,
  so a preempted CV continues where it stopped. The returned summary also holds
  the markdown table under "markdown"."""
  workdir = os.path.abspath(workdir)
  if isinstance(folds, str):  # "0,2" from a command line.
    folds = [int(f) for f in folds.split(",") if f.strip()]
  if folds is None:
    from input_pipeline import splits  # pylint: disable=g-import-not-at-top
    folds = range(splits.num_folds(config.data.protocol, k=int(config.data.get("k", 5))))
  per_fold = {}
  for fold in folds:
    cfg = copy.deepcopy(config)
    cfg.data.fold = int(fold)
    fold_dir = os.path.join(workdir, f"fold_{fold}")
    if not _finished_with(fold_dir, cfg):
      trainer.train_and_evaluate(cfg, fold_dir,
                                 datasets=datasets_fn(fold) if datasets_fn else None)
    with open(os.path.join(fold_dir, evaluate.REPORT), encoding="utf-8") as f:
      per_fold[int(fold)] = json.load(f)
  summary = summarize_folds(per_fold)
  markdown = cv_markdown(summary)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "cv_report.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    with open(os.path.join(workdir, "cv_report.md"), "w", encoding="utf-8") as f:
      f.write(markdown)
  return {**summary, "markdown": markdown}


def _finished_with(fold_dir: str, config: ml_collections.ConfigDict) -> bool:
  """A fold whose report exists and whose run had exactly this config is done:
  reading its report skips rebuilding data and model to re-evaluate it. Any
  other state (no report, a preempted run, a changed config) goes through
  train_and_evaluate, which resumes the run, or refuses a fold whose checkpoints
  belong to a run with other settings."""
  report, saved = os.path.join(fold_dir, evaluate.REPORT), os.path.join(fold_dir, "config.json")
  if not (os.path.exists(report) and os.path.exists(saved)):
    return False
  with open(saved, encoding="utf-8") as f:
    return json.load(f) == json.loads(config.to_json_best_effort())


def summarize_folds(per_fold: Mapping[int, Mapping[str, Any]]) -> dict:
  first = next(iter(per_fold.values()))
  splits = sorted(set.intersection(*(set(r["splits"]) for r in per_fold.values())))
  table = {}
  for split in splits:
    table[split] = {}
    for metric in evaluate.HEADLINE:
      values = [float(r["splits"][split][metric]) for r in per_fold.values()]
      table[split][metric] = {
          "mean": float(np.mean(values)),
          # Sample std (ddof=1), as CV tables in the literature report it.
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          "per_fold": values}
  return {"config": first["config"], "protocol": first["protocol"],
          "leaky": any(r["leaky"] for r in per_fold.values()),
          "protocol_label": first["protocol_label"] if first["leaky"]
          else f"actor-independent ({first['protocol']})",
          "folds": sorted(per_fold), "splits": table}


def _cv_cell(stats: Mapping[str, Any]) -> str:
  """mean ± std in percent; a single fold has no spread to show, so no ± 0.00."""
  if len(stats.get("per_fold", ())) == 1:
    return f"{100 * stats['mean']:.2f}"
  return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def cv_markdown(summary: Mapping[str, Any]) -> str:
  n = len(summary["folds"])
  lines = [f"# {summary['config']}: {n} fold{'' if n == 1 else 's'}, "
           f"{summary['protocol_label']}", "",
           "| split | WA (%) | UAR (%) | macro-F1 (%) |", "|---|---|---|---|"]
  for split, row in summary["splits"].items():
    cells = [_cv_cell(row[m]) for m in evaluate.HEADLINE]
    lines.append(f"| {split} | " + " | ".join(cells) + " |")
  if summary["leaky"]:
    lines += ["", "**LEAKY protocol**: actors are shared between train and test."]
  return "\n".join(lines) + "\n"

