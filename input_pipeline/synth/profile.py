"""Who says what, and how: actor traits, emotion cues and the per-clip plan.

Audio and video are rendered from one `ClipPlan`, so the mouth opens with the same
syllable envelope that drives the voice, and tests can derive expected cue
directions from the plan instead of from observed output.

Randomness is keyed, never sequential: an actor's traits come from
SeedSequence((seed, actor)), a clip's from (seed, actor, emotion, intensity,
statement, repetition). A clip is therefore the same whichever worker renders it
and in whatever order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.naming import RavdessName

SAMPLE_RATE = 48000
FPS = 30.0
WIDTH, HEIGHT = 320, 180

# Stream tags keep the actor, emotion-style and clip streams independent.
_ACTOR_TAG, _STYLE_TAG, _CLIP_TAG = 0xAC7, 0x57E, 0xC11


def rng_for(*key: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


# ---------------------------------------------------------------------------
# Emotion cues. Each row is the change from neutral at normal intensity, in the
# direction the vocal-affect and facial-action literature reports: high arousal
# (angry, happy, fearful, surprised) raises pitch, energy and rate and flattens
# the spectral tilt; sad lowers all of them and darkens the voice; surprised ends
# on a rise; fearful adds tremor; brows lower in anger, rise in surprise/fear and
# tilt up at the inner end in sadness; the mouth corners rise in happiness.
CUE_FIELDS = ("pitch_st", "pitch_range", "energy_db", "rate", "tilt", "final_rise_st",
              "tremor", "breath", "brow_raise", "brow_angle", "mouth_curve", "eye_open",
              "jaw", "head_motion")

#                pitch range  energy rate   tilt  rise  trem breath brow  angle curve  eye   jaw  head
_EMOTION_TABLE = {
    "neutral":   (0.0, 0.0,  0.0,  0.0,  0.0,  0.0, 0.0, 0.0,  0.0,  0.0,  0.0,  0.0,  0.0, 0.0),
    "calm":      (-1.0, -0.2, -2.5, -0.08, 0.10, 0.0, 0.0, 0.1, 0.0,  0.1,  0.25, -0.25, -0.1, -0.2),
    "happy":     (2.5, 0.45,  3.0,  0.08, -0.12, 0.5, 0.0, 0.0, 0.2,  0.0,  0.9, -0.2,  0.2, 0.4),
    "sad":       (-2.0, -0.45, -5.0, -0.2, 0.28, -1.0, 0.1, 0.35, 0.1,  0.8, -0.6, -0.35, -0.3, -0.3),
    "angry":     (2.0, 0.25,  6.0,  0.1, -0.3,  -0.5, 0.0, 0.0, -0.7, -0.9, -0.35, -0.3,  0.35, 0.5),
    "fearful":   (4.0, 0.1,   1.0,  0.15, -0.05, 0.5, 0.9, 0.3, 0.7,  0.6, -0.25, 0.6,  0.1, 0.3),
    "disgust":   (-1.0, -0.1, 0.0, -0.12, 0.12, -0.5, 0.3, 0.1, -0.35, -0.25, -0.5, -0.45, 0.0, 0.1),
    "surprised": (3.5, 0.6,   3.0,  0.0, -0.1,  4.0, 0.0, 0.1, 1.0,  0.2,  0.0,  0.8,  0.6, 0.4),
}
EMOTION_CUES = {k: np.asarray(v, dtype=np.float64) for k, v in _EMOTION_TABLE.items()}
STRONG_GAIN = 1.6   # strong intensity exaggerates the normal-intensity change


def cue_strength(difficulty: float) -> float:
  """How far emotion moves the cues: 1.8 at difficulty 0, 0.9 at 1, -> 0 as it grows.

  Actor traits and per-clip noise do not scale, so higher difficulty means
  emotion cues that are smaller relative to who is speaking and to chance.
  """
  return 1.8 / (1.0 + float(difficulty))


# Per-clip noise on every cue (same units as the table) and per-actor spread of
# how strongly that actor expresses each cue.
_CLIP_NOISE = np.array([1.6, 0.25, 3.0, 0.1, 0.12, 1.0, 0.2, 0.12, 0.7, 0.7, 0.65, 0.55,
                        0.3, 0.3])
_STYLE_SPREAD = 0.45


# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Actor:
  """Stable traits of one synthetic actor (voice and face)."""
  actor: int
  female: bool
  f0: float                 # baseline pitch, Hz
  formant_scale: float      # vocal-tract length: >1 shorter tract, higher formants
  energy_db: float
  rate: float
  tilt: float
  # face
  face_w: float             # half-width of the head ellipse, px
  face_h: float             # half-height, px
  cx: float                 # head centre in the frame
  cy: float
  skin: tuple[float, float, float]   # RGB 0..255
  hair: tuple[float, float, float]
  eye_gap: float            # half distance between eye centres, px
  brow_base: float          # resting brow height above the eye, px
  mouth_w: float            # half-width of the mouth, px
  mouth_curve_base: float
  eye_open_base: float
  style: np.ndarray         # (len(CUE_FIELDS),) per-cue expression gain, around 1


def make_actor(actor: int, seed: int) -> Actor:
  rng = rng_for(seed, actor, _ACTOR_TAG)
  female = actor % 2 == 0
  f0 = (205.0 if female else 115.0) * float(np.exp(rng.normal(0.0, 0.11)))
  formant_scale = (1.15 if female else 1.0) * float(np.exp(rng.normal(0.0, 0.04)))
  face_w = float(rng.uniform(33.0, 39.0)) * (0.96 if female else 1.0)
  face_h = face_w * float(rng.uniform(1.25, 1.4))
  tone = rng.uniform(0.0, 1.0)  # light -> dark skin
  light, dark = np.array([236.0, 196.0, 170.0]), np.array([120.0, 80.0, 58.0])
  skin = tuple(float(c) for c in (light * (1 - tone) + dark * tone
                                  + rng.normal(0.0, 6.0, 3)))
  hair = tuple(float(c) for c in rng.uniform(12.0, 70.0) * np.array([1.0, 0.8, 0.6])
               + rng.uniform(0.0, 15.0, 3))
  return Actor(
      actor=actor, female=female, f0=f0, formant_scale=formant_scale,
      energy_db=float(rng.normal(0.0, 2.0)), rate=float(np.exp(rng.normal(0.0, 0.08))),
      tilt=float(rng.normal(0.0, 0.08)),
      face_w=face_w, face_h=face_h, cx=float(WIDTH / 2 + rng.uniform(-35.0, 35.0)),
      cy=float(HEIGHT / 2 + rng.uniform(-4.0, 6.0)), skin=skin, hair=hair,
      eye_gap=face_w * float(rng.uniform(0.40, 0.46)),
      brow_base=float(rng.uniform(6.5, 8.5)),
      mouth_w=face_w * float(rng.uniform(0.36, 0.46)),
      mouth_curve_base=float(rng.normal(0.0, 0.3)),
      eye_open_base=float(rng.normal(0.0, 0.25)),
      style=np.exp(rng.normal(0.0, _STYLE_SPREAD, len(CUE_FIELDS))))


# ---------------------------------------------------------------------------
# The two RAVDESS statements as syllables: (vowel, onset consonant, relative
# duration, stress). "Kids are talking by the door" / "Dogs are sitting by the door".
STATEMENTS = {
    1: (("I", "k", 1.0, 1.0), ("a", "", 0.6, 0.2), ("O", "t", 1.1, 1.0),
        ("I", "k", 0.8, 0.3), ("aI", "b", 1.0, 0.6), ("@", "D", 0.5, 0.1),
        ("O", "d", 1.5, 0.8)),
    2: (("O", "d", 1.1, 1.0), ("a", "", 0.6, 0.2), ("I", "s", 1.2, 0.9),
        ("I", "t", 0.7, 0.3), ("aI", "b", 1.0, 0.6), ("@", "D", 0.5, 0.1),
        ("O", "d", 1.5, 0.8)),
}
BASE_SYLLABLE_S = 0.23   # mean syllable length at rate 1


@dataclasses.dataclass(frozen=True)
class ClipPlan:
  """Everything needed to render one clip; audio and video read the same plan."""
  name: RavdessName
  actor: Actor
  cues: dict[str, float]       # effective cue values for this clip (actor + emotion + noise)
  f0: float                    # clip pitch level, Hz (actor baseline x emotion shift)
  syllables: tuple[tuple[float, float, str, str, float], ...]  # (start, dur, vowel, cons, stress)
  duration: float              # seconds, a whole number of video frames
  n_frames: int
  n_samples: int
  difficulty: float
  clip_seed: tuple[int, ...]

  def envelope(self, t: np.ndarray) -> np.ndarray:
    """Syllable loudness envelope in [0, 1] at times t (s); drives voice and jaw."""
    t = np.asarray(t, dtype=np.float64)
    env = np.zeros_like(t)
    for start, dur, _, _, stress in self.syllables:
      x = (t - start) / dur
      inside = (x > 0.0) & (x < 1.0)
      shape = np.zeros_like(t)
      shape[inside] = np.sin(np.pi * x[inside]) ** 0.6
      env = np.maximum(env, shape * (0.7 + 0.3 * stress))
    return env


def plan_clip(name: RavdessName, seed: int, difficulty: float) -> ClipPlan:
  """Draws actor traits, emotion cues and syllable timing for one clip."""
  actor = make_actor(name.actor, seed)
  key = (seed, name.actor, name.emotion, name.intensity, name.statement, name.repetition)
  rng = rng_for(*key, _CLIP_TAG)
  style_rng = rng_for(seed, name.actor, name.emotion, _STYLE_TAG)
  gain = STRONG_GAIN if name.intensity == 2 else 1.0
  # How this actor renders this emotion: per-cue gain and a small per-emotion bias.
  style = actor.style * np.exp(style_rng.normal(0.0, 0.2, len(CUE_FIELDS)))
  delta = EMOTION_CUES[name.emotion_name] * gain * style * cue_strength(difficulty)
  values = delta + rng.normal(0.0, 1.0, len(CUE_FIELDS)) * _CLIP_NOISE
  cues = dict(zip(CUE_FIELDS, (float(v) for v in values)))
  cues["pitch_range"] = float(np.clip(1.0 + cues["pitch_range"], 0.3, 3.0))
  cues["rate"] = float(np.clip(actor.rate * (1.0 + cues["rate"]), 0.55, 1.7))
  cues["energy_db"] += actor.energy_db
  cues["tilt"] += actor.tilt
  cues["tremor"] = max(0.0, cues["tremor"])
  cues["breath"] = float(np.clip(0.08 + cues["breath"], 0.0, 0.8))
  cues["head_motion"] = float(np.clip(1.0 + cues["head_motion"], 0.2, 3.0))
  cues["mouth_curve"] += actor.mouth_curve_base
  cues["eye_open"] += actor.eye_open_base
  f0 = actor.f0 * 2.0 ** (cues["pitch_st"] / 12.0)

  sylls = STATEMENTS[name.statement]
  lead = float(rng.uniform(0.7, 1.1))
  t = lead
  syllables = []
  for vowel, cons, rel, stress in sylls:
    dur = BASE_SYLLABLE_S * rel / cues["rate"] * float(np.exp(rng.normal(0.0, 0.06)))
    dur *= 1.0 + 0.15 * stress * (cues["pitch_range"] - 1.0)  # emphasis lengthens stress
    syllables.append((t, dur, vowel, cons, stress))
    t += dur * float(rng.uniform(0.93, 1.02))  # slight overlap/gaps between syllables
  trail = float(rng.uniform(0.6, 1.0))
  n_frames = int(np.ceil((t + trail) * FPS))
  duration = n_frames / FPS
  n_samples = int(round(duration * SAMPLE_RATE))
  return ClipPlan(name=name, actor=actor, cues=cues, f0=float(f0),
                  syllables=tuple(syllables), duration=duration, n_frames=n_frames,
                  n_samples=n_samples, difficulty=float(difficulty), clip_seed=key)
