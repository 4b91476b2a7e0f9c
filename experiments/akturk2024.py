"""S5, Aktürk & Keçeli 2024: a two-branch operational (Self-ONN) network over one
key frame and the mel spectrogram image, and its single-input ablations.

Source: the review /work/shared/papers/001_*.txt, method 2 (the paper itself,
Neurocomputing 588, 127713, is not in the repo). Reported accuracy: RAVDESS 93 %,
MEAD 96 %, MELD 75 % for the two-input network; the review says the two-input
network beat the single-input ones clearly (by 25-45 %) but gives no absolute
single-input numbers, so the ablations carry paper_accuracy = -1. The review does
not say how the data were split; ours is actor-independent (`ravdess_6fold`,
fold 0), so the numbers are not directly comparable.

Inputs (feature set `keyframe_mel`, input_pipeline/features): `keyframe`, the face
crop (96x96 RGB, uint8) of the frame picked by the LUV-difference / brightness /
entropy / contrast-histogram / Laplacian-variance chain, and `mel_image`, the
log-mel spectrogram resized to a 128x128 image in [0, 1].

Choices the review leaves open (ours):
  * depth and widths: three operational conv layers per branch, 16/32/64 filters,
    3x3 kernels, 'SAME' padding, max-pool 2x2 after each; the tanh of the last
    layer's map flattened (12x12x64 and 16x16x64), the two branch vectors
    concatenated, Dense 128 ReLU (the `embedding`), Dense classes; no dropout.
  * flatten, not global average pooling: both inputs are aligned images (a face
    crop, a time-frequency image), so where a pattern sits (brow height, mouth
    corners, a frequency band) carries the emotion, and an average over
    positions discards it. Chosen on the validation actors of the 4 actor folds
    of the 16 x 2 synthetic corpus at `small` (test actors not looked at): mean
    best validation UAR over the folds, average pool -> flatten, key frame
    0.22 -> 0.31, mel 0.38 -> 0.51, fusion 0.35 -> 0.46. With the average pool
    the key-frame net did not fit its training actors (train accuracy 0.25
    after 60 epochs; 1.00 flattened).
  * Taylor order Q = 3 (a common Self-ONN setting); inputs scaled to [-1, 1] and
    squashed by tanh inside every operational layer, which is also the only
    nonlinearity between layers.
  * training: Adam, learning rate 1e-3, batch 32, 60 epochs, gradient clipping
    at norm 1 (higher powers make the early gradients spiky), unweighted
    cross-entropy; the checkpoint reported is the best by validation UAR.

On real speech (issue 18): the `mel` ablation cannot run on audio-only takes.
Its input comes from `keyframe_mel`, a set that needs the video (the key frame
is picked from the face track), so `avjax prepare --features keyframe_mel` on
the shared real set (../shared/real/ravdess_speech_16k: `03-` wav files only)
skips all 720 takes ("no video file for this take") and prepares nothing. Its
row in the real-speech table is therefore empty; it needs the `01-` mp4s of a
full RAVDESS download.

Launch:
  avjax train --config experiments/akturk2024.py:fusion --workdir runs/s5_fusion
  avjax train --config experiments/akturk2024.py:keyframe --workdir runs/s5_keyframe
  avjax train --config experiments/akturk2024.py:mel --workdir runs/s5_mel
  avjax train --config experiments/akturk2024.py:fusion,tpu_v3_8 --workdir gs://.../s5_fusion
  avjax train --config experiments/akturk2024.py:fusion --workdir runs/s5_q1 \\
      --config.model.q_order=1        # plain CNN of the same shape (the CNN baseline)
  avjax train --config experiments/akturk2024.py:fusion,smoke --workdir /tmp/s5_smoke

Arguments (comma list): one of `fusion` (default: both branches), `keyframe`
(key-frame branch only), `mel` (mel branch only), plus any of `smoke` (CPU in
seconds: 4-wide layers, 6 steps), `demo` (the network above, a few epochs on the
small synthetic corpus of `avjax demo`), `small` (8/16/32-wide branches, Dense
32, our 60 epochs at batch 16: the results table's size; at 20 epochs the mel
branch had not fitted its training actors and fold 0's test accuracy was 23.4 %,
28.1 % at 60), `cpu`, `gpu`, `tpu_v3_8`, `kaggle_tpu_v5e_8`.
"""

from __future__ import annotations

import ml_collections

import _base

VARIANTS = ("fusion", "keyframe", "mel")
PAPER = {"fusion": 93.0, "keyframe": -1.0, "mel": -1.0}  # RAVDESS.
PAPER_PROTOCOL = "RAVDESS, split not stated in the review (MEAD 96, MELD 75)"
BRANCHES = {"fusion": ("keyframe", "mel"), "keyframe": ("keyframe",), "mel": ("mel",)}
INPUTS = {"keyframe": "keyframe", "mel": "mel_image"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, flags = _base.parse_args(arg, VARIANTS, default="fusion")
  smoke = "smoke" in flags
  c = _base.base_config(num_epochs=60, batch_size=32, learning_rate=1e-3)
  c.system = "S5 Aktürk 2024"
  c.paper_accuracy = PAPER[variant]
  c.paper_protocol = PAPER_PROTOCOL
  c.optimizer.grad_clip_norm = 1.0

  c.data.feature_set = "keyframe_mel"
  m = c.model
  m.name = "akturk_onn"
  m.branches = BRANCHES[variant]
  m.inputs = tuple(INPUTS[b] for b in BRANCHES[variant])
  m.q_order = 3
  small = "small" in flags and not smoke
  m.keyframe_features = (4, 4) if smoke else (8, 16, 32) if small else (16, 32, 64)
  m.mel_features = (4, 4) if smoke else (8, 16, 32) if small else (16, 32, 64)
  m.kernel_size = 3
  m.pool_size = 2
  m.global_pool = "flatten"
  m.hidden = (8,) if smoke else (32,) if small else (128,)
  m.dropout_rate = 0.0

  _base.apply_hardware(c, flags)
  if "demo" in flags:
    _base.apply_demo_train(c)
    c.train.num_epochs = 15.0
  if small:
    _base.apply_small_train(c, num_epochs=60)
  if smoke:
    _base.apply_smoke_train(c)
  return c
