"""`avjax prepare`: run a builder over a manual directory for one feature set, and
account for every clip.

TFDS writes into an `incomplete.*` directory and renames it only when every split
is written, so an interrupted prepare never leaves a dataset that reads as
complete; running it again starts over cleanly. `prepare_report.json` beside the
data lists every skipped take or file with its reason, and `prepared + skipped =
found` always holds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds

from input_pipeline import features as features_lib
from input_pipeline.builders import BUILDERS
from input_pipeline.builders import base
from input_pipeline.builders.folder import class_names_from_labels
from input_pipeline.errors import InputError

REPORT_FILE = "prepare_report.json"
FAILED_REPORT_FILE = "prepare_report.failed.json"  # when no example could be made


@dataclasses.dataclass
class PrepareReport:
  dataset: str
  feature_set: str
  version: str
  data_path: str
  manual_dir: str
  found: int
  prepared: int
  skipped: list[dict]
  ignored_files: list[str]
  seconds: float
  already_prepared: bool = False
  # Class names in label order, each with its number of prepared examples.
  classes: list[dict] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """One line with every count: skips found before decoding (bad names,
    unusable rows) and ignored files print no warning of their own."""
    if self.already_prepared:
      return (f"{self.dataset}/{self.feature_set} {self.version} already prepared at "
              f"{self.data_path} ({self.prepared} examples; report: {REPORT_FILE})")
    ignored = len(self.ignored_files)
    return (f"{self.dataset}/{self.feature_set} {self.version}: found {self.found}, "
            f"prepared {self.prepared}, skipped {len(self.skipped)}, ignored {ignored} "
            f"non-clip file{'' if ignored == 1 else 's'} in {self.seconds:.1f} s -> "
            f"{self.data_path} (every skipped and ignored file, with its reason: "
            f"{os.path.join(self.data_path, REPORT_FILE)})")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def make_builder(dataset: str, data_dir: str, feature_set: str, *,
                 manual_dir: str | None = None, workers: int | None = None,
                 progress: bool = True) -> base.AvBuilder:
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r} (known: {', '.join(BUILDERS)})")
  features_lib.get_feature_set(feature_set)  # One-line error for an unknown name.
  kwargs = dict(data_dir=data_dir, config=feature_set, file_format="array_record",
                workers=workers, progress=progress)
  if dataset == "folder":
    if manual_dir is None:
      raise ValueError("the folder dataset needs its manual directory for class names")
    kwargs["class_names"] = class_names_from_labels(manual_dir)
  return BUILDERS[dataset](**kwargs)


def prepare(dataset: str, manual_dir: str, data_dir: str, feature_set: str, *,
            workers: int | None = None, progress: bool = True,
            beam_runner: str | None = None,
            beam_options: Mapping[str, str] | Sequence[str] | None = None
            ) -> PrepareReport:
  """Builds `dataset` with `feature_set` from `manual_dir` into `data_dir`.

  With `beam_runner` (e.g. "DirectRunner", "DataflowRunner") or `beam_options`
  (`{"project": ...}` or `["--project=...", ...]`), features are computed in an
  Apache Beam pipeline instead of the local process pool: for corpora larger than
  one machine. `data_dir` and `manual_dir` must then be readable by the workers.
  """
  with without_download_notices():
    return _prepare(dataset, manual_dir, data_dir, feature_set, workers=workers,
                    progress=progress, beam_runner=beam_runner, beam_options=beam_options)


def _prepare(dataset: str, manual_dir: str, data_dir: str, feature_set: str, *,
             workers: int | None, progress: bool, beam_runner: str | None,
             beam_options: Mapping[str, str] | Sequence[str] | None) -> PrepareReport:
  manual_dir = os.path.abspath(os.fspath(manual_dir))
  data_dir = os.path.abspath(os.fspath(data_dir))
  base.check_manual_dir(manual_dir)
  try:
    builder = make_builder(dataset, data_dir, feature_set, manual_dir=manual_dir,
                           workers=workers, progress=progress)
  except ValueError as e:
    raise InputError(None, str(e)) from e
  data_path = os.fspath(builder.data_dir)
  report_path = os.path.join(data_path, REPORT_FILE)
  if builder.is_prepared() and os.path.isfile(report_path):
    with open(report_path) as f:
      previous = json.load(f)
    previous.update(already_prepared=True)
    return PrepareReport(**previous)
  _remove_stale(data_dir, data_path)
  start = time.time()
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if beam_runner or beam_options:
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, beam_runner=beam_runner,
        beam_options=pipeline_options(beam_options))
  if not progress or not (beam_runner or beam_options):
    # Locally, TFDS writes each actor's split while the workers compute, so its
    # per-split bars would interleave with ours, which already counts every clip.
    tfds.disable_progress_bar()
  def make_report() -> PrepareReport:
    return PrepareReport(
        dataset=dataset, feature_set=feature_set, version=str(builder.version),
        data_path=data_path, manual_dir=manual_dir, found=builder.found,
        prepared=builder.prepared,
        skipped=[{"files": list(s.files), "take": s.take_id, "file": s.where(),
                  "reason": s.reason} for s in builder.skipped],
        ignored_files=list(builder.ignored), seconds=time.time() - start,
        classes=class_counts(builder))

  try:
    builder.download_and_prepare(download_config=config)
  except InputError as e:
    if not builder.skipped:
      raise
    # Nothing was written, but the reasons must not be lost with the run.
    failed = os.path.join(os.path.dirname(data_path), FAILED_REPORT_FILE)
    _write_json(make_report().to_json(), failed)
    raise InputError(e.path, f"{e.cause}; every skipped file and its reason: {failed}") from e
  finally:
    builder.cleanup()
  report = make_report()
  if report.prepared + len(report.skipped) != report.found:
    raise RuntimeError(f"accounting error: prepared {report.prepared} + skipped "
                       f"{len(report.skipped)} != found {report.found}")
  _write_json(report.to_json(), report_path)
  return report


def class_counts(builder: base.AvBuilder) -> list[dict]:
  """Prepared examples per class: the discovered takes that no later skip names."""
  failed = {s.take_id for s in builder.skipped if s.take_id is not None}
  counts = collections.Counter(t.label for t in builder.takes if t.take_id not in failed)
  return [{"name": name, "prepared": counts[i]}
          for i, name in enumerate(builder.class_names())]


def _not_download_notice(record: logging.LogRecord) -> bool:
  """Filter for notices that read as if a download failed, or as a problem: TFDS's
  "Variant folder ... has no dataset_info.json" (the version folder `prepare` is
  about to write) and Beam's "apitools not found" (its BigQuery client, which
  avjax never uses)."""
  msg = str(record.msg)
  if msg.startswith("Variant folder") and "dataset_info.json" in record.getMessage():
    return False
  return not msg.startswith("apitools not found")


@contextlib.contextmanager
def without_download_notices():
  """Drops `_not_download_notice`'s records while `prepare` runs, and nothing else.
  absl logs TFDS's; Beam logs through the root logger."""
  loggers = (logging.getLogger("absl"), logging.getLogger())
  for logger in loggers:
    logger.addFilter(_not_download_notice)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(_not_download_notice)


def _write_json(obj, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def pipeline_options(options: Mapping[str, str] | Sequence[str] | None):
  """Beam `PipelineOptions` from KEY=VALUE pairs or flags; Beam parses the types."""
  from apache_beam.options.pipeline_options import PipelineOptions
  if isinstance(options, Mapping):
    flags = [f"--{k.lstrip('-')}={v}" for k, v in options.items()]
  else:
    flags = [o if o.startswith("--") else f"--{o}" for o in options or ()]
  return PipelineOptions(flags)


def _remove_stale(data_dir: str, data_path: str) -> None:
  """Leftovers of an interrupted run are never read, but they take disk space."""
  parent = os.path.dirname(data_path)
  for stale in glob.glob(os.path.join(parent, "incomplete.*")):
    shutil.rmtree(stale, ignore_errors=True)
  for cache in glob.glob(os.path.join(data_dir, base.CACHE_PREFIX + "*")):
    pid = os.path.basename(cache)[len(base.CACHE_PREFIX):].split("-", 1)[0]
    if pid.isdigit() and not _alive(int(pid)):  # Another live prepare may own it.
      shutil.rmtree(cache, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def prepared_path(data_dir: str, dataset: str, feature_set: str) -> str:
  """The newest complete version directory of a prepared dataset."""
  root = os.path.join(os.fspath(data_dir), dataset, feature_set)
  versions = sorted((d for d in glob.glob(os.path.join(root, "*"))
                     if re.fullmatch(r"\d+\.\d+\.\d+", os.path.basename(d))
                     and os.path.isfile(os.path.join(d, "dataset_info.json"))),
                    key=lambda d: tfds.core.Version(os.path.basename(d)))
  if not versions:
    raise InputError(root, f"{dataset}/{feature_set} is not prepared here; run "
                           f"avjax prepare --dataset {dataset} --features {feature_set} "
                           f"--data-dir {data_dir} --manual-dir DIR")
  return versions[-1]
