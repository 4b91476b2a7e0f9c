"""RAVDESS and CREMA-D file names: parse/format round trips and strict rejection."""

import itertools

import pytest

from input_pipeline import naming
from input_pipeline.errors import InputError


def all_ravdess_speech_names():
  for modality, emotion, intensity, statement, repetition, actor in itertools.product(
      (1, 2, 3), range(1, 9), (1, 2), (1, 2), (1, 2), range(1, 25)):
    if emotion == 1 and intensity == 2:
      continue
    yield naming.RavdessName(modality, 1, emotion, intensity, statement, repetition, actor)


def test_ravdess_round_trip_every_speech_name():
  names = list(all_ravdess_speech_names())
  # RAVDESS speech: 60 takes per actor and modality.
  assert len(names) == 3 * 24 * 60
  for name in names:
    text = name.filename()
    assert naming.parse_ravdess(f"/data/Actor_{name.actor:02d}/{text}") == name
    assert naming.format_ravdess(*[getattr(name, f) for f in (
        "modality", "channel", "emotion", "intensity", "statement", "repetition",
        "actor")]) == text


def test_ravdess_fields_and_take_id():
  name = naming.parse_ravdess("01-01-06-02-01-02-19.mp4")
  assert name.emotion_name == "fearful" and name.label == 5
  assert name.sex == "male" and naming.parse_ravdess("03-01-01-01-01-01-02.wav").sex == "female"
  # The audio-only and audio-video files of one take share the take id.
  assert name.take_id == naming.parse_ravdess("03-01-06-02-01-02-19.wav").take_id
  assert name.take_id != naming.parse_ravdess("03-01-06-02-01-01-19.wav").take_id


@pytest.mark.parametrize("bad, fragment", [
    ("01-01-09-01-01-01-01.mp4", "emotion"),
    ("01-01-01-02-01-01-01.mp4", "neutral"),
    ("04-01-03-01-01-01-01.mp4", "modality"),
    ("01-01-03-01-03-01-01.mp4", "statement"),
    ("01-01-03-01-01-01.mp4", "pattern"),
    ("holiday_video.mp4", "pattern"),
])
def test_ravdess_rejects_bad_names_naming_the_file(bad, fragment):
  with pytest.raises(InputError) as err:
    naming.parse_ravdess(f"/x/{bad}")
  message = str(err.value)
  assert message.startswith(f"/x/{bad}: ") and fragment in message
  assert "\n" not in message


def test_crema_round_trip_and_rejection():
  name = naming.parse_crema("/c/VideoFlash/1001_DFA_ANG_XX.flv")
  assert (name.actor, name.sentence, name.emotion, name.level) == (1001, "DFA", "ANG", "XX")
  assert name.stem == "1001_DFA_ANG_XX"
  assert naming.CREMA_EMOTION_CODES[name.label] == "ANG"
  for bad in ("1001_DFA_XYZ_XX.wav", "1001_QQQ_ANG_XX.wav", "1001-DFA-ANG-XX.wav"):
    with pytest.raises(InputError, match=bad):
      naming.parse_crema(bad)
