"""Metric writers: CLU's default (TensorBoard + log) plus one JSONL file.

`metrics.jsonl` is what `evaluate` plots curves from, so reports never need
TensorBoard's reader. One line per write: {"step": s, "name": value, ...}. A
resumed run appends; readers keep the last value per (step, name).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

METRICS_FILE = "metrics.jsonl"


class JsonlWriter(interface.MetricWriter):
  """Scalars only: everything else the CLU interface offers is ignored."""

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/inf.
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    if not self._file.closed:
      self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """Process 0 writes TensorBoard, logs and JSONL; other processes only log."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  default = metric_writers.create_default_writer(workdir, just_logging=False)
  return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, METRICS_FILE))])


def read_metrics(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """name -> sorted [(step, value)], the last write for a step winning."""
  path = os.path.join(workdir, METRICS_FILE)
  series: dict[str, dict[int, float]] = {}
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # A line cut short by a kill.
        continue
      step = int(row.pop("step"))
      for k, v in row.items():
        series.setdefault(k, {})[step] = float(v)
  return {k: sorted(v.items()) for k, v in series.items()}
