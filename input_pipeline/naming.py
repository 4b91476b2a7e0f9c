"""File-name schemes of the corpora: RAVDESS `MM-VV-EE-II-SS-RR-AA` and CREMA-D
`AAAA_SSS_EEE_LL`. Parsing is strict: a name that matches no pattern raises
`InputError` naming the file, so a stray file is reported rather than mislabelled.
"""

from __future__ import annotations

import dataclasses
import os
import re

from input_pipeline.errors import InputError

# RAVDESS emotion codes 01..08, in code order. Class index = code - 1.
RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust",
                    "surprised")
RAVDESS_MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
RAVDESS_CHANNELS = {1: "speech", 2: "song"}
RAVDESS_INTENSITIES = {1: "normal", 2: "strong"}
RAVDESS_STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
# Song has no disgust or surprised.
RAVDESS_SONG_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful")

_RAVDESS_RE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


@dataclasses.dataclass(frozen=True)
class RavdessName:
  """The seven fields of a RAVDESS file name, as integers (codes as in the corpus)."""
  modality: int      # 1 audio-video, 2 video-only, 3 audio-only
  channel: int       # 1 speech, 2 song
  emotion: int       # 1..8, see RAVDESS_EMOTIONS
  intensity: int     # 1 normal, 2 strong
  statement: int     # 1 or 2
  repetition: int    # 1 or 2
  actor: int         # 1..24

  def __post_init__(self):
    problems = []
    if self.modality not in RAVDESS_MODALITIES:
      problems.append(f"modality {self.modality:02d} not in 01-03")
    if self.channel not in RAVDESS_CHANNELS:
      problems.append(f"vocal channel {self.channel:02d} not in 01-02")
    if not 1 <= self.emotion <= 8:
      problems.append(f"emotion {self.emotion:02d} not in 01-08")
    if self.intensity not in RAVDESS_INTENSITIES:
      problems.append(f"intensity {self.intensity:02d} not in 01-02")
    elif self.emotion == 1 and self.intensity != 1:
      problems.append("neutral has only normal intensity (01)")
    if self.statement not in (1, 2):
      problems.append(f"statement {self.statement:02d} not in 01-02")
    if self.repetition not in (1, 2):
      problems.append(f"repetition {self.repetition:02d} not in 01-02")
    if not 1 <= self.actor <= 99:
      problems.append(f"actor {self.actor:02d} not in 01-99")
    if problems:
      raise ValueError("; ".join(problems))

  @property
  def stem(self) -> str:
    return "-".join(f"{v:02d}" for v in dataclasses.astuple(self))

  @property
  def emotion_name(self) -> str:
    return RAVDESS_EMOTIONS[self.emotion - 1]

  @property
  def label(self) -> int:
    """0-based class index over the 8 RAVDESS emotions."""
    return self.emotion - 1

  @property
  def sex(self) -> str:
    """RAVDESS convention: odd actors are male, even actors female."""
    return "male" if self.actor % 2 else "female"

  @property
  def take_id(self) -> str:
    """Identifies the take across modalities: the `01-`, `02-` and `03-` files of
    one take share it, so a split can never separate them."""
    return "-".join(f"{v:02d}" for v in dataclasses.astuple(self)[1:])

  def with_modality(self, modality: int) -> "RavdessName":
    return dataclasses.replace(self, modality=modality)

  def filename(self, ext: str | None = None) -> str:
    if ext is None:
      ext = ".wav" if self.modality == 3 else ".mp4"
    return self.stem + ext


def parse_ravdess(path: str | os.PathLike) -> RavdessName:
  """Parses a RAVDESS path or file name; raises InputError if it is not one."""
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  m = _RAVDESS_RE.match(stem)
  if not m:
    raise InputError(path, "name does not match the RAVDESS pattern MM-VV-EE-II-SS-RR-AA")
  try:
    return RavdessName(*(int(g) for g in m.groups()))
  except ValueError as e:
    raise InputError(path, f"not a valid RAVDESS name: {e}") from None


def format_ravdess(modality: int, channel: int, emotion: int, intensity: int,
                   statement: int, repetition: int, actor: int,
                   ext: str | None = None) -> str:
  return RavdessName(modality, channel, emotion, intensity, statement, repetition,
                     actor).filename(ext)


# CREMA-D: 6 emotions, in a fixed order shared with RAVDESS's names where they
# overlap (angry, disgust, fear(ful), happy, neutral, sad).
CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy",
                  "NEU": "neutral", "SAD": "sad"}
CREMA_EMOTION_CODES = tuple(CREMA_EMOTIONS)
CREMA_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
CREMA_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS",
                   "TSI", "WSI")
_CREMA_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


@dataclasses.dataclass(frozen=True)
class CremaName:
  actor: int      # 1001..1091
  sentence: str   # one of CREMA_SENTENCES
  emotion: str    # one of CREMA_EMOTION_CODES
  level: str      # LO, MD, HI or XX

  @property
  def stem(self) -> str:
    return f"{self.actor:04d}_{self.sentence}_{self.emotion}_{self.level}"

  @property
  def label(self) -> int:
    return CREMA_EMOTION_CODES.index(self.emotion)

  @property
  def emotion_name(self) -> str:
    return CREMA_EMOTIONS[self.emotion]

  @property
  def take_id(self) -> str:
    return self.stem


def parse_crema(path: str | os.PathLike) -> CremaName:
  """Parses a CREMA-D path or file name; raises InputError if it is not one."""
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  m = _CREMA_RE.match(stem)
  if not m:
    raise InputError(path, "name does not match the CREMA-D pattern AAAA_SSS_EEE_LL")
  actor, sentence, emotion, level = int(m.group(1)), m.group(2), m.group(3), m.group(4)
  if sentence not in CREMA_SENTENCES:
    raise InputError(path, f"unknown CREMA-D sentence code {sentence}")
  if emotion not in CREMA_EMOTIONS:
    raise InputError(path, f"unknown CREMA-D emotion code {emotion}")
  if level not in CREMA_LEVELS:
    raise InputError(path, f"unknown CREMA-D level code {level}")
  return CremaName(actor, sentence, emotion, level)
