"""avjax audio: a from-scratch speech emotion system on log-mel, built for unseen
actors (not a paper's recipe; the seed systems are S1-S6).

Model (`avjax_audio`, avjax/models/avjax_audio.py): frames quieter than the
clip's loudest by more than 30 dB are masked out like padding (the silence
around a RAVDESS take); per-utterance mean/variance normalisation over the
remaining frames (one mean and variance per clip, so the spectral envelope
stays); frames averaged in pairs (20 ms steps); a 2D conv front-end (3x3
conv-BN-ReLU + 2x2 max-pool, 32 and 64 channels); its mel and channel axes
flattened per step and projected to 256; three residual 1D blocks over time
(256 wide, kernel 3, max-pool 2 between); masked attentive statistics pooling
(weighted mean and std over time); dropout 0.3; Dense 256 ReLU (the
`embedding`); Dense classes. 1.61 M parameters.

Training (Grain transforms on the training split only, input_pipeline/augment.py):
a random 2 s crop (200 frames) inside the clip's active span, SpecAugment (2
time masks up to 20 frames, 2 mel masks up to 8 bands); cross-entropy with
label smoothing 0.1; AdamW (learning rate 1e-3, weight decay 1e-4), warmup 30
steps then cosine decay, batch 32, 80 epochs; the checkpoint reported is the
best by validation UAR (scored every 30 steps, 2 epochs of 8 actors).
Evaluation scores the whole clip (the net pools over its active frames).
Speed perturbation (`speed_perturb`), pitch shifts (`pitch_shift`), mixup and
test-time crop averaging (`model.eval_crop`) are built and tested but off: see
below.

Selection, on validation actors only. Every choice was made on the validation
actors of folds 0 and 1 (first round, stop 22) or 0-3 (second round, below)
of `actor_kfold` (k = 6) over the shared real set
(RAVDESS actors 1-12, ../shared/real/ravdess_speech_16k), with the test split
not scored at all (`data.eval_splits=('val',)`); actors 13-24 are not in the set.
First round: numbers are best validation UAR over the run, fold 0 / fold 1;
runs share the net above at half its widths (16/32 channels, 128 wide) and
40 epochs (600 steps) unless cut short for time, then compared at
the same step. The CPU (2 cores shared by several jobs, about 0.5 steps/s per
run) allowed one short round per question:
  * augmentation strength, with per-band normalisation: everything on (speed
    perturbation 0.9-1.1, crop, SpecAugment 2 x 30 frames / 2 x 8 bands, mixup
    0.2) underfits in this budget: train accuracy 0.31 after 570 steps and
    0.27 on fold 0's validation actors. Nothing but the crop (no label
    smoothing, no dropout) fits the training actors in 200 steps (train
    accuracy 0.92) and swings between 0.29 and 0.54 from one evaluation to
    the next on fold 0. The middle (crop + SpecAugment 2 x 20 / 2 x 8, label
    smoothing, dropout) was kept; speed perturbation and mixup stay off.
  * normalisation: per mel band 0.26 / 0.24 against one mean and variance per
    clip 0.47 / 0.27 at step 270 (same augmentation); per clip then reached
    0.59 / 0.38 at step 600. Per-band normalisation removes the long-term
    spectrum, which carries vocal effort.
  * silence: masking frames more than 30 dB below the loudest (in the model
    and for the crop's span; RAVDESS takes have 1-2 s of room noise around
    the speech, 38-64 dB down) against not: 0.51 / 0.30 against 0.47 / 0.27
    at step 270, 0.56 / 0.34 against 0.47 / 0.30 at step 300 (best so far).
    Kept.
That net (16/32 channels, 128 wide, 0.41 M parameters) at 40 epochs scored
WA 49.2 ± 8.8 % over the 6 test folds (stop 22).
Second round (2026-12-03), on the validation actors of folds 0-3 (8 actors,
test never scored; `data.eval_splits=('val',)`), best validation UAR per run,
folds 0 / 1 / 2 / 3, mean; one run per cell, idle 2-core CPU, 2-4 min each:
  * that recipe: 0.656 / 0.398 / 0.414 / 0.594, mean 0.516 (train accuracy
    0.73-0.79 at the end: not fitted);
  * 80 epochs instead of 40: 0.711 / 0.414 / 0.586 / 0.633, mean 0.586;
  * twice the widths (32/64 channels, 256 wide, Dense 256): 0.758 / 0.484 /
    0.461 / 0.680, mean 0.596.
Each beat the old recipe on all four folds' validation actors, so both were
taken together (the combination itself was not run on validation before the
test run; its own validation numbers are in the 6-fold run's reports).
Third round (2026-12-03, stop 24), the same folds and protocol, each change
alone on this config (80 epochs, 1.61 M parameters); the reference is this
config's own validation UAR in the 6-fold run below (its test numbers never
looked at for the choice): 0.727 / 0.539 / 0.531 / 0.648, mean 0.611:
  * mixup (alpha 0.2): 0.797 / 0.492 / 0.516 / 0.656, mean 0.615;
  * speed perturbation (0.9-1.1): 0.789 / 0.523 / 0.523 / 0.680, mean 0.629.
Neither beats the reference on all four folds (each wins on folds 0 and 3
and loses on 1 and 2), and the means differ by less than one run's spread
from one evaluation to the next, so both stay off.
  * a moving average of the parameters (`train.ema_decay=0.99`, new in the
    trainer; evaluated, chosen and exported in place of the raw ones):
    0.742 / 0.531 / 0.531 / 0.672, mean 0.619: two wins, one tie, one loss;
    off.
  * test-time crop averaging (`model.eval_crop`, 3 crops), scored on the
    6-fold run's own best checkpoints of folds 0-3 (chosen without crops):
    200 frames 0.789 / 0.500 / 0.531 / 0.672, mean 0.623; 150 frames 0.617 /
    0.469 / 0.516 / 0.555. Not on every fold; off. (A first run scored 0.35
    mean: the crops then started at the clip's first frame, in the room
    noise before the take; they now lie in the active span.)
The 6-fold test result with this config (README, Real speech, `avjax results
... --protocols actor,leaky`, 2026-12-03): WA 55.1 ± 7.4 %, UAR 54.7 ± 9.2 %
(folds 0-5: 50.0, 65.0, 48.3, 47.5, 60.0, 60.0 % WA; their validation actors
70.8, 57.5, 51.7, 64.2, 64.2, 53.3 %); LEAKY random clip split 80.6 %. Short
of the issue's 70 % target.

Launch (prepare once: `avjax prepare --dataset ravdess --manual-dir DIR
--data-dir DATA --features logmel`):
  avjax cv --config experiments/avjax_audio.py --workdir runs/avjax_audio_cv \\
      --config.data.data_dir=DATA --config.data.protocol=actor_kfold --config.data.k=6
  avjax train --config experiments/avjax_audio.py:full --workdir runs/avjax_audio \\
      --config.data.data_dir=DATA                       # all 24 RAVDESS actors, ravdess_6fold
  avjax train --config experiments/avjax_audio.py:full,tpu_v3_8 --workdir gs://.../avjax_audio
  avjax train --config experiments/avjax_audio.py:full --workdir runs/avjax_audio_crema \\
      --config.data.dataset=crema_d --config.data.protocol=crema_5fold --config.data.data_dir=DATA
  avjax train --config experiments/avjax_audio.py:smoke --workdir /tmp/avjax_audio_smoke

Arguments (comma list): the one variant `audio` (default), plus any of `full`
(the same net and 80 epochs, evaluated every epoch instead of every 30 steps:
for a GPU/TPU on all 24 RAVDESS actors or CREMA-D; not tuned there, there is
no validation set here to tune it on), `small` (the same net and recipe; the results table's CPU size), `smoke`
(CPU in seconds: tiny widths, 6 steps), `demo`, `cpu`, `gpu`, `tpu_v3_8`,
`kaggle_tpu_v5e_8`.
"""

from __future__ import annotations

import ml_collections

import _base

VARIANTS = ("audio",)
EPOCHS = 80
ENSEMBLE_SIZE = 3  # Members of the `ensemble` flag: seeds +0, +1, +2.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, flags = _base.parse_args(arg, VARIANTS, default="audio",
                              extra_flags=("full", "ensemble"))
  if "ensemble" in flags:
    return _ensemble_config(flags - {"ensemble"})
  smoke, full = "smoke" in flags, "full" in flags
  c = _base.base_config(num_epochs=EPOCHS, batch_size=32, learning_rate=1e-3)
  c.system = "avjax audio"
  c.paper_accuracy = -1.0
  c.paper_protocol = ""

  c.data.feature_set = "logmel"
  m = c.model
  m.name = "avjax_audio"
  m.inputs = ("logmel", "logmel_mask")
  m.input_pool = 2
  m.conv2d_features = (4,) if smoke else (32, 64)
  m.tdnn_features = (8, 8) if smoke else (256, 256, 256)
  m.kernel_size = 3
  m.attention_hidden = 8 if smoke else 64
  m.hidden = 8 if smoke else 256
  m.dropout_rate = 0.3
  m.normalize = "global"
  m.active_db = 30.0
  m.eval_crop = 0
  m.eval_crops = 3

  key, mask = "logmel", "logmel_mask"
  c.data.augment = ml_collections.ConfigDict({
      "speed_perturb": {"enabled": False, "key": key, "mask_key": mask,
                        "min_rate": 0.9, "max_rate": 1.1},
      "time_crop": {"enabled": True, "key": key, "mask_key": mask, "length": 200,
                    "active_db": 30.0},
      "spec_augment": {"enabled": True, "key": key, "time_masks": 2, "time_width": 20,
                       "freq_masks": 2, "freq_width": 8},
      "mixup": {"enabled": False, "keys": [key], "alpha": 0.2},
  })

  c.loss.label_smoothing = 0.1
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 30
  c.train.eval_every_steps = 30  # Every 2 epochs of the 12-actor set's 8 training actors.

  _base.apply_hardware(c, flags)
  if full:
    c.train.eval_every_steps = 0  # Once per epoch.
  if "demo" in flags:
    _base.apply_demo_train(c)
    c.train.num_epochs = 15.0
  if "small" in flags:
    c.train.log_every_steps = 10
    c.train.keep_checkpoints = 1
  if smoke:
    _base.apply_smoke_train(c)
    c.data.augment.time_crop.length = 200
  return c


def _ensemble_config(flags: set[str]) -> ml_collections.ConfigDict:
  """`ensemble`: ENSEMBLE_SIZE copies of the single system, trained with seeds
  offset by 0, 1, 2 (each its own run, on the same fold), their softmax
  probabilities averaged (`decision_fusion`, rule `mean`); nothing is trained
  in the fusion run itself."""
  member = ",".join(["audio", *sorted(flags)])
  c = _base.base_config(num_epochs=0)
  c.system = f"avjax audio, {ENSEMBLE_SIZE}-seed ensemble"
  c.paper_accuracy = -1.0
  c.paper_protocol = ""
  c.model.name = "decision_fusion"
  c.model.rule = "mean"
  names = [f"seed_{i}" for i in range(ENSEMBLE_SIZE)]
  _base.use_branches(c, {n: get_config(member) for n in names},
                     seed_offsets={n: i for i, n in enumerate(names)})
  c.train.num_train_steps = 0  # A fixed rule: the run only evaluates.
  _base.apply_hardware(c, flags)
  if "smoke" in flags:
    _base.apply_smoke_train(c)
    c.train.num_train_steps = 0
  return c
