"""The builders' Apache Beam path, on the DirectRunner: it must write what the local
path writes, and account for every clip, including those that fail inside the
pipeline (where the local pool's skip bookkeeping does not exist)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from input_pipeline.errors import InputError
from input_pipeline.loader import open_prepared
from input_pipeline.prepare import prepare


def _by_take(builder) -> dict[str, tuple[str, dict]]:
  out = {}
  for split in sorted(builder.info.splits):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      ex = source[i]
      out[ex["take_id"].decode()] = (split, ex)
  return out


def test_direct_runner_matches_local_path(tmp_path, synth_corpus, prepared):
  report = prepare("ravdess", str(synth_corpus), str(tmp_path / "data"), "mfcc",
                   workers=1, progress=False, beam_runner="DirectRunner")
  assert report.prepared + len(report.skipped) == report.found
  assert report.skipped == []
  beam_builder = open_prepared(str(tmp_path / "data"), "ravdess", "mfcc")
  local_builder = open_prepared(str(prepared("mfcc")), "ravdess", "mfcc")
  assert ({n: s.num_examples for n, s in beam_builder.info.splits.items()}
          == {n: s.num_examples for n, s in local_builder.info.splits.items()})
  beam_ex, local_ex = _by_take(beam_builder), _by_take(local_builder)
  assert sorted(beam_ex) == sorted(local_ex) and len(beam_ex) == report.prepared
  for take, (split, ex) in beam_ex.items():
    local_split, want = local_ex[take]
    assert split == local_split
    assert sorted(ex) == sorted(want)
    for key in ex:
      np.testing.assert_array_equal(ex[key], want[key], err_msg=f"{take}/{key}")
  # The scratch directory for skip records does not outlive the build.
  assert not [p for p in os.listdir(tmp_path / "data") if p.startswith(".avjax")]


def _small_corpus(root, synth_corpus, actors=(1, 2), takes=2):
  for actor in actors:
    dst = root / f"Actor_{actor:02d}"
    dst.mkdir(parents=True)
    for wav in sorted((synth_corpus / f"Actor_{actor:02d}").glob("03-*.wav"))[:takes]:
      shutil.copy(wav, dst)
  return root


def test_skips_inside_and_before_the_pipeline_are_reported(tmp_path, synth_corpus):
  import soundfile as sf
  corpus = _small_corpus(tmp_path / "corpus", synth_corpus)
  actor_01 = corpus / "Actor_01"
  # Random bytes: refused by the up-front probe, never sent to the pipeline.
  (actor_01 / "03-01-03-02-01-01-01.wav").write_bytes(np.random.default_rng(0).bytes(5000))
  # A valid header with no samples: passes the probe, fails in the pipeline.
  sf.write(actor_01 / "03-01-05-02-01-01-01.wav", np.zeros((0,), np.float32), 48000,
           subtype="PCM_16")
  report = prepare("ravdess", str(corpus), str(tmp_path / "data"), "mfcc", workers=1,
                   progress=False, beam_runner="DirectRunner",
                   beam_options={"direct_num_workers": "1"})
  assert (report.found, report.prepared, len(report.skipped)) == (6, 4, 2)
  reasons = {os.path.basename(s["files"][0]): s["reason"] for s in report.skipped}
  assert set(reasons) == {"03-01-03-02-01-01-01.wav", "03-01-05-02-01-01-01.wav"}
  assert "not a readable media file" in reasons["03-01-03-02-01-01-01.wav"]
  assert "no samples" in reasons["03-01-05-02-01-01-01.wav"]
  assert all(s["take"] for s in report.skipped)
  builder = open_prepared(str(tmp_path / "data"), "ravdess", "mfcc")
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == {
      "actor_01": 2, "actor_02": 2}


def test_actor_whose_every_take_fails_in_the_pipeline_stops_the_build(
    tmp_path, synth_corpus):
  """The residual case of declaring splits before the pipeline runs: a clear error,
  and nothing that reads as a complete dataset."""
  import soundfile as sf
  corpus = _small_corpus(tmp_path / "corpus", synth_corpus, actors=(1,), takes=1)
  (corpus / "Actor_02").mkdir()
  sf.write(corpus / "Actor_02" / "03-01-05-02-01-01-02.wav", np.zeros((0,), np.float32),
           48000, subtype="PCM_16")
  with pytest.raises(InputError, match="every take of actor_02"):
    prepare("ravdess", str(corpus), str(tmp_path / "data"), "mfcc", workers=1,
            progress=False, beam_runner="DirectRunner")
  assert not (tmp_path / "data" / "ravdess" / "mfcc" / "1.0.0" / "dataset_info.json").exists()
