"""avjax audio: a from-scratch speech emotion system on log-mel, built for unseen
actors (not a paper's recipe; the seed systems are S1-S6).

Model (`avjax_audio`, avjax/models/avjax_audio.py): per-utterance mean/variance
normalisation of each mel band over the real frames; frames averaged in pairs
(20 ms steps); a 2D conv front-end (3x3 conv-BN-ReLU + 2x2 max-pool, 16 and 32
channels); its mel and channel axes flattened per step and projected to 128;
three residual 1D blocks over time (128 wide, kernel 3, max-pool 2 between);
masked attentive statistics pooling (weighted mean and std over time); dropout
0.3; Dense 128 ReLU (the `embedding`); Dense classes. About 0.4 M parameters.

Training (Grain transforms on the training split only, input_pipeline/augment.py):
speed perturbation 0.9-1.1 on the log-mel (tempo and pitch together), a random
3 s crop (300 frames), SpecAugment (2 time masks up to 30 frames, 2 mel masks up
to 8 bands), mixup (alpha 0.2); cross-entropy with label smoothing 0.1; AdamW
(learning rate 1e-3, weight decay 1e-4) with a warmup-cosine schedule, batch 32,
60 epochs; the checkpoint reported is the best by validation UAR. Evaluation
scores the whole clip (the net pools over time with the mask).

Choices and their validation evidence: see "Selection" below. Every choice was
made on the validation actors of folds 0 and 1 of `actor_kfold` (k = 6) over the
shared real set (RAVDESS actors 1-12, ../shared/real/ravdess_speech_16k); test
actors were not looked at, and actors 13-24 are not in the set at all.

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
(twice the widths and 80 epochs: for a GPU/TPU on all 24 RAVDESS actors or
CREMA-D), `small` (the same net and recipe; the results table's CPU size), `smoke`
(CPU in seconds: tiny widths, 6 steps), `demo`, `cpu`, `gpu`, `tpu_v3_8`,
`kaggle_tpu_v5e_8`.
"""

from __future__ import annotations

import ml_collections

import _base

VARIANTS = ("audio",)
EPOCHS = 40


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  _, flags = _base.parse_args(arg, VARIANTS, default="audio", extra_flags=("full",))
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
  m.conv2d_features = (4,) if smoke else (32, 64) if full else (16, 32)
  m.tdnn_features = (8, 8) if smoke else (256, 256, 256) if full else (128, 128, 128)
  m.kernel_size = 3
  m.attention_hidden = 8 if smoke else 64
  m.hidden = 8 if smoke else 256 if full else 128
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
    c.train.num_epochs = 80.0
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
