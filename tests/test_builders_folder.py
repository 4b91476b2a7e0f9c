"""The `folder` builder's labels.csv and classes.txt: malformed rows, a BOM, typo'd
labels, classes left without examples, and rows that disagree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

from input_pipeline.builders import folder
from input_pipeline.errors import InputError
from input_pipeline.prepare import make_builder, prepare


def _folder(root: Path, rows: list[str], classes: list[str] | None = None,
            header: str = "file,label,actor", bom: bool = False) -> Path:
  """A manual dir with a 0.5 s wav for every `file` named in `rows` (unless it
  contains 'missing'), labels.csv and, if given, classes.txt."""
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for row in rows:
    name = row.split(",")[0]
    if name and "missing" not in name and not (root / name).exists():
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      soundfile.write(root / name, 0.1 * rng.standard_normal(8000).astype(np.float32),
                      16000, subtype="PCM_16")
  text = "\n".join([header, *rows]) + "\n"
  (root / "labels.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
  if classes is not None:
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
  return root


def _reasons(skipped) -> dict[str, str]:
  return {Path(s.files[0]).name: s.reason for s in skipped}


def test_short_row_is_an_input_error_naming_the_line(tmp_path):
  manual = _folder(tmp_path / "m", ["a.wav,happy,1", "b.wav,sad"])
  with pytest.raises(InputError) as err:
    prepare("folder", str(manual), str(tmp_path / "data"), "mfcc", workers=1,
            progress=False)
  assert err.value.path == str(manual / "labels.csv")
  assert "line 3" in err.value.cause and "\n" not in str(err.value)


def test_header_with_a_byte_order_mark_is_read(tmp_path):
  rows = ["a.wav,happy,1", "b.wav,sad,2"]
  listing = folder.list_folder(str(_folder(tmp_path / "m", rows, bom=True)))
  assert sorted(t.label for t in listing.takes) == ["happy", "sad"]


@pytest.mark.parametrize("header,sep", [("File,Label,Actor", ","),
                                        (" file ; label ; actor ", ";"),
                                        ("file\tlabel\tactor", "\t")])
def test_header_case_spaces_and_semicolon_or_tab_separators_are_read(tmp_path, header,
                                                                    sep):
  rows = ["a.wav,happy,1", "b.wav,sad,2"]
  manual = _folder(tmp_path / "m", rows, header=header)
  (manual / "labels.csv").write_text(
      "\n".join([header] + [r.replace(",", sep) for r in rows]) + "\n")
  listing = folder.list_folder(str(manual))
  assert sorted((Path(t.files[0]).name, t.label, t.actor) for t in listing.takes) == \
      sorted((r.split(",")[0], r.split(",")[1], int(r.split(",")[2])) for r in rows)


def test_classes_txt_fixes_the_classes_and_skips_unknown_labels(tmp_path):
  classes = ["sad", "happy", "angry"]  # Not RAVDESS order: the file's order wins.
  rows = ["a.wav,happy,1", "b.wav,hapy,1", "c.wav,Sad,2", "d.wav,sad,2"]
  manual = _folder(tmp_path / "m", rows, classes=classes)
  listing = folder.list_folder(str(manual))
  assert listing.class_names == tuple(classes) and listing.from_classes_file
  assert sorted(t.take_id for t in listing.takes) == ["a", "c", "d"]
  [skip] = listing.skipped
  assert skip.files == (str(manual / "b.wav"),)
  assert skip.reason.startswith("label 'hapy'") and "not in classes.txt" in skip.reason
  assert f"line {rows.index('b.wav,hapy,1') + 2}" in skip.reason  # 1 is the header.
  assert all(c in skip.reason for c in classes)
  assert listing.ignored == []  # classes.txt and labels.csv are not clips.


def test_without_classes_txt_only_used_rows_make_classes_and_rare_ones_warn(
    tmp_path, caplog):
  rows = ["a.wav,happy,1", "b.wav,happy,2", "c.wav,sad,1", "d.wav,sad,2",
          "e.wav,hapy,2",              # a typo: one take
          "missing.wav,calm,1",        # calm's only row is skipped...
          "f.wav,angry,x"]             # ...and so is angry's.
  manual = _folder(tmp_path / "m", rows)
  assert folder.class_names_from_labels(str(manual)) == ("happy", "sad", "hapy")
  builder = make_builder("folder", str(tmp_path / "data"), "mfcc", manual_dir=str(manual),
                         progress=False)
  with caplog.at_level(logging.WARNING, logger=folder.__name__):
    found = builder.discover(str(manual))
  warnings = [r.getMessage() for r in caplog.records if r.name == folder.__name__]
  assert len(warnings) == 1
  assert "'hapy'" in warnings[0] and "classes.txt" in warnings[0]
  assert f"line {rows.index('e.wav,hapy,2') + 2}" in warnings[0]
  assert len(found.takes) == 5 and len(found.skipped) == 2


def test_report_lists_classes_with_counts(tmp_path):
  rows = ["a.wav,sad,1", "b.wav,sad,2", "c.wav,happy,1", "d.wav,happy,2", "e.wav,hapy,2"]
  classes = ["neutral", "happy", "sad"]
  manual = _folder(tmp_path / "m", rows, classes=classes)
  report = prepare("folder", str(manual), str(tmp_path / "data"), "mfcc", workers=1,
                   progress=False)
  want = {c: sum(r.split(",")[1] == c for r in rows) for c in classes}
  assert report.classes == [{"name": c, "prepared": want[c]} for c in classes]
  assert report.prepared + len(report.skipped) == report.found == len(rows)
  on_disk = json.loads((Path(report.data_path) / "prepare_report.json").read_text())
  assert on_disk["classes"] == report.classes


def test_a_file_listed_twice_with_different_labels_names_both_lines(tmp_path):
  rows = ["a.wav,happy,1", "b.wav,sad,1", "c.wav,sad,2", "a.wav,angry,1"]
  listing = folder.list_folder(str(_folder(tmp_path / "m", rows)))
  [skip] = listing.skipped
  assert skip.files == (str(tmp_path / "m" / "a.wav"),)
  assert "rows of one take disagree" in skip.reason
  first, second = (i + 2 for i, r in enumerate(rows) if r.startswith("a.wav"))
  assert f"lines {first} and {second}" in skip.reason
  assert sorted(t.take_id for t in listing.takes) == ["b", "c"]


def test_manual_download_instructions_describe_classes_txt():
  text = folder.Folder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert folder.CLASSES_FILE in text and folder.LABELS_FILE in text
