"""CREMA-D (Cao et al. 2014): `AudioWAV/*.wav` (16 kHz) and `VideoFlash/*.flv`
named `1001_DFA_ANG_XX`, with `VideoDemographics.csv` when present."""

from __future__ import annotations

import csv
import os

from input_pipeline import naming
from input_pipeline.builders import base

# Clips documented as unusable in the corpus itself.
KNOWN_BAD = {
    "1076_MTI_SAD_XX": "known broken clip in CREMA-D",
    "1047_IEO_FEA_LO": "known black-frame clip in CREMA-D",
    "1047_IEO_SAD_LO": "known black-frame clip in CREMA-D",
}
_LEVELS = {"XX": 0, "LO": 1, "MD": 2, "HI": 3}


class CremaD(base.AvBuilder, skip_registration=True):
  """CREMA-D, 6 emotions, 91 actors; one example per take."""

  name = "crema_d"
  CLASS_NAMES = tuple(naming.CREMA_EMOTIONS[c] for c in naming.CREMA_EMOTION_CODES)
  HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
  CITATION = ("Cao H, Cooper DG, Keutmann MK, Gur RC, Nenkova A, Verma R (2014). "
              "CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset. IEEE Trans. "
              "Affective Computing 5(4).")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Clone or download CREMA-D (git-lfs: github.com/CheyneyComputerScience/CREMA-D)
  and point --manual-dir at its root, which must hold AudioWAV/ (the .wav files),
  VideoFlash/ (the .flv files) and, optionally, VideoDemographics.csv (actor sex).
    avjax prepare --dataset crema_d --manual-dir DIR --data-dir DATA --features NAME
  """

  def _demographics(self, manual_dir: str) -> dict[int, str]:
    path = os.path.join(manual_dir, "VideoDemographics.csv")
    if not os.path.isfile(path):
      return {}
    sexes = {}
    with open(path, newline="") as f:
      for row in csv.DictReader(f):
        try:
          sexes[int(row["ActorID"])] = row.get("Sex", "unknown").strip().lower() or "unknown"
        except (KeyError, ValueError):
          continue
    return sexes

  def discover(self, manual_dir: str) -> base.Discovery:
    sexes = self._demographics(manual_dir)
    takes: dict[str, dict[str, str]] = {}
    skipped, ignored = [], []
    for path, ext, name in base.scan_media(manual_dir, naming.parse_crema, skipped, ignored):
      kind = "audio" if ext == ".wav" else "video"
      base.add_file(takes.setdefault(name.stem, {}), kind, path, skipped)
    out = []
    for stem, files in sorted(takes.items()):
      name = naming.parse_crema(stem)
      all_files = tuple(files[k] for k in sorted(files))
      if stem in KNOWN_BAD:
        skipped.append(base.Skip(all_files, KNOWN_BAD[stem], stem))
        continue
      out.append(base.Take(
          take_id=stem, actor=name.actor, label=name.label, emotion=name.emotion_name,
          sex=sexes.get(name.actor, "unknown"), intensity=_LEVELS[name.level],
          statement=naming.CREMA_SENTENCES.index(name.sentence) + 1, repetition=1,
          audio_file=files.get("audio") or files.get("video"), video_file=files.get("video"),
          files=all_files))
    return base.Discovery(out, skipped, ignored)
