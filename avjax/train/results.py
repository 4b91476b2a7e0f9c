"""The results table: every system under the honest and the leaky protocol.

`run_results` cross-validates each config over actor-independent folds (mean ± std
of the test split over folds) and once on the leaky random clip split (labelled
LEAKY), and writes `results.md` / `results.json` with the paper's reported number
beside ours. A two-stage config also reports its branches, read from the branch
runs inside its folds, so the unimodal rows cost nothing extra; branch runs are
shared between configs with the same branch (S6 reuses S1's nets) through a cache
keyed by the branch config.

Same command on real data: point `--config.data.data_dir` at the prepared RAVDESS
or CREMA-D and the protocol at its fixed folds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from avjax.configs import load_config
from avjax.train import cross_validation, evaluate

RESULTS_MD, RESULTS_JSON = "results.md", "results.json"
_METRICS = ("accuracy", "uar", "macro_f1")


def slug(spec: str) -> str:
  """`experiments/sultana2024.py:fusion,demo` -> `sultana2024-fusion-demo`."""
  path, _, arg = spec.partition(":")
  base = os.path.splitext(os.path.basename(path))[0]
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base}-{arg}" if arg else base).strip("-")


def _fold_summary(reports: Mapping[int, Mapping[str, Any]], split: str = "test") -> dict:
  out = {}
  for metric in _METRICS:
    values = [float(r["splits"][split][metric]) for r in reports.values()
              if split in r.get("splits", {})]
    if values:
      out[metric] = {"mean": float(np.mean(values)),
                     "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                     "per_fold": values}
  return out


def _branch_reports(protocol_dir: str, folds: Sequence[int]) -> dict[str, dict[int, dict]]:
  """branch name -> fold -> report.json of that branch's run in that fold."""
  out: dict[str, dict[int, dict]] = {}
  for fold in folds:
    links = os.path.join(protocol_dir, f"fold_{fold}", "branches.json")
    if not os.path.exists(links):
      continue
    with open(links, encoding="utf-8") as f:
      for name, path in json.load(f).items():
        report = os.path.join(path, evaluate.REPORT)
        if os.path.exists(report):
          with open(report, encoding="utf-8") as r:
            out.setdefault(name, {})[fold] = json.load(r)
  return out


def _run_protocol(config, workdir: str, leaky: bool, folds) -> tuple[dict, dict]:
  cfg = copy.deepcopy(config)
  if leaky:
    cfg.data.protocol = "random_clip"
    cfg.data.allow_leaky = True
    folds = [0]
  summary = cross_validation.cross_validate(cfg, workdir, folds=folds)
  per_fold = {}
  for fold in summary["folds"]:
    with open(os.path.join(workdir, f"fold_{fold}", evaluate.REPORT), encoding="utf-8") as f:
      per_fold[int(fold)] = json.load(f)
  branches = {name: _fold_summary(reports)
              for name, reports in _branch_reports(workdir, summary["folds"]).items()}
  return {"label": summary["protocol_label"], "folds": summary["folds"],
          "test": _fold_summary(per_fold)}, branches


def run_results(specs: Sequence[str], workdir: str, overrides: Sequence[str] = (),
                protocols: Sequence[str] = ("actor", "leaky"),
                folds: Sequence[int] | None = None) -> dict:
  """Runs every config under each protocol into `workdir/<slug>/<protocol>` (finished
  folds are skipped, so an interrupted table resumes) and writes the table."""
  workdir = os.path.abspath(workdir)
  rows = []
  for spec in specs:
    config = load_config(spec, [*overrides, f"branch_cache={os.path.join(workdir, 'branches')}"])
    name = slug(spec)
    entry = {"spec": spec, "slug": name, "system": config.get("system", "") or name,
             "model": config.model.name, "paper_accuracy": float(config.get("paper_accuracy", -1)),
             "paper_protocol": config.get("paper_protocol", ""), "protocols": {},
             "branches": {}}
    for protocol in protocols:
      logging.info("results: %s, %s", spec, protocol)
      summary, branches = _run_protocol(config, os.path.join(workdir, name, protocol),
                                        leaky=protocol == "leaky", folds=folds)
      entry["protocols"][protocol] = summary
      for branch, stats in branches.items():
        entry["branches"].setdefault(branch, {})[protocol] = stats
    rows.append(entry)
  table = {"rows": rows, "protocols": list(protocols), "overrides": list(overrides)}
  table["markdown"] = results_markdown(table)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_JSON), "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in table.items() if k != "markdown"}, f, indent=2)
    with open(os.path.join(workdir, RESULTS_MD), "w", encoding="utf-8") as f:
      f.write(table["markdown"])
  return table


def _cell(stats: Mapping[str, Any] | None, metric: str = "accuracy") -> str:
  if not stats or metric not in stats:
    return "–"
  s = stats[metric]
  if len(s["per_fold"]) > 1:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"
  return f"{100 * s['mean']:.1f}"


def results_markdown(table: Mapping[str, Any]) -> str:
  protocols = list(table["protocols"])
  heads = []
  for p in protocols:
    if p == "leaky":
      heads += ["LEAKY random clip split: WA"]
    else:
      heads += ["actor-independent: WA", "UAR"]
  lines = ["| system | config | " + " | ".join(heads) + " | paper (their protocol) |",
           "|---|---|" + "---|" * len(heads) + "---|"]
  for row in table["rows"]:
    entries = [(row["system"], row["spec"], row["protocols"], row["paper_accuracy"],
                row["paper_protocol"])]
    for branch, stats in sorted(row["branches"].items()):
      entries.append((f"{row['system']} · {branch} branch", f"{row['spec']} (branch)",
                      {p: {"test": s} for p, s in stats.items()}, None, ""))
    for system, spec, per_protocol, paper, paper_protocol in entries:
      cells = []
      for p in protocols:
        stats = (per_protocol.get(p) or {}).get("test")
        cells.append(_cell(stats))
        if p != "leaky":
          cells.append(_cell(stats, "uar"))
      paper_cell = (f"{paper:.2f} ({paper_protocol})" if paper is not None and paper >= 0
                    else "–")
      config_cell = os.path.basename(spec.split(" ")[0])
      lines.append(f"| {system} | `{config_cell}` | " + " | ".join(cells) +
                   f" | {paper_cell} |")
  folds = sorted({len(r["protocols"][p]["folds"]) for r in table["rows"]
                  for p in protocols if p != "leaky" and p in r["protocols"]})
  legend = ["WA = accuracy, UAR = unweighted average recall, in %, on the test actors"
            + (f"; actor-independent cells are mean ± std over "
               f"{' or '.join(str(n) for n in folds)} folds." if folds else ".")]
  if "leaky" in protocols:
    legend.append("LEAKY cells share actors between train and test, as the papers' "
                  "random splits do: they are not comparable to the actor-independent ones.")
  lines += ["", " ".join(legend)]
  return "\n".join(lines) + "\n"
