"""Evaluation of a trained workdir: `report.json`, `confusion_matrix.png` and
`curves.png` (cross-validation over folds is in cross_validation.py).

The model evaluated is the best checkpoint by the run's validation metric (the
latest if the run tracks none), scored on every eval split; the report's headline
is the `test` split when there is one. A leaky protocol (the same actor in train
and test, as most papers' random splits) is labelled LEAKY in the report and on
every figure, so its numbers cannot be mistaken for actor-independent ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from avjax.errors import UserError
from avjax.train import metrics as metrics_lib
from avjax.train import plots, runtime, writers

REPORT, CM_PNG, CURVES_PNG = "report.json", "confusion_matrix.png", "curves.png"
HEADLINE = ("accuracy", "uar", "macro_f1")
# Scored only for the reported checkpoint; never logged while training.
TEST_SPLIT = "test"


def protocol_label(info) -> str:
  if info.leaky:
    return f"LEAKY ({info.protocol}: the same actors appear in train and test)"
  return f"actor-independent ({info.protocol}, fold {info.fold})"


def build_report(results: Mapping[str, Mapping[str, Any]], info, *,
                 config_name: str, checkpoint_step: int | None,
                 best_metric: str | None = None) -> dict:
  """The report dict from per-split totals (`confusion`, `loss_sum`, `count`)."""
  if not results:
    raise UserError("nothing to report: the data has no eval split")
  names = list(info.class_names) or [str(i) for i in range(info.num_classes)]
  splits = {}
  for split, stats in results.items():
    cm = np.asarray(stats["confusion"])
    summary = metrics_lib.summarize(cm, stats.get("loss_sum"), stats.get("count"))
    pc = metrics_lib.per_class(cm)
    splits[split] = {
        **summary,
        "num_examples": int(round(float(cm.sum()))),
        "confusion_matrix": np.rint(cm).astype(int).tolist(),
        "per_class": {
            name: {"precision": float(pc["precision"][i]), "recall": float(pc["recall"][i]),
                   "f1": float(pc["f1"][i]), "support": int(round(pc["support"][i]))}
            for i, name in enumerate(names)},
    }
  primary = "test" if "test" in splits else sorted(splits)[0]
  return {
      "config": config_name,
      "dataset": getattr(info, "dataset", ""),
      "feature_set": getattr(info, "feature_set", ""),
      "protocol": info.protocol,
      "leaky": bool(info.leaky),
      "protocol_label": protocol_label(info),
      "fold": int(info.fold),
      "split_actors": {k: [int(a) for a in v] for k, v in dict(info.split_actors).items()},
      "num_examples": {k: int(v) for k, v in dict(info.num_examples).items()},
      "class_names": names,
      "checkpoint_step": checkpoint_step,
      "best_metric": best_metric,
      "primary_split": primary,
      **{k: splits[primary][k] for k in HEADLINE},
      "splits": splits,
  }


def write_report(workdir: str, report: Mapping[str, Any]) -> None:
  """report.json and the two figures, on process 0."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, REPORT), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  primary = report["primary_split"]
  head = (f"{report['config']}\n{report['protocol_label']}\n{primary}: "
          f"WA {report['accuracy']:.3f} UAR {report['uar']:.3f} "
          f"F1 {report['macro_f1']:.3f}")
  plots.confusion_matrix_figure(
      np.asarray(report["splits"][primary]["confusion_matrix"]), report["class_names"],
      os.path.join(workdir, CM_PNG), head)
  plots.curves_figure(writers.read_metrics(workdir), os.path.join(workdir, CURVES_PNG),
                      f"{report['config']}\n{report['protocol_label']}",
                      reported_step=report.get("checkpoint_step"),
                      chance=1.0 / len(report["class_names"]))


def evaluate_workdir(workdir: str, *, datasets=None,
                     config: ml_collections.ConfigDict | None = None,
                     mesh=None, step: int | None = None, setup=None) -> dict:
  """Scores the best (or given) checkpoint of `workdir` on every eval split and
  writes report.json, confusion_matrix.png and curves.png. Returns the report.

  `setup` (a `runtime.Setup`) lets the trainer reuse its compiled eval step.
  """
  workdir = os.path.abspath(workdir)
  config = config or runtime.load_workdir_config(workdir)
  if mesh is None:
    mesh = setup.mesh if setup else runtime.make_mesh(config)
  if datasets is None:
    datasets = runtime.create_datasets(config, mesh)
  setup = setup or runtime.build(config, datasets.info, mesh)
  best_metric = config.train.get("best_metric") or None
  state, step = runtime.restore_best(setup, workdir, step, purpose="evaluate")
  results = runtime.run_evals(setup, state, datasets.evals)
  report = build_report(results, datasets.info,
                        config_name=config.get("config_spec", None) or config.model.name,
                        checkpoint_step=int(step), best_metric=best_metric)
  write_report(workdir, report)
  # Not part of report.json: what was written, for the CLI to print.
  return {**report, "files": [os.path.join(workdir, n) for n in (REPORT, CM_PNG, CURVES_PNG)]}
