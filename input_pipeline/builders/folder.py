"""A folder of the user's own labelled clips: any mix of mp4/flv/avi/mov/wav plus
`labels.csv` with columns `file,label,actor` (and optionally `sex`, `take`).

Rows sharing a `take` value are one take (e.g. a video and its separate wav);
without it, each file is its own take."""

from __future__ import annotations

import csv
import os

from input_pipeline import naming
from input_pipeline.builders import base
from input_pipeline.errors import InputError

LABELS_FILE = "labels.csv"


def read_labels(manual_dir: str) -> list[dict[str, str]]:
  path = os.path.join(manual_dir, LABELS_FILE)
  if not os.path.isfile(path):
    raise InputError(path, "labels file not found (need columns file,label,actor)")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"file", "label", "actor"} - set(reader.fieldnames or ())
    if missing:
      raise InputError(path, f"missing column(s) {', '.join(sorted(missing))}")
    return [dict(row) for row in reader]


def class_names_from_labels(manual_dir: str) -> tuple[str, ...]:
  """Known emotion names keep RAVDESS's order; other label sets are sorted."""
  labels = {row["label"].strip().lower() for row in read_labels(manual_dir)}
  labels.discard("")
  if not labels:
    raise InputError(os.path.join(manual_dir, LABELS_FILE), "no labels in the file")
  known = [e for e in naming.RAVDESS_EMOTIONS if e in labels]
  return tuple(known + sorted(labels - set(known)))


class Folder(base.AvBuilder, skip_registration=True):
  """Your own clips, labelled in labels.csv; one example per take."""

  name = "folder"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put your clips (mp4, flv, avi, mov or wav) in one directory, with a labels.csv:
    file,label,actor[,sex][,take]
    clips/anna_01.mp4,happy,1,female,
  `file` is relative to the directory; `actor` is an integer id (the folds are
  split by actor); rows with the same `take` are the same recording.
    avjax prepare --dataset folder --manual-dir DIR --data-dir DATA --features NAME
  """

  def __init__(self, *, class_names: tuple[str, ...] = (), **kwargs):
    self._class_names = tuple(class_names)
    super().__init__(**kwargs)

  def class_names(self) -> tuple[str, ...]:
    return self._class_names

  def discover(self, manual_dir: str) -> base.Discovery:
    rows = read_labels(manual_dir)
    labels_path = os.path.join(manual_dir, LABELS_FILE)
    listed = set()
    groups: dict[str, list[tuple[str, dict]]] = {}
    skipped = []
    for i, row in enumerate(rows, start=2):  # Line 1 is the header.
      rel = (row.get("file") or "").strip()
      path = os.path.normpath(os.path.join(manual_dir, rel))
      listed.add(path)
      label = (row.get("label") or "").strip().lower()
      where = f"{labels_path} line {i}"
      if not rel:
        skipped.append(base.Skip((where,), "empty file column"))
        continue
      if not os.path.isfile(path):
        skipped.append(base.Skip((path,), f"listed in {where} but not found"))
        continue
      if label not in self._class_names:
        skipped.append(base.Skip((path,), f"label {label!r} is not a known class"))
        continue
      try:
        int(row["actor"])
      except (TypeError, ValueError):
        skipped.append(base.Skip((path,), f"actor {row.get('actor')!r} in {where} is not "
                                          "an integer"))
        continue
      take = (row.get("take") or "").strip() or os.path.splitext(rel)[0]
      groups.setdefault(take, []).append((path, row))
    takes = []
    for take_id, members in sorted(groups.items()):
      files = tuple(p for p, _ in members)
      labels = {r["label"].strip().lower() for _, r in members}
      actors = {int(r["actor"]) for _, r in members}
      if len(labels) > 1 or len(actors) > 1:
        skipped.append(base.Skip(files, "rows of one take disagree on label or actor",
                                 take_id))
        continue
      wavs = [p for p in files if p.lower().endswith((".wav", ".m4a", ".mp3"))]
      videos = [p for p in files if p.lower().endswith(base.VIDEO_EXTENSIONS)]
      label = labels.pop()
      sex = (members[0][1].get("sex") or "unknown").strip().lower() or "unknown"
      takes.append(base.Take(
          take_id=take_id.replace("/", "__"), actor=actors.pop(),
          label=self._class_names.index(label), emotion=label, sex=sex,
          audio_file=(wavs or videos or [None])[0], video_file=(videos or [None])[0],
          files=files))
    ignored = [p for p in base.walk_files(manual_dir)
               if p not in listed and os.path.basename(p) != LABELS_FILE]
    return base.Discovery(takes, skipped, ignored)
