"""Speech-like voice from a source-filter model.

A Rosenberg glottal pulse train (with jitter, shimmer and breath noise) is tilted
by a one-pole low-pass and shaped by four cascaded formant resonators whose
targets move from vowel to vowel. Plosive bursts and fricative noise mark the
consonants, and the syllable envelope of the plan gates it all, so the result has
the pitch, energy, rhythm and spectral-balance cues that speech-emotion features
(and models) read, without being anyone's recorded voice.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from input_pipeline.synth.profile import SAMPLE_RATE, ClipPlan, rng_for

# Formant targets (F1, F2, F3) in Hz for an adult male tract; scaled per actor.
VOWELS = {
    "I": (400.0, 1900.0, 2550.0),
    "a": (730.0, 1090.0, 2440.0),
    "O": (570.0, 840.0, 2410.0),
    "@": (500.0, 1500.0, 2500.0),
    "aI": (730.0, 1090.0, 2440.0),   # glides to "I" over the syllable
}
_F4 = 3400.0
_BANDWIDTHS = (80.0, 100.0, 140.0, 200.0)
_BLOCK = 240            # 5 ms at 48 kHz: formants are updated per block
_AUDIO_TAG = 0xA0D


def _f0_contour(plan: ClipPlan, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Pitch in Hz per sample: level, declination, stress accents, final movement,
  tremor and slow jitter."""
  cues = plan.cues
  start = plan.syllables[0][0]
  end = plan.syllables[-1][0] + plan.syllables[-1][1]
  pos = np.clip((t - start) / (end - start), 0.0, 1.0)
  st = -2.0 * pos * cues["pitch_range"]                      # declination
  for s0, dur, _, _, stress in plan.syllables:
    centre = s0 + 0.4 * dur
    st += 2.5 * stress * cues["pitch_range"] * np.exp(-0.5 * ((t - centre) / (0.45 * dur)) ** 2)
  last0, last_dur = plan.syllables[-1][0], plan.syllables[-1][1]
  final = np.clip((t - last0) / last_dur, 0.0, 1.0)
  st += cues["final_rise_st"] * final ** 1.5                 # rise (surprise) or fall
  st += 0.6 * cues["tremor"] * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi))
  # Slow random wander: a low-passed random walk, ~0.3 semitones.
  n_knots = int(len(t) / SAMPLE_RATE * 20) + 2
  knots = rng.normal(0.0, 0.3, n_knots)
  st += np.interp(t, np.linspace(t[0], t[-1], n_knots), knots)
  return plan.f0 * 2.0 ** (st / 12.0)


def _glottal_source(f0: np.ndarray, rng: np.random.Generator, jitter: float,
                    shimmer: float, close_q: float = 0.16) -> tuple[np.ndarray, np.ndarray]:
  """Derivative of a Rosenberg pulse train (lip radiation folded in) and the flow.

  A shorter closing phase (`close_q`) means a more abrupt closure and more
  high-frequency energy: pressed, tense voice versus lax, breathy voice.
  """
  # Per-cycle jitter: perturb the instantaneous frequency by cycle.
  phase = np.cumsum(f0 / SAMPLE_RATE)
  n_cycles = int(phase[-1]) + 2
  jit = 1.0 + rng.normal(0.0, jitter, n_cycles)
  phase = np.cumsum(f0 * jit[phase.astype(np.int64)] / SAMPLE_RATE)
  cycle = phase.astype(np.int64)
  p = phase - cycle
  open_q = 0.42
  g = np.where(p < open_q, 0.5 * (1.0 - np.cos(np.pi * p / open_q)),
               np.where(p < open_q + close_q,
                        np.cos(0.5 * np.pi * (p - open_q) / close_q), 0.0))
  amp = 1.0 + rng.normal(0.0, shimmer, int(cycle[-1]) + 2)
  g = g * amp[cycle]
  return np.diff(g, prepend=0.0) * (SAMPLE_RATE / 200.0), g


def _resonator(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
  r = np.exp(-np.pi * bw / SAMPLE_RATE)
  theta = 2 * np.pi * freq / SAMPLE_RATE
  a = np.array([1.0, -2.0 * r * np.cos(theta), r * r])
  return np.array([a.sum()]), a   # unity gain at DC


def _formant_tracks(plan: ClipPlan, t_blocks: np.ndarray) -> np.ndarray:
  """(n_blocks, 4) formant frequencies, gliding between syllable targets."""
  scale = plan.actor.formant_scale
  times, targets = [], []
  for s0, dur, vowel, _, _ in plan.syllables:
    f = VOWELS[vowel]
    if vowel == "aI":
      times += [s0 + 0.3 * dur, s0 + 0.85 * dur]
      targets += [f, VOWELS["I"]]
    else:
      times.append(s0 + 0.5 * dur)
      targets.append(f)
  times = np.array(times)
  targets = np.array(targets) * scale
  tracks = np.stack([np.interp(t_blocks, times, targets[:, k]) for k in range(3)]
                    + [np.full_like(t_blocks, _F4 * scale)], axis=1)
  return tracks


def _filter_formants(x: np.ndarray, tracks: np.ndarray) -> np.ndarray:
  """Cascade of four time-varying resonators, updated every block, state kept."""
  y = x.copy()
  n_blocks = tracks.shape[0]
  for k in range(4):
    zi = np.zeros(2)
    out = np.empty_like(y)
    for b in range(n_blocks):
      sl = slice(b * _BLOCK, (b + 1) * _BLOCK)
      if sl.start >= len(y):
        break
      bnum, aden = _resonator(tracks[b, k], _BANDWIDTHS[k])
      out[sl], zi = signal.lfilter(bnum, aden, y[sl], zi=zi)
    y = out
  return y


def _consonants(plan: ClipPlan, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Noise bursts (plosives) and hiss (fricatives) at syllable onsets."""
  out = np.zeros_like(t)
  hp = signal.butter(2, 2500.0, "highpass", fs=SAMPLE_RATE, output="sos")
  bp = signal.butter(2, (1200.0, 4000.0), "bandpass", fs=SAMPLE_RATE, output="sos")
  for s0, dur, _, cons, _ in plan.syllables:
    if not cons:
      continue
    if cons in ("s", "D"):
      length, sos, level = (0.09 if cons == "s" else 0.04), hp, (0.5 if cons == "s" else 0.15)
    else:
      length, sos, level = 0.02, bp, 0.6
    i0 = int(max(0.0, s0 - 0.3 * length) * SAMPLE_RATE)
    n = int(length * SAMPLE_RATE)
    if i0 + n > len(t):
      continue
    noise = signal.sosfilt(sos, rng.normal(0.0, 1.0, n))
    out[i0:i0 + n] += level * noise * np.hanning(n)
  return out


def synth_audio(plan: ClipPlan) -> np.ndarray:
  """Renders the plan's voice as float32 mono at SAMPLE_RATE, length plan.n_samples."""
  rng = rng_for(*plan.clip_seed, _AUDIO_TAG)
  cues = plan.cues
  n = plan.n_samples
  t = np.arange(n) / SAMPLE_RATE
  f0 = _f0_contour(plan, t, rng)
  jitter = 0.008 + 0.01 * cues["tremor"]
  close_q = float(np.clip(0.14 + 0.3 * cues["tilt"], 0.04, 0.4))
  source, flow = _glottal_source(f0, rng, jitter=jitter, shimmer=0.04 + 0.05 * cues["tremor"],
                                 close_q=close_q)
  # Breath: noise that follows the glottal opening, more of it in breathy voices.
  # Scaled to the pulse train's own level, so a breathy voice is noisier but not
  # louder, and low-passed a little like turbulence at the glottis.
  breath = signal.lfilter([0.5, 0.5], [1.0], rng.normal(0.0, 1.0, n)) * (0.3 + flow)
  source = source + cues["breath"] * 0.5 * np.std(source) * breath
  # Spectral tilt: larger pole -> steeper roll-off -> darker voice.
  pole = float(np.clip(0.45 + cues["tilt"], 0.0, 0.93))
  source = signal.lfilter([1.0 - pole], [1.0, -pole], source)
  env = plan.envelope(t)
  voiced = source * env
  t_blocks = (np.arange(int(np.ceil(n / _BLOCK))) + 0.5) * (_BLOCK / SAMPLE_RATE)
  speech = _filter_formants(voiced, _formant_tracks(plan, t_blocks))
  speech = speech / (np.sqrt(np.mean(speech[env > 0.3] ** 2)) + 1e-9)
  # Articulatory effort follows vocal effort: crisp consonants when tense, soft when lax.
  effort = float(np.clip(1.0 - 1.2 * cues["tilt"], 0.3, 1.6))
  speech = speech + effort * _consonants(plan, t, rng)
  level = 0.06 * 10.0 ** (cues["energy_db"] / 20.0)
  audio = level * speech
  # Room/mic noise; a little more at higher difficulty.
  noise_db = -58.0 + 4.0 * min(plan.difficulty, 3.0)
  audio = audio + 10.0 ** (noise_db / 20.0) * rng.normal(0.0, 1.0, n)
  audio = np.tanh(audio / 0.9) * 0.9   # soft limit: loud shouts saturate, not clip
  return audio.astype(np.float32)
