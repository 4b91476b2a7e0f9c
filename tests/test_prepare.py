"""TFDS builders and `prepare`: counts, labels, actors, takes, real fixtures, the
skip report and interrupted runs."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from input_pipeline import naming
from input_pipeline.builders.base import CACHE_PREFIX
from input_pipeline.errors import InputError
from input_pipeline.loader import open_prepared
from input_pipeline.prepare import prepare, prepared_path

from conftest import SYNTH_ACTORS, SYNTH_CLIPS_PER_EMOTION

REPO = Path(__file__).resolve().parents[1]


def _all_examples(builder):
  for split in sorted(builder.info.splits):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      yield split, source[i]


def test_synth_builder_counts_labels_actors_and_takes(prepared):
  builder = open_prepared(str(prepared("mfcc")), "ravdess", "mfcc")
  assert sorted(builder.info.splits) == [f"actor_{a:02d}" for a in range(1, SYNTH_ACTORS + 1)]
  per_actor = 8 * SYNTH_CLIPS_PER_EMOTION  # 8 emotions, K clips each (K <= 4).
  seen = set()
  for split, ex in _all_examples(builder):
    name = naming.parse_ravdess("03-" + ex["take_id"].decode() + ".wav")
    assert split == f"actor_{name.actor:02d}" and ex["actor"] == name.actor
    assert ex["label"] == name.label and ex["emotion"].decode() == name.emotion_name
    assert ex["sex"].decode() == name.sex
    # One example per take, carrying both of its files.
    sources = ex["source_files"].decode().split(";")
    assert sorted(s[:2] for s in sources) == ["01", "03"]
    assert all(naming.parse_ravdess(s).take_id == name.take_id for s in sources)
    assert ex["mfcc"].shape == (180, 20) and np.isfinite(ex["mfcc"]).all()
    seen.add(name.take_id)
  assert len(seen) == SYNTH_ACTORS * per_actor


def test_synth_video_set_finds_faces(prepared):
  builder = open_prepared(str(prepared("frames3d_gray_80x70x30")), "ravdess",
                          "frames3d_gray_80x70x30")
  rates = [ex["face_hit_rate"] for _, ex in _all_examples(builder)]
  assert len(rates) == SYNTH_ACTORS * 8 * SYNTH_CLIPS_PER_EMOTION
  assert np.mean(rates) >= 0.95
  _, ex = next(_all_examples(builder))
  assert ex["frames3d"].shape == (30, 80, 70, 1) and ex["frames3d"].dtype == np.uint8
  assert ex["frames3d"].std() > 5  # a real image, not padding


def test_real_ravdess_fixture_audio(tmp_path, fixtures_dir):
  report = prepare("ravdess", str(fixtures_dir / "ravdess"), str(tmp_path), "mfcc",
                   workers=1, progress=False)
  wavs = sorted((fixtures_dir / "ravdess").rglob("*.wav"))
  assert report.found == len(wavs) + 1 and report.prepared == len(wavs)
  [skip] = report.skipped
  assert skip["files"][0].endswith("01-01-08-02-01-01-19.mp4")
  assert "no audio" in skip["reason"]
  builder = open_prepared(str(tmp_path), "ravdess", "mfcc")
  for _, ex in _all_examples(builder):
    assert np.isfinite(ex["mfcc"]).all() and ex["mfcc_mask"].any()


def test_real_ravdess_fixture_video_without_audio(tmp_path, fixtures_dir):
  """The mp4 with no audio track still serves a video feature set, flagged as
  having no audio; the audio-only wavs are skipped with a reason."""
  report = prepare("ravdess", str(fixtures_dir / "ravdess"), str(tmp_path), "frames2d_64",
                   workers=1, progress=False)
  assert report.prepared == 1 and report.prepared + len(report.skipped) == report.found
  assert all("no video" in s["reason"] for s in report.skipped)
  builder = open_prepared(str(tmp_path), "ravdess", "frames2d_64")
  [(split, ex)] = list(_all_examples(builder))
  assert split == "actor_19" and not ex["has_audio"] and ex["has_video"]
  assert ex["face_hit_rate"] > 0.5


def test_audio_set_records_a_truncated_mp4_beside_a_good_wav_as_no_video(tmp_path, synth_corpus):
  """The audit's case: for `mfcc`, a take whose 01- mp4 is cut short but whose 03-
  wav is good was prepared with has_video=True. It records what was usable now."""
  from input_pipeline import media
  corpus = tmp_path / "corpus" / "Actor_01"
  corpus.mkdir(parents=True)
  wavs = sorted((synth_corpus / "Actor_01").glob("03-*.wav"))[:2]
  for wav in wavs:
    shutil.copy(wav, corpus)
    mp4 = synth_corpus / "Actor_01" / ("01" + wav.name[2:-4] + ".mp4")
    # Index first, so that a header-only probe of the cut file still passes.
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(mp4), "-c", "copy",
                    "-movflags", "+faststart", str(corpus / mp4.name)], check=True)
  cut = corpus / ("01" + wavs[0].name[2:-4] + ".mp4")
  data = cut.read_bytes()
  cut.write_bytes(data[:len(data) // 2])
  assert media.probe(cut).has_video
  report = prepare("ravdess", str(tmp_path / "corpus"), str(tmp_path / "data"), "mfcc",
                   workers=1, progress=False)
  assert report.prepared == 2 and not report.skipped
  has_video = {ex["take_id"].decode(): bool(ex["has_video"])
               for _, ex in _all_examples(open_prepared(str(tmp_path / "data"), "ravdess",
                                                        "mfcc"))}
  take = lambda wav: wav.name[3:-4]  # noqa: E731
  assert has_video == {take(wavs[0]): False, take(wavs[1]): True}, has_video


def test_real_crema_fixture_audio_video(tmp_path, fixtures_dir):
  report = prepare("crema_d", str(fixtures_dir / "crema_d"), str(tmp_path), "keyframe_mel",
                   workers=1, progress=False)
  assert (report.found, report.prepared, report.skipped) == (6, 6, [])
  builder = open_prepared(str(tmp_path), "crema_d", "keyframe_mel")
  names = builder.info.features["label"].names
  for _, ex in _all_examples(builder):
    stem = ex["take_id"].decode()
    assert names[ex["label"]] == naming.CREMA_EMOTIONS[stem.split("_")[2]]
    assert sorted(os.path.splitext(f)[1] for f in ex["source_files"].decode().split(";")) \
        == [".flv", ".wav"]
    assert ex["has_audio"] and ex["has_video"] and ex["face_hit_rate"] > 0.5
    assert np.isfinite(ex["mel_image"]).all()


def test_skip_report_lists_every_bad_file(tmp_path, synth_corpus, caplog):
  import logging
  import soundfile as sf
  corpus = tmp_path / "corpus" / "Actor_01"
  corpus.mkdir(parents=True)
  good = sorted((synth_corpus / "Actor_01").glob("03-*.wav"))[:3]
  for f in good:
    shutil.copy(f, corpus)
  bad = {
      "03-01-03-02-01-01-01.wav": "corrupt",     # random bytes
      "03-01-04-02-01-01-01.wav": "truncated",   # cut inside the header
      "03-01-05-02-01-01-01.wav": "empty audio",  # valid header, no samples
      "03-01-99-01-01-01-01.wav": "bad name",
      "my_recording.wav": "bad name",
  }
  rng = np.random.default_rng(0)
  (corpus / "03-01-03-02-01-01-01.wav").write_bytes(rng.bytes(5000))
  (corpus / "03-01-04-02-01-01-01.wav").write_bytes(good[0].read_bytes()[:30])
  sf.write(corpus / "03-01-05-02-01-01-01.wav", np.zeros((0,), np.float32), 48000,
           subtype="PCM_16")
  shutil.copy(good[0], corpus / "03-01-99-01-01-01-01.wav")
  shutil.copy(good[0], corpus / "my_recording.wav")
  (corpus / "notes.txt").write_text("not media")
  with caplog.at_level(logging.WARNING):
    report = prepare("ravdess", str(tmp_path / "corpus"), str(tmp_path / "data"), "mfcc",
                     workers=1, progress=False)
  # Files that fail to decode are named as they are skipped; bad names, found
  # before decoding, are only counted in the summary.
  warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
  decode_failures = [n for n, why in bad.items() if why != "bad name"]
  assert sorted(warned) == sorted(
      f"skipping {corpus / n}: " + next(s["reason"] for s in report.skipped
                                         if s["files"] == [str(corpus / n)])
      for n in decode_failures)
  summary = report.summary()
  assert f"prepared {len(good)}, skipped {len(bad)}, ignored 1 " in summary
  assert str(Path(report.data_path) / "prepare_report.json") in summary
  assert report.found == len(good) + len(bad)
  assert report.prepared == len(good)
  assert report.prepared + len(report.skipped) == report.found
  skipped_files = {os.path.basename(s["files"][0]): s["reason"] for s in report.skipped}
  assert set(skipped_files) == set(bad)
  # Each entry names the file its reason is about (here the take's one file).
  assert all(s["file"] == s["files"][0] for s in report.skipped)
  for reason in skipped_files.values():
    assert reason and "\n" not in reason
  assert [os.path.basename(p) for p in report.ignored_files] == ["notes.txt"]
  on_disk = Path(report.data_path) / "prepare_report.json"
  assert on_disk.is_file()


def test_interrupted_prepare_never_reads_as_complete(tmp_path, synth_corpus):
  import re
  import threading
  data_dir = tmp_path / "data"
  cmd = [sys.executable, "-m", "avjax", "prepare", "--dataset", "ravdess", "--manual-dir",
         str(synth_corpus), "--data-dir", str(data_dir), "--features", "stip",
         "--workers", "1"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)
  done = [0]

  def watch():  # The features progress bar: clips computed (and handed to TFDS) so far.
    for chunk in iter(lambda: proc.stderr.read1(4096), b""):
      for m in re.finditer(rb"features:[^\r\n]*?(\d+)/\d+", chunk):
        done[0] = max(done[0], int(m.group(1)))

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  deadline = time.time() + 120
  # Kill once features are being computed and written, i.e. mid-way through the work.
  while time.time() < deadline and proc.poll() is None and done[0] < 2:
    time.sleep(0.2)
  assert proc.poll() is None, "prepare finished before it could be interrupted"
  assert done[0] >= 2, "no progress seen before the deadline"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  watcher.join(5)
  with pytest.raises(InputError, match="not prepared"):
    prepared_path(str(data_dir), "ravdess", "stip")
  report = prepare("ravdess", str(synth_corpus), str(data_dir), "stip", workers=1,
                   progress=False)
  assert report.prepared == report.found == SYNTH_ACTORS * 8 * SYNTH_CLIPS_PER_EMOTION
  assert not list(data_dir.glob(CACHE_PREFIX + "*"))
  assert prepared_path(str(data_dir), "ravdess", "stip")


def test_unknown_feature_set_and_missing_dir_are_one_line_errors(tmp_path, synth_corpus):
  with pytest.raises(InputError, match="unknown feature set|nosuch"):
    prepare("ravdess", str(synth_corpus), str(tmp_path), "nosuch")
  with pytest.raises(InputError, match="does not exist"):
    prepare("ravdess", str(tmp_path / "missing"), str(tmp_path), "mfcc")
  a_file = tmp_path / "corpus.zip"
  a_file.write_bytes(b"PK")
  with pytest.raises(InputError, match="is a file, not a directory") as err:
    prepare("ravdess", str(a_file), str(tmp_path), "mfcc")
  assert err.value.path == str(a_file)


def test_prepare_prints_no_download_notices(tmp_path, synth_corpus, caplog, capsys):
  """avjax downloads nothing: TFDS's "Downloading and preparing" line and its
  "Variant folder ... has no dataset_info.json" warning are dropped; every other
  warning (here a skipped file) still shows."""
  import logging
  corpus = tmp_path / "corpus" / "Actor_01"
  corpus.mkdir(parents=True)
  shutil.copy(sorted((synth_corpus / "Actor_01").glob("03-*.wav"))[0], corpus)
  bad = corpus / "03-01-03-02-01-01-01.wav"
  bad.write_bytes(b"RIFF not really a wav")
  with caplog.at_level(logging.INFO):
    report = prepare("ravdess", str(tmp_path / "corpus"), str(tmp_path / "data"), "mfcc",
                     workers=1, progress=False)
  assert report.prepared == 1
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "dataset_info.json" in m]
  assert [m for m in messages if m.startswith(f"skipping {bad}: ")]
  out = capsys.readouterr()
  assert "Downloading and preparing" not in out.out + out.err
  assert "downloaded and prepared" not in out.out + out.err
  # Outside prepare, the same records pass.
  absl = logging.getLogger("absl")
  with caplog.at_level(logging.WARNING):
    absl.warning("Variant folder %s has no %s", tmp_path, "dataset_info.json")
  assert caplog.records[-1].getMessage().endswith("dataset_info.json")


def test_folder_builder_reads_labels_csv(tmp_path, synth_corpus, fixtures_dir):
  """A user's own clips: mixed containers, a take made of two files, and rows
  that cannot be used, each reported."""
  manual = tmp_path / "manual"
  clips = manual / "clips"
  clips.mkdir(parents=True)
  mp4s = sorted((synth_corpus / "Actor_01").glob("01-*.mp4"))[:2]
  shutil.copy(mp4s[0], clips / "anna_happy.mp4")
  shutil.copy(mp4s[1], clips / "anna_sad.mp4")
  wav = sorted((synth_corpus / "Actor_01").glob("03-*.wav"))[1]
  shutil.copy(wav, clips / "anna_sad.wav")  # Same take as anna_sad.mp4.
  flv = sorted((fixtures_dir / "crema_d" / "VideoFlash").glob("*ANG*.flv"))[0]
  shutil.copy(flv, clips / "ben_angry.flv")
  (clips / "stray.mp4").write_bytes(b"")  # Not listed: reported as ignored.
  rows = ["file,label,actor,sex,take",
          "clips/anna_happy.mp4,happy,1,female,",
          "clips/anna_sad.mp4,sad,1,female,anna_sad",
          "clips/anna_sad.wav,sad,1,female,anna_sad",
          "clips/ben_angry.flv,Angry,2,male,",
          "clips/missing.mp4,calm,2,male,",  # calm's only row: calm is no class.
          "clips/anna_happy.mp4,happy,abc,female,y",
          "clips/ben_angry.flv,sad,2,male,conflict",
          "clips/anna_sad.wav,happy,2,male,conflict"]
  (manual / "labels.csv").write_text("\n".join(rows) + "\n")
  report = prepare("folder", str(manual), str(tmp_path / "data"), "mfcc", workers=1,
                   progress=False)
  assert report.prepared == 3 and len(report.skipped) == 3
  assert report.prepared + len(report.skipped) == report.found
  reasons = " | ".join(s["reason"] for s in report.skipped)
  for expected in ("not found", "not an integer", "rows of one take disagree"):
    assert expected in reasons
  assert [os.path.basename(p) for p in report.ignored_files] == ["stray.mp4"]
  builder = open_prepared(str(tmp_path / "data"), "folder", "mfcc")
  names = builder.info.features["label"].names
  # The labels of the rows used; known emotions keep RAVDESS order.
  assert list(names) == ["happy", "sad", "angry"]
  assert report.classes == [{"name": n, "prepared": 1} for n in names]
  got = {ex["take_id"].decode(): (names[ex["label"]], int(ex["actor"]),
                                  ex["source_files"].decode())
         for _, ex in _all_examples(builder)}
  assert got["anna_sad"] == ("sad", 1, "anna_sad.mp4;anna_sad.wav")
  assert got["clips__ben_angry"][:2] == ("angry", 2)
  assert got["clips__anna_happy"][:2] == ("happy", 1)


def test_all_skipped_still_writes_the_reasons(tmp_path, fixtures_dir):
  """RAVDESS fixtures hold wavs without video and an mp4 without audio, so an
  audio-visual set can use none of them: the run fails, but says why for each."""
  import json
  with pytest.raises(InputError, match="every clip was skipped") as err:
    prepare("ravdess", str(fixtures_dir / "ravdess"), str(tmp_path), "keyframe_mel",
            workers=1, progress=False)
  failed = tmp_path / "ravdess" / "keyframe_mel" / "prepare_report.failed.json"
  assert str(failed) in str(err.value)
  report = json.loads(failed.read_text())
  media = list((fixtures_dir / "ravdess").rglob("*.wav")) + list(
      (fixtures_dir / "ravdess").rglob("*.mp4"))
  assert report["prepared"] == 0 and len(report["skipped"]) == report["found"] == len(media)
  with pytest.raises(InputError, match="not prepared"):
    prepared_path(str(tmp_path), "ravdess", "keyframe_mel")


def _corpus_with_broken_takes(tmp_path, synth_corpus) -> Path:
  """3 actors' wavs; actor 2's first take is corrupt (its split is settled by a
  later take, whose result arrives out of order), actor 3's every take is."""
  root = tmp_path / "corpus"
  for actor in (1, 2, 3):
    src = sorted((synth_corpus / f"Actor_{actor:02d}").glob("03-*.wav"))[:4]
    dst = root / f"Actor_{actor:02d}"
    dst.mkdir(parents=True)
    for i, f in enumerate(src):
      if actor == 3 or (actor == 2 and i == 0):
        (dst / f.name).write_bytes(b"RIFF not really a wav")
      else:
        shutil.copy(f, dst / f.name)
  return root


@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_examples_equal_compute_example(tmp_path, synth_corpus, monkeypatch, workers):
  """Features computed in the pool while TFDS writes are the examples that
  `compute_example` gives for each take, whatever the order they arrive in; an
  actor with no example has no split, and every take is accounted for."""
  from input_pipeline.builders import base
  from input_pipeline.prepare import make_builder
  if workers > 1:  # A pool even for a handful of audio clips.
    monkeypatch.setattr(base, "worker_count", lambda requested, n, modalities: requested)
  corpus = _corpus_with_broken_takes(tmp_path, synth_corpus)
  data = tmp_path / "data"
  report = prepare("ravdess", str(corpus), str(data), "mfcc", workers=workers,
                   progress=False)
  assert report.found == 12 and report.prepared == 7 and len(report.skipped) == 5
  assert not list(data.glob(CACHE_PREFIX + "*"))
  takes = make_builder("ravdess", str(tmp_path), "mfcc", progress=False).discover(
      str(corpus)).takes
  want = {}
  for take in takes:
    key, example = base.compute_example(take, "mfcc")
    if not isinstance(example, base.Skip):
      want[key] = example
  builder = open_prepared(str(data), "ravdess", "mfcc")
  assert sorted(builder.info.splits) == ["actor_01", "actor_02"]
  got = {}
  for _, ex in _all_examples(builder):
    key = ex["take_id"].decode() if isinstance(ex["take_id"], bytes) else ex["take_id"]
    got[key] = ex
  assert sorted(got) == sorted(want)
  for key, ex in want.items():
    for field, value in ex.items():
      stored = got[key][field]
      if isinstance(stored, bytes):
        stored = stored.decode()
      if isinstance(value, str):
        assert stored == value, (key, field)
      else:
        np.testing.assert_array_equal(np.asarray(stored), np.asarray(value), err_msg=field)
