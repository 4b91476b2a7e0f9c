"""Writes the synthetic corpus in RAVDESS's own layout and names.

`Actor_XX/01-01-EE-II-SS-RR-AA.mp4` (audio-video) and the matching `03-...wav`
(audio-only) are the same take, exactly as in RAVDESS, so builders, splits and
loaders run the same code on synthetic and real data.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time

import numpy as np

from input_pipeline import media
from input_pipeline.naming import RAVDESS_EMOTIONS, RavdessName
from input_pipeline.synth.audio import synth_audio
from input_pipeline.synth.profile import FPS, SAMPLE_RATE, plan_clip
from input_pipeline.synth.video import synth_video

MAX_ACTORS = 24
CLIPS_PER_EMOTION = 8   # RAVDESS: 2 intensities x 2 statements x 2 repetitions


@dataclasses.dataclass
class SynthReport:
  out_dir: str
  files: list[str]
  n_clips: int
  seconds: float


def synth_clip(name: RavdessName, seed: int = 0, difficulty: float = 1.0
               ) -> tuple[np.ndarray, float, np.ndarray, int]:
  """One take without touching disk: (frames uint8 (T,H,W,3), fps, audio f32, sr).

  The audio lasts exactly as long as the frames (T / fps seconds).
  """
  plan = plan_clip(name, seed, difficulty)
  return synth_video(plan), FPS, synth_audio(plan), SAMPLE_RATE


def takes_for(actor: int, clips_per_emotion: int) -> list[RavdessName]:
  """The first K (intensity, statement, repetition) takes per emotion, intensity
  varying fastest; neutral has only normal intensity, so it has at most 4."""
  names = []
  for emotion in range(1, len(RAVDESS_EMOTIONS) + 1):
    combos = [(i, s, r) for r in (1, 2) for s in (1, 2) for i in (1, 2)
              if not (emotion == 1 and i == 2)]
    for intensity, statement, repetition in combos[:clips_per_emotion]:
      names.append(RavdessName(1, 1, emotion, intensity, statement, repetition, actor))
  return names


def _write_take(job: tuple[str, RavdessName, int, float]) -> list[str]:
  """Worker: render one take and write its mp4 and wav (top level, so spawn-safe)."""
  out_dir, name, seed, difficulty = job
  actor_dir = os.path.join(out_dir, f"Actor_{name.actor:02d}")
  frames, fps, audio, sr = synth_clip(name, seed, difficulty)
  mp4 = os.path.join(actor_dir, name.filename(".mp4"))
  wav = os.path.join(actor_dir, name.with_modality(3).filename(".wav"))
  media.write_av(mp4, frames, fps, audio, sr)
  media.write_wav(wav, audio, sr)
  return [mp4, wav]


def _validate(actors, clips_per_emotion, difficulty, workers) -> None:
  if isinstance(actors, bool) or not isinstance(actors, (int, np.integer)) \
      or not 1 <= actors <= MAX_ACTORS:
    raise ValueError(f"actors must be an integer in 1..{MAX_ACTORS}, got {actors!r}")
  if isinstance(clips_per_emotion, bool) or not isinstance(clips_per_emotion, (int, np.integer)) \
      or clips_per_emotion < 1:
    raise ValueError(f"clips_per_emotion must be an integer >= 1, got {clips_per_emotion!r}")
  if not np.isfinite(difficulty) or difficulty < 0:
    raise ValueError(f"difficulty must be a finite number >= 0, got {difficulty!r}")
  if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
    raise ValueError(f"workers must be None or an integer >= 1, got {workers!r}")


def generate_corpus(out_dir: str | os.PathLike, actors: int = MAX_ACTORS,
                    clips_per_emotion: int = CLIPS_PER_EMOTION, seed: int = 0,
                    difficulty: float = 1.0, workers: int | None = None,
                    progress: bool = True) -> SynthReport:
  """Renders actors 1..`actors`, K takes per emotion each, as RAVDESS speech files.

  Takes are independent (each seeds its own RNG from its name), so the output is
  the same for any worker count. `workers=None` uses every core; 1 runs inline.
  Workers are spawned (not forked: safe next to JAX/TF threads), so a script that
  calls this with workers > 1 needs the usual `if __name__ == "__main__":` guard.
  """
  _validate(actors, clips_per_emotion, difficulty, workers)
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  names = [n for a in range(1, actors + 1) for n in takes_for(a, clips_per_emotion)]
  jobs = [(out_dir, n, int(seed), float(difficulty)) for n in names]
  workers = min(workers or os.cpu_count() or 1, len(jobs))
  start = time.perf_counter()
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(jobs), unit="clip", desc="synth corpus")
  files: list[str] = []
  try:
    if workers == 1:
      for job in jobs:
        files += _write_take(job)
        if bar:
          bar.update()
    else:
      ctx = multiprocessing.get_context("spawn")
      with ctx.Pool(workers) as pool:
        for written in pool.imap(_write_take, jobs, chunksize=1):
          files += written
          if bar:
            bar.update()
  finally:
    if bar:
      bar.close()
  return SynthReport(out_dir=out_dir, files=files, n_clips=len(jobs),
                     seconds=time.perf_counter() - start)
