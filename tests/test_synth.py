"""synth: the embedded corpus is RAVDESS-shaped, deterministic, decodable, has
faces the shared detector finds, and carries the emotion cues it was asked to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import parselmouth
import pytest
import soundfile

from input_pipeline import media
from input_pipeline.face import FaceDetector
from input_pipeline.naming import RAVDESS_EMOTIONS, RavdessName, parse_ravdess
from input_pipeline.synth import (FPS, HEIGHT, SAMPLE_RATE, WIDTH, generate_corpus, plan_clip,
                                  synth_clip, takes_for)
from input_pipeline.synth.audio import _f0_contour
from input_pipeline.synth.profile import CUE_FIELDS, EMOTION_CUES, cue_strength
from input_pipeline.synth.video import face_geometry


def _emotion(name: str) -> int:
  return RAVDESS_EMOTIONS.index(name) + 1


def _take(actor: int, emotion: str, intensity: int = 2, statement: int = 1,
          repetition: int = 1) -> RavdessName:
  code = _emotion(emotion)
  return RavdessName(1, 1, code, 1 if code == 1 else intensity, statement, repetition, actor)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Two runs with the same seed (different worker counts) and one with another."""
  root = tmp_path_factory.mktemp("synth")
  a = generate_corpus(root / "a", actors=2, clips_per_emotion=1, seed=0, workers=2,
                      progress=False)
  b = generate_corpus(root / "b", actors=1, clips_per_emotion=1, seed=0, workers=1,
                      progress=False)
  c = generate_corpus(root / "c", actors=1, clips_per_emotion=1, seed=1, workers=1,
                      progress=False)
  return a, b, c


def _rel(report) -> list[str]:
  return sorted(str(Path(f).relative_to(report.out_dir)) for f in report.files)


# --- layout and names ------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 4, 5, 8, 9])
def test_takes_per_emotion_follow_ravdess_order(k):
  names = takes_for(3, k)
  per_emotion = {e: [n for n in names if n.emotion == e] for e in range(1, 9)}
  for e, takes in per_emotion.items():
    n_combos = 4 if e == 1 else 8          # neutral has no strong intensity
    assert len(takes) == min(k, n_combos)
    assert len(set(takes)) == len(takes)
    # Intensity varies fastest, then statement, then repetition.
    keys = [(t.repetition, t.statement, t.intensity) for t in takes]
    assert keys == sorted(keys)
  assert per_emotion[2][0] == RavdessName(1, 1, 2, 1, 1, 1, 3)
  if k >= 2:
    assert per_emotion[2][1] == RavdessName(1, 1, 2, 2, 1, 1, 3)
    assert per_emotion[1][1] == RavdessName(1, 1, 1, 1, 2, 1, 3)
  assert len(takes_for(1, 8)) == 60        # RAVDESS speech: 60 takes per actor


def test_corpus_layout_and_names_round_trip(corpora):
  a, _, _ = corpora
  assert a.n_clips == 2 * 8
  assert len(a.files) == 2 * a.n_clips
  for f in map(Path, a.files):
    assert f.is_file() and f.stat().st_size > 0
    name = parse_ravdess(f)
    assert f.name == name.filename()
    assert f.parent.name == f"Actor_{name.actor:02d}"
    assert name.channel == 1 and name.repetition == 1 and name.statement == 1
    assert f.suffix == {1: ".mp4", 3: ".wav"}[name.modality]
  names = [parse_ravdess(f) for f in a.files]
  for actor in (1, 2):
    mine = [n for n in names if n.actor == actor]
    assert len(mine) == 16
    assert sorted(n.emotion for n in mine if n.modality == 1) == list(range(1, 9))
    # Each audio-video take has its audio-only twin with the same take id.
    assert {n.take_id for n in mine if n.modality == 1} == \
        {n.take_id for n in mine if n.modality == 3}
  leftovers = [p for p in Path(a.out_dir).rglob("*") if p.is_file()
               and str(p) not in a.files]
  assert leftovers == []                   # no temp files left behind


@pytest.mark.parametrize("kwargs", [dict(actors=0), dict(actors=25), dict(actors=2.5),
                                    dict(clips_per_emotion=0), dict(difficulty=-0.1),
                                    dict(difficulty=float("nan")), dict(workers=0)])
def test_bad_arguments_are_rejected_in_one_line(tmp_path, kwargs):
  with pytest.raises(ValueError) as exc:
    generate_corpus(tmp_path / "x", progress=False, **kwargs)
  assert "\n" not in str(exc.value)
  assert next(iter(kwargs)) in str(exc.value)
  assert not (tmp_path / "x").exists()


# --- determinism -----------------------------------------------------------------

def test_same_seed_gives_identical_files_whatever_the_worker_count(corpora):
  a, b, _ = corpora
  assert set(_rel(b)) == {r for r in _rel(a) if r.startswith("Actor_01")}
  for rel in _rel(b):
    fa, fb = Path(a.out_dir) / rel, Path(b.out_dir) / rel
    if rel.endswith(".wav"):
      assert fa.read_bytes() == fb.read_bytes()
    else:
      va, _ = media.read_video(fa)
      vb, _ = media.read_video(fb)
      np.testing.assert_array_equal(va, vb)


def test_other_seed_differs(corpora):
  a, _, c = corpora
  for rel in _rel(c):
    fa, fc = Path(a.out_dir) / rel, Path(c.out_dir) / rel
    if rel.endswith(".wav"):
      assert fa.read_bytes() != fc.read_bytes()
    else:
      va, _ = media.read_video(fa, max_frames=5)
      vc, _ = media.read_video(fc, max_frames=5)
      assert va.shape != vc.shape or np.abs(va.astype(int) - vc).mean() > 5


def test_synth_clip_is_a_pure_function_of_name_seed_and_difficulty():
  name = _take(5, "happy")
  f1, fps1, a1, sr1 = synth_clip(name, 3, 1.0)
  f2, fps2, a2, sr2 = synth_clip(name, 3, 1.0)
  np.testing.assert_array_equal(f1, f2)
  np.testing.assert_array_equal(a1, a2)
  assert (fps1, sr1) == (fps2, sr2) == (FPS, SAMPLE_RATE)
  _, _, a3, _ = synth_clip(name, 3, 2.0)
  assert not np.array_equal(a1, a3)


# --- decoding what was written ---------------------------------------------------

def test_files_decode_to_what_was_synthesised(corpora):
  a, _, _ = corpora
  seen = 0
  for f in map(Path, a.files):
    name = parse_ravdess(f)
    if name.modality != 1 or name.emotion not in (_emotion("sad"), _emotion("angry")):
      continue
    seen += 1
    plan = plan_clip(name, 0, 1.0)
    frames, fps, audio, sr = synth_clip(name, 0, 1.0)
    assert len(frames) == plan.n_frames and len(audio) == plan.n_samples
    assert len(audio) / sr == pytest.approx(len(frames) / fps, abs=1e-9)
    assert 2.5 < plan.duration < 5.0       # RAVDESS takes are about 3-4 s
    info = media.probe(f)
    assert info.has_video and info.has_audio
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height) == (WIDTH, HEIGHT) and WIDTH * 9 == HEIGHT * 16
    assert info.fps == pytest.approx(FPS)
    got, got_fps = media.read_video(f)
    assert len(got) == len(frames) and got_fps == pytest.approx(FPS)
    assert np.abs(got.astype(np.int16) - frames).mean() < 8.0   # lossy but faithful
    got_audio, got_sr = media.read_audio(f)
    assert got_sr == SAMPLE_RATE
    assert abs(len(got_audio) / got_sr - plan.duration) < 0.005
    # The wav twin: 48 kHz mono 16-bit, sample-exact length and content.
    wav = f.with_name(name.with_modality(3).filename())
    info_w = soundfile.info(str(wav))
    assert (info_w.samplerate, info_w.channels, info_w.subtype) == (48000, 1, "PCM_16")
    pcm, _ = media.read_audio(wav)
    assert len(pcm) == plan.n_samples
    np.testing.assert_allclose(pcm, audio, atol=1.0 / 32767 + 1e-6)
  assert seen == 4


# --- faces -----------------------------------------------------------------------

def test_face_detector_finds_the_synthetic_faces():
  detector = FaceDetector()
  hits, total, worst = 0, 0, 1.0
  for actor in (1, 8, 13, 16, 20):
    for emotion in range(1, 9):
      name = RavdessName(1, 1, emotion, 1 if emotion == 1 else 2, 1 + actor % 2, 1, actor)
      frames, _, _, _ = synth_clip(name, 0, 1.0)
      found = [detector.detect(fr) is not None for fr in frames[::12]]
      hits += sum(found)
      total += len(found)
      worst = min(worst, np.mean(found))
  assert hits / total >= 0.95
  assert worst >= 0.5       # no emotion makes a face unrecognisable


def test_face_box_covers_the_rendered_head():
  detector = FaceDetector()
  plan = plan_clip(_take(7, "neutral"), 0, 1.0)
  frames, _, _, _ = synth_clip(plan.name, 0, 1.0)
  x, y, w, h = detector.detect(frames[len(frames) // 2])
  # The head centre moves by a few pixels at most.
  assert abs(x + w / 2 - plan.actor.cx) < 0.35 * plan.actor.face_w
  assert abs(y + h / 2 - plan.actor.cy) < 0.35 * plan.actor.face_h
  assert 0.6 * plan.actor.face_w < w / 2 < 1.6 * plan.actor.face_w


# --- emotion cues ----------------------------------------------------------------

# Pitch is measured with Praat's autocorrelation tracker (Boersma 1993, through
# parselmouth), the phonetics field's reference, and independent of the
# synthesiser's own code. It replaced librosa.yin, whose numba gufunc segfaulted
# now and then on a fresh venv, even in a clean subprocess; Praat is compiled C++.
_HOP_S = 0.016      # analysis step, seconds
_RMS_WINDOW_S = 0.064


def _voiced_stats(clips: dict[str, np.ndarray], sr: int) -> dict[str, tuple[float, float]]:
  """Per clip: (median pitch in Hz over loud voiced frames, rms in dB over loud
  frames); loud is rms above 0.3 x the clip's loudest frame."""
  out = {}
  half = int(round(_RMS_WINDOW_S * sr)) // 2
  for name, y in clips.items():
    y = np.asarray(y, dtype=np.float64)
    pitch = parselmouth.Sound(y, sampling_frequency=sr).to_pitch_ac(
        time_step=_HOP_S, pitch_floor=60.0, pitch_ceiling=700.0)
    f0 = pitch.selected_array["frequency"]          # 0 where Praat finds no voicing
    centres = np.round(pitch.xs() * sr).astype(np.int64)
    rms = np.array([np.sqrt(np.mean(y[max(0, c - half):c + half] ** 2)) for c in centres])
    loud = rms > 0.3 * rms.max()
    voiced = loud & (f0 > 0)
    assert voiced.sum() >= 0.5 * loud.sum(), f"{name}: Praat found voicing in only " \
        f"{voiced.sum()} of {loud.sum()} loud frames"
    out[name] = (float(np.median(f0[voiced])), float(20 * np.log10(rms[loud].mean())))
  return out


@pytest.mark.parametrize("actor", [3, 8])
def test_voice_carries_the_planned_pitch_and_energy(actor):
  plans = {e: plan_clip(_take(actor, e), 0, 1.0) for e in ("angry", "sad", "happy")}
  measured = _voiced_stats({e: synth_clip(p.name, 0, 1.0)[2] for e, p in plans.items()},
                           SAMPLE_RATE)
  for e, p in plans.items():
    # The planned contour (level, accents, declination, final movement) over the
    # loud part of the take; the measured median pitch must land near it.
    t = np.arange(p.n_samples) / SAMPLE_RATE
    contour = _f0_contour(p, t, np.random.default_rng(0))
    planned = np.median(contour[p.envelope(t) > 0.5])
    assert abs(12 * np.log2(measured[e][0] / planned)) < 1.0
  # Orderings the plan asks for must survive synthesis and measurement.
  pairs = [("angry", "sad"), ("happy", "sad")]
  for hi, lo in pairs:
    assert (plans[hi].f0 > plans[lo].f0) == (measured[hi][0] > measured[lo][0])
    assert (plans[hi].cues["energy_db"] > plans[lo].cues["energy_db"]) == \
        (measured[hi][1] > measured[lo][1])
    speech = lambda p: p.syllables[-1][0] + p.syllables[-1][1] - p.syllables[0][0]
    assert (plans[hi].cues["rate"] > plans[lo].cues["rate"]) == \
        (speech(plans[hi]) < speech(plans[lo]))


def test_table_directions_reach_every_actor_at_low_difficulty():
  """At difficulty 0 the emotion effect dominates actor style and clip noise, so
  the table's directions hold for each actor's plans."""
  field = {f: i for i, f in enumerate(CUE_FIELDS)}
  for actor in range(1, 25):
    p = {e: plan_clip(_take(actor, e), 0, 0.0) for e in RAVDESS_EMOTIONS}
    assert (p["angry"].f0 > p["sad"].f0) == \
        (EMOTION_CUES["angry"][field["pitch_st"]] > EMOTION_CUES["sad"][field["pitch_st"]])
    assert (p["angry"].cues["energy_db"] > p["sad"].cues["energy_db"]) == \
        (EMOTION_CUES["angry"][field["energy_db"]] > EMOTION_CUES["sad"][field["energy_db"]])
    geo = {e: face_geometry(q, 0.5, 1.0) for e, q in p.items()}
    assert (geo["happy"]["mouth_curve"] > geo["sad"]["mouth_curve"]) == \
        (EMOTION_CUES["happy"][field["mouth_curve"]] > EMOTION_CUES["sad"][field["mouth_curve"]])
    assert (geo["surprised"]["brow_raise"] > geo["angry"]["brow_raise"]) == \
        (EMOTION_CUES["surprised"][field["brow_raise"]]
         > EMOTION_CUES["angry"][field["brow_raise"]])


def test_difficulty_shrinks_emotion_effects_relative_to_actors():
  def spread(difficulty: float) -> float:
    gaps = []
    for actor in range(1, 25):
      hi = plan_clip(_take(actor, "angry"), 0, difficulty).f0
      lo = plan_clip(_take(actor, "sad"), 0, difficulty).f0
      gaps.append(12 * np.log2(hi / lo))
    return float(np.mean(gaps))
  assert cue_strength(0.0) > cue_strength(1.0) > cue_strength(3.0) > 0
  assert spread(0.0) > spread(1.0) > spread(3.0)
  # Actor traits do not depend on difficulty.
  a0 = plan_clip(_take(4, "calm"), 0, 0.0).actor
  a3 = plan_clip(_take(4, "calm"), 0, 3.0).actor
  assert dataclasses.asdict(a0).keys() == dataclasses.asdict(a3).keys()
  assert (a0.f0, a0.skin, a0.face_w) == (a3.f0, a3.skin, a3.face_w)


def test_statements_differ_in_syllable_pattern():
  one = plan_clip(_take(2, "calm", statement=1), 0, 1.0).syllables
  two = plan_clip(_take(2, "calm", statement=2), 0, 1.0).syllables
  assert [s[2:4] for s in one] != [s[2:4] for s in two]


def test_mouth_moves_with_the_voice():
  """Mouth opening (dark pixels in the mouth region) follows the audio envelope."""
  plan = plan_clip(_take(9, "angry"), 0, 1.0)
  frames, fps, audio, sr = synth_clip(plan.name, 0, 1.0)
  a, b = plan.actor.face_w, plan.actor.face_h
  x0, x1 = int(plan.actor.cx - 0.6 * a), int(plan.actor.cx + 0.6 * a)
  y0, y1 = int(plan.actor.cy + 0.35 * b), int(plan.actor.cy + 0.85 * b)
  # The open mouth is darker than skin and lips, so the region darkens as it opens.
  dark = -frames[:, y0:y1, x0:x1].astype(np.float32).mean(axis=(1, 2, 3))
  per_frame = sr // int(fps)
  loud = np.sqrt((audio[:len(frames) * per_frame].reshape(len(frames), -1) ** 2).mean(1))
  assert np.corrcoef(dark, loud)[0, 1] > 0.5
