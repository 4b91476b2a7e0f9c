"""A folder of the user's own labelled clips: any mix of mp4/flv/avi/mov/wav plus
`labels.csv` with columns `file,label,actor` (and optionally `sex`, `take`), and
optionally `classes.txt`, which fixes the class list and its order.

Rows sharing a `take` value are one take (e.g. a video and its separate wav);
without it, each file is its own take. Without classes.txt the classes are the
labels of the takes that can be used, so a row that is skipped cannot leave
behind a class with no examples."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os

from input_pipeline import naming
from input_pipeline.builders import base
from input_pipeline.errors import InputError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
CLASSES_FILE = "classes.txt"
REQUIRED_COLUMNS = ("file", "label", "actor")
# Without classes.txt, a class with fewer takes than this is probably a typo.
MIN_TAKES_PER_CLASS = 2


@dataclasses.dataclass(frozen=True)
class LabelRow:
  """One row of labels.csv, with its line number for messages."""
  line: int
  file: str      # as written: relative to the manual directory
  label: str     # lower-cased
  actor: str
  sex: str
  take: str


@dataclasses.dataclass(frozen=True)
class LabelledTake:
  """A take whose rows agree, before labels become class indices."""
  take_id: str
  label: str
  actor: int
  sex: str
  files: tuple[str, ...]
  lines: tuple[int, ...]


@dataclasses.dataclass
class Listing:
  """labels.csv checked against the files on disk and classes.txt."""
  takes: list[LabelledTake]
  skipped: list[base.Skip]
  ignored: list[str]
  class_names: tuple[str, ...]
  from_classes_file: bool


def read_labels(manual_dir: str) -> list[LabelRow]:
  path = os.path.join(manual_dir, LABELS_FILE)
  if not os.path.isfile(path):
    raise InputError(path, "labels file not found (need columns file,label,actor)")
  # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark,
  # and in many locales they separate fields with ';' (or export with tabs).
  with open(path, newline="", encoding="utf-8-sig") as f:
    sample = f.read(4096)
    f.seek(0)
    try:
      dialect = csv.Sniffer().sniff(sample.splitlines()[0] if sample else "",
                                    delimiters=",;\t")
    except csv.Error:
      dialect = csv.excel
    reader = csv.DictReader(f, dialect=dialect)
    # Header names as people type them: "File", " label ".
    reader.fieldnames = [(n or "").strip().lower() for n in reader.fieldnames or ()]
    missing = set(REQUIRED_COLUMNS) - set(reader.fieldnames)
    if missing:
      raise InputError(path, f"missing column(s) {', '.join(sorted(missing))}")
    rows = []
    for row in reader:
      # DictReader fills the columns a short row lacks with None.
      if any(row.get(c) is None for c in REQUIRED_COLUMNS):
        fields = sum(v is not None for k, v in row.items() if k is not None)
        raise InputError(path, f"line {reader.line_num} has {fields} field(s), need "
                               f"at least {','.join(REQUIRED_COLUMNS)}")
      get = lambda key: (row.get(key) or "").strip()  # pylint: disable=cell-var-from-loop
      rows.append(LabelRow(line=reader.line_num, file=get("file"),
                           label=get("label").lower(), actor=get("actor"),
                           sex=get("sex").lower(), take=get("take")))
  return rows


def read_classes(manual_dir: str) -> tuple[str, ...] | None:
  """The class names in classes.txt, one per line (blank lines ignored), or None
  without that file."""
  path = os.path.join(manual_dir, CLASSES_FILE)
  if not os.path.exists(path):
    return None
  if not os.path.isfile(path):
    raise InputError(path, "is not a file (need one class name per line)")
  names: list[str] = []
  with open(path, encoding="utf-8-sig") as f:
    for i, line in enumerate(f, start=1):
      name = line.strip().lower()
      if name in names:
        raise InputError(path, f"line {i}: class {name!r} is listed twice")
      if name:
        names.append(name)
  if not names:
    raise InputError(path, "no class names (need one per line)")
  return tuple(names)


def _lines(numbers) -> str:
  numbers = [str(n) for n in sorted(set(numbers))]
  if len(numbers) == 1:
    return f"line {numbers[0]}"
  return f"lines {', '.join(numbers[:-1])} and {numbers[-1]}"


def _known(names: tuple[str, ...], limit: int = 12) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def list_folder(manual_dir: str) -> Listing:
  """Which rows of labels.csv make usable takes, which are skipped and why, and
  the class names: classes.txt's, else those of the usable takes."""
  rows = read_labels(manual_dir)
  labels_path = os.path.join(manual_dir, LABELS_FILE)
  known = read_classes(manual_dir)
  listed = set()
  groups: dict[str, list[tuple[str, LabelRow]]] = {}
  skipped = []
  for row in rows:
    path = os.path.normpath(os.path.join(manual_dir, row.file))
    listed.add(path)
    where = f"{labels_path} line {row.line}"
    if not row.file:
      skipped.append(base.Skip((where,), "empty file column"))
    elif not os.path.isfile(path):
      skipped.append(base.Skip((path,), f"listed in {where} but not found"))
    elif not row.label:
      skipped.append(base.Skip((path,), f"empty label in {where}"))
    elif known is not None and row.label not in known:
      skipped.append(base.Skip((path,), f"label {row.label!r} ({LABELS_FILE} line "
                                        f"{row.line}) not in {CLASSES_FILE} (known: "
                                        f"{_known(known)})"))
    elif not _is_int(row.actor):
      skipped.append(base.Skip((path,), f"actor {row.actor!r} in {where} is not an "
                                        "integer"))
    else:
      take = row.take or os.path.splitext(row.file)[0]
      groups.setdefault(take, []).append((path, row))
  takes = []
  for take, members in sorted(groups.items()):
    take_id = take.replace("/", "__")
    files = tuple(dict.fromkeys(p for p, _ in members))  # A file listed twice: once.
    lines = tuple(r.line for _, r in members)
    labels = {r.label for _, r in members}
    actors = {int(r.actor) for _, r in members}
    if len(labels) > 1 or len(actors) > 1:
      skipped.append(base.Skip(files, "rows of one take disagree on label or actor "
                                      f"({LABELS_FILE} {_lines(lines)})", take_id))
      continue
    sex = next((r.sex for _, r in members if r.sex), "unknown")
    takes.append(LabelledTake(take_id=take_id, label=labels.pop(), actor=actors.pop(),
                              sex=sex, files=files, lines=lines))
  if known is not None:
    class_names = known
  else:
    # With no usable take, the row labels still name the classes, so that the
    # build can run and report every row's reason.
    labels = {t.label for t in takes} or {r.label for r in rows if r.label}
    if not labels:
      raise InputError(labels_path, "no labels in the file")
    ordered = [e for e in naming.RAVDESS_EMOTIONS if e in labels]
    class_names = tuple(ordered + sorted(labels - set(ordered)))
  own = {os.path.normpath(os.path.join(manual_dir, name))
         for name in (LABELS_FILE, CLASSES_FILE)}
  used = listed | own
  ignored = [p for p in base.walk_files(manual_dir) if os.path.normpath(p) not in used]
  return Listing(takes, skipped, ignored, class_names, known is not None)


def _is_int(text: str) -> bool:
  try:
    int(text)
  except ValueError:
    return False
  return True


def class_names_from_labels(manual_dir: str) -> tuple[str, ...]:
  """classes.txt's names in its order; without it, the labels of the usable takes,
  known emotions in RAVDESS's order, then the others sorted."""
  return list_folder(manual_dir).class_names


class Folder(base.AvBuilder, skip_registration=True):
  """Your own clips, labelled in labels.csv; one example per take."""

  name = "folder"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put your clips (mp4, flv, avi, mov or wav) in one directory, with a labels.csv:
    file,label,actor[,sex][,take]
    clips/anna_01.mp4,happy,1,female,
  `file` is relative to the directory; `actor` is an integer id (the folds are
  split by actor); rows with the same `take` are the same recording.
  Optionally add classes.txt beside it, one class name per line: it fixes the
  classes and their order, and a row whose label is not in it is skipped and
  reported, so a typo cannot become a class. Without classes.txt the classes are
  the labels of the rows that can be used, and a class with fewer than 2 takes is
  warned about.
    avjax prepare --dataset folder --manual-dir DIR --data-dir DATA --features NAME
  """

  def __init__(self, *, class_names: tuple[str, ...] = (), **kwargs):
    self._class_names = tuple(class_names)
    super().__init__(**kwargs)

  def class_names(self) -> tuple[str, ...]:
    return self._class_names

  def discover(self, manual_dir: str) -> base.Discovery:
    listing = list_folder(manual_dir)
    skipped = list(listing.skipped)
    if not listing.from_classes_file:
      for name in listing.class_names:
        found = [t for t in listing.takes if t.label == name]
        if len(found) < MIN_TAKES_PER_CLASS:
          lines = [n for t in found for n in t.lines]
          log.warning("class %r has only %d usable take(s)%s: a typo? List the "
                      "classes in %s to catch typos", name, len(found),
                      f" ({LABELS_FILE} {_lines(lines)})" if lines else "",
                      os.path.join(manual_dir, CLASSES_FILE))
    takes = []
    for t in listing.takes:
      if t.label not in self._class_names:
        skipped.append(base.Skip(t.files, f"label {t.label!r} is not a known class "
                                          f"(known: {_known(self._class_names)})",
                                 t.take_id))
        continue
      wavs = [p for p in t.files if p.lower().endswith((".wav", ".m4a", ".mp3"))]
      videos = [p for p in t.files if p.lower().endswith(base.VIDEO_EXTENSIONS)]
      takes.append(base.Take(
          take_id=t.take_id, actor=t.actor, label=self._class_names.index(t.label),
          emotion=t.label, sex=t.sex or "unknown",
          audio_file=(wavs or videos or [None])[0], video_file=(videos or [None])[0],
          files=t.files))
    return base.Discovery(takes, skipped, listing.ignored)
