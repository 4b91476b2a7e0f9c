"""The results table: honest folds as mean ± std, the leaky split labelled, the
paper's number beside ours, and the two-stage branches reported."""

from __future__ import annotations

import json
import os

import numpy as np

from avjax import cli
from avjax.train import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stats(values):
  return {"accuracy": {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))
                       if len(values) > 1 else 0.0, "per_fold": list(values)},
          "uar": {"mean": float(np.mean(values)), "std": 0.0, "per_fold": list(values)}}


def test_markdown_shows_mean_std_leaky_label_paper_and_branches():
  folds = [0.5, 0.7, 0.6]
  table = {"protocols": ["actor", "leaky"], "rows": [{
      "spec": "experiments/x.py:fusion", "slug": "x-fusion", "system": "SX", "model": "m",
      "paper_accuracy": 66.9, "paper_protocol": "random split",
      "protocols": {"actor": {"folds": [0, 1, 2], "test": _stats(folds)},
                    "leaky": {"folds": [0], "test": _stats([0.9])}},
      "branches": {"audio": {"actor": _stats([0.4, 0.5, 0.45])}}}]}
  md = results.results_markdown(table)
  mean, std = 100 * np.mean(folds), 100 * np.std(folds, ddof=1)
  assert f"{mean:.1f} ± {std:.1f}" in md
  assert "LEAKY" in md and "90.0" in md
  assert "66.90 (random split)" in md
  branch_line = [l for l in md.splitlines() if "audio branch" in l]
  assert len(branch_line) == 1 and "45.0 ± 5.0" in branch_line[0]


def test_legend_names_only_the_protocols_in_the_table():
  """A leaky-only table has no folds to average; an actor-only one no LEAKY cells."""
  def table(protocols):
    stats = {"actor": {"folds": [0, 1], "test": _stats([0.5, 0.6])},
             "leaky": {"folds": [0], "test": _stats([0.9])}}
    return {"protocols": protocols, "rows": [{
        "spec": "experiments/x.py:audio", "slug": "x-audio", "system": "SX", "model": "m",
        "paper_accuracy": None, "paper_protocol": "",
        "protocols": {p: stats[p] for p in protocols}, "branches": {}}]}
  legend = results.results_markdown(table(["leaky"])).strip().splitlines()[-1]
  assert "mean ± std" not in legend and "over  folds" not in legend and "LEAKY" in legend
  legend = results.results_markdown(table(["actor"])).strip().splitlines()[-1]
  assert "mean ± std over 2 folds" in legend and "LEAKY" not in legend
  legend = results.results_markdown(table(["actor", "leaky"])).strip().splitlines()[-1]
  assert "mean ± std over 2 folds" in legend and "LEAKY" in legend


def test_slug_names_a_run_directory():
  assert results.slug("experiments/sultana2024.py:fusion,demo") == "sultana2024-fusion-demo"
  assert results.slug("experiments/almulla2024_weighted.py") == "almulla2024_weighted"


def test_results_command_runs_both_protocols(prepared, tmp_path, capsys):
  data_dir = prepared("mfcc")
  workdir = tmp_path / "table"
  code = cli.main(["results", "--configs",
                   os.path.join(REPO, "experiments", "sultana2024.py") + ":audio,smoke",
                   "--workdir", str(workdir), "--folds", "0,1",
                   f"--config.data.data_dir={data_dir}", "--config.data.protocol=actor_kfold",
                   "--config.data.k=4"])
  assert code == 0
  with open(workdir / results.RESULTS_JSON, encoding="utf-8") as f:
    table = json.load(f)
  (row,) = table["rows"]
  assert row["protocols"]["actor"]["folds"] == [0, 1]
  per_fold = []
  for fold in (0, 1):
    with open(workdir / row["slug"] / "actor" / f"fold_{fold}" / "report.json") as f:
      report = json.load(f)
    assert not report["leaky"]
    per_fold.append(report["splits"]["test"]["accuracy"])
  np.testing.assert_allclose(row["protocols"]["actor"]["test"]["accuracy"]["mean"],
                             np.mean(per_fold))
  with open(workdir / row["slug"] / "leaky" / "fold_0" / "report.json") as f:
    assert json.load(f)["leaky"]
  out = capsys.readouterr().out
  assert "LEAKY" in out and "actor-independent" in out

  # Run again: finished folds with the same config are read, not re-run.
  reports = sorted(workdir.glob("*/*/fold_*/report.json"))
  stamps = [p.stat().st_mtime_ns for p in reports]
  assert cli.main(["results", "--configs",
                   os.path.join(REPO, "experiments", "sultana2024.py") + ":audio,smoke",
                   "--workdir", str(workdir), "--folds", "0,1",
                   f"--config.data.data_dir={data_dir}", "--config.data.protocol=actor_kfold",
                   "--config.data.k=4"]) == 0
  assert [p.stat().st_mtime_ns for p in reports] == stamps
  again = capsys.readouterr().out
  assert again[again.index("| system"):] == out[out.index("| system"):]


def _fold_report(value: float) -> dict:
  return {"config": "experiments/x.py:audio", "protocol": "actor_kfold", "leaky": False,
          "protocol_label": "actor-independent (actor_kfold, fold 0)",
          "splits": {"test": {"accuracy": value, "uar": value, "macro_f1": value}}}


def test_cv_report_of_one_fold_is_singular_without_a_spread():
  from avjax.train import cross_validation
  value = 0.375
  md = cross_validation.cv_markdown(cross_validation.summarize_folds({0: _fold_report(value)}))
  assert md.splitlines()[0].startswith("# experiments/x.py:audio: 1 fold, ")
  (row,) = [line for line in md.splitlines() if line.startswith("| test")]
  assert "±" not in md
  assert row.count(f"{100 * value:.2f}") == 3


def test_cv_report_of_several_folds_shows_mean_and_std():
  from avjax.train import cross_validation
  values = [0.25, 0.5, 0.75]
  summary = cross_validation.summarize_folds({i: _fold_report(v) for i, v in enumerate(values)})
  md = cross_validation.cv_markdown(summary)
  assert f": {len(values)} folds, " in md.splitlines()[0]
  cell = f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"
  (row,) = [line for line in md.splitlines() if line.startswith("| test")]
  assert row.count(cell) == 3
