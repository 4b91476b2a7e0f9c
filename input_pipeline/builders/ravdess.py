"""RAVDESS (Livingstone & Russo 2018) as distributed, or the synthetic corpus that
mimics it: `Actor_XX/` folders of `01-` (audio-video), `02-` (video-only) and `03-`
(audio-only) files named `MM-VV-EE-II-SS-RR-AA`."""

from __future__ import annotations

from input_pipeline import naming
from input_pipeline.builders import base

class Ravdess(base.AvBuilder, skip_registration=True):
  """RAVDESS speech, 8 emotions, 24 actors; one example per take."""

  name = "ravdess"
  CLASS_NAMES = naming.RAVDESS_EMOTIONS
  HOMEPAGE = "https://zenodo.org/record/1188976"
  CITATION = ("Livingstone SR, Russo FA (2018) The Ryerson Audio-Visual Database of "
              "Emotional Speech and Song (RAVDESS). PLoS ONE 13(5): e0196391.")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download RAVDESS from Zenodo (record 1188976): the Video_Speech_Actor_XX.zip
  archives (audio-video `01-` and video-only `02-` mp4s) and
  Audio_Speech_Actors_01-24.zip (audio-only `03-` wavs). Unzip them all into one
  directory so that it holds Actor_01/ ... Actor_24/, each with that actor's
  01-01-..., 02-01-... and 03-01-... files side by side (folder nesting does not
  matter: files are found recursively and grouped by take). Then run
    avjax prepare --dataset ravdess --manual-dir DIR --data-dir DATA --features NAME
  The synthetic corpus (`avjax synth --out DIR`) has the same layout.
  """

  # Speech only: every system avjax reimplements trains on RAVDESS speech (1440
  # takes). Song takes are listed in the report as excluded, never dropped silently.
  CHANNELS = (1,)

  def discover(self, manual_dir: str) -> base.Discovery:
    takes: dict[str, dict[int, str]] = {}
    names: dict[str, naming.RavdessName] = {}
    skipped, ignored = [], []
    for path, ext, name in base.scan_media(manual_dir, naming.parse_ravdess, skipped,
                                           ignored):
      expected = ".wav" if name.modality == 3 else ".mp4"
      if ext != expected:
        skipped.append(base.Skip((path,), f"modality {name.modality:02d} file should be "
                                          f"{expected}, not {ext}"))
        continue
      base.add_file(takes.setdefault(name.take_id, {}), name.modality, path, skipped)
      names[name.take_id] = name
    out = []
    for take_id, files in sorted(takes.items()):
      name = names[take_id]
      all_files = tuple(files[m] for m in sorted(files))
      if name.channel not in self.CHANNELS:
        skipped.append(base.Skip(all_files, "song channel (02) is excluded: the feature "
                                            "sets are defined on speech", take_id))
        continue
      audio = files.get(3) or files.get(1)     # the 03- wav, else the 01- mp4's track
      video = files.get(1) or files.get(2)     # the 01- mp4, else the 02- video-only
      out.append(base.Take(
          take_id=take_id, actor=name.actor, label=name.label, emotion=name.emotion_name,
          sex=name.sex, intensity=name.intensity, statement=name.statement,
          repetition=name.repetition, audio_file=audio, video_file=video, files=all_files))
    return base.Discovery(out, skipped, ignored)
