"""Evaluation of a trained workdir: `report.json`, `confusion_matrix.png`,
`curves.png`; and cross-validation over a protocol's folds.

The model evaluated is the best checkpoint by the run's validation metric (the
latest if the run tracks none), scored on every eval split; the report's headline
is the `test` split when there is one. A leaky protocol (the same actor in train
and test, as most papers' random splits) is labelled LEAKY in the report and on
every figure, so its numbers cannot be mistaken for actor-independent ones.
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

from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import metrics as metrics_lib
from avjax.train import plots, writers

REPORT, CM_PNG, CURVES_PNG = "report.json", "confusion_matrix.png", "curves.png"
_HEADLINE = ("accuracy", "uar", "macro_f1")


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
      **{k: splits[primary][k] for k in _HEADLINE},
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


def _load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  if step is None:
    raise UserError(f"{workdir}: no config.json and no checkpoint; is it a workdir?")
  return ml_collections.ConfigDict(checkpointer.restore_config(step))


def evaluate_workdir(workdir: str, *, datasets=None,
                     config: ml_collections.ConfigDict | None = None,
                     mesh=None, step: int | None = None, setup=None) -> dict:
  """Scores the best (or given) checkpoint of `workdir` on every eval split and
  writes report.json, confusion_matrix.png and curves.png. Returns the report.

  `setup` (a `trainer.Setup`) lets the trainer reuse its compiled eval step.
  """
  from avjax.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  config = config or _load_config(workdir)
  if mesh is None:
    mesh = setup.mesh if setup else trainer._mesh(config)  # pylint: disable=protected-access
  if datasets is None:
    datasets = trainer._create_datasets(config, mesh)  # pylint: disable=protected-access
  setup = setup or trainer.build(config, datasets.info, mesh)
  best_metric = config.train.get("best_metric") or None
  state, step = trainer.restore_best(setup, workdir, step, purpose="evaluate")
  results = trainer.run_evals(setup, state, datasets.evals)
  report = build_report(results, datasets.info,
                        config_name=config.get("config_spec", None) or config.model.name,
                        checkpoint_step=int(step), best_metric=best_metric)
  write_report(workdir, report)
  # Not part of report.json: what was written, for the CLI to print.
  return {**report, "files": [os.path.join(workdir, n) for n in (REPORT, CM_PNG, CURVES_PNG)]}


# --- cross-validation ----------------------------------------------------------------


def cross_validate(config: ml_collections.ConfigDict, workdir: str,
                   folds: Sequence[int] | None = None, *,
                   datasets_fn: Callable[[int], Any] | None = None) -> dict:
  """Trains and evaluates each fold into `workdir/fold_K`; writes cv_report.json
  and cv_report.md (mean ± std over folds, per eval split). `folds=None` runs
  every fold of `config.data.protocol`. Folds already finished resume as no-ops,
  so a preempted CV continues where it stopped. The returned summary also holds
  the markdown table under "markdown"."""
  from avjax.train import trainer  # pylint: disable=g-import-not-at-top
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
    with open(os.path.join(fold_dir, REPORT), encoding="utf-8") as f:
      per_fold[int(fold)] = json.load(f)
  summary = _cv_summary(per_fold)
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
  report, saved = os.path.join(fold_dir, REPORT), os.path.join(fold_dir, "config.json")
  if not (os.path.exists(report) and os.path.exists(saved)):
    return False
  with open(saved, encoding="utf-8") as f:
    return json.load(f) == json.loads(config.to_json_best_effort())


def _cv_summary(per_fold: Mapping[int, Mapping[str, Any]]) -> dict:
  first = next(iter(per_fold.values()))
  splits = sorted(set.intersection(*(set(r["splits"]) for r in per_fold.values())))
  table = {}
  for split in splits:
    table[split] = {}
    for metric in _HEADLINE:
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
    cells = [_cv_cell(row[m]) for m in _HEADLINE]
    lines.append(f"| {split} | " + " | ".join(cells) + " |")
  if summary["leaky"]:
    lines += ["", "**LEAKY protocol**: actors are shared between train and test."]
  return "\n".join(lines) + "\n"

