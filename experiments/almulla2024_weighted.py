"""S6, Almulla 2024 (as described in the review, method 3): per-modality classifiers
fused at the decision level with fixed weights.

Paper: video 0.55, audio 0.38, text 0.07; 80 % accuracy for the fusion (their
protocol, not actor-independent). RAVDESS has two fixed sentences, so text carries
no emotion there: only the video and audio weights carry over, and the fused
probability is (0.55 p_video + 0.38 p_audio) / 0.93 (`model.normalize_weights`;
the arg-max is the same without it).

Choices the review leaves open (ours): the per-modality classifiers are S1's nets
(Conv3D on 30 grayscale 80x70 face frames, Conv1D on 180x20 MFCCs), trained first
on the same fold exactly as experiments/sultana2024.py trains them, so S6 and S1
differ only in how they fuse; the rule has no parameters, so the fusion stage only
evaluates (`train.num_train_steps = 0`). With `branch_cache` set (as `avjax
results` does) the branch runs are shared with S1's.

Launch:
  avjax train --config experiments/almulla2024_weighted.py --workdir runs/s6
  avjax train --config experiments/almulla2024_weighted.py --workdir runs/s6 \\
      --config.pretrained.audio.workdir=runs/s1_audio \\
      --config.pretrained.video.workdir=runs/s1_video
  avjax cv --config experiments/almulla2024_weighted.py:smoke --workdir /tmp/s6_cv

Arguments: `weighted` (the only variant) plus any of `smoke`, `demo`, `cpu`, `gpu`,
`tpu_v3_8`, `kaggle_tpu_v5e_8`. Weights: --config.model.weights.video=0.6 etc.
"""

from __future__ import annotations

import ml_collections

import _base
import sultana2024

PAPER_ACCURACY = 80.0
WEIGHTS = {"video": 0.55, "audio": 0.38}  # The paper's text weight 0.07 has no branch.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, flags = _base.parse_args(arg, ("weighted",), default="weighted")
  c = _base.base_config(num_epochs=0)
  c.system = "S6 Almulla 2024"
  c.paper_accuracy = PAPER_ACCURACY
  c.paper_protocol = "their split, not actor-independent"

  c.model.name = "decision_fusion"
  c.model.rule = "weighted"
  c.model.weights = ml_collections.ConfigDict(dict(WEIGHTS))
  c.model.normalize_weights = True
  _base.use_branches(c, {m: sultana2024.get_config(",".join([m, *sorted(flags)]))
                         for m in ("audio", "video")})
  c.train.num_train_steps = 0  # A fixed rule: nothing to train, the run evaluates.

  _base.apply_hardware(c, flags)
  if "smoke" in flags:
    _base.apply_smoke_train(c)
    c.train.num_train_steps = 0
  return c
