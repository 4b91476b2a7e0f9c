"""S3, Satvik et al. 2025: a 2D CNN on face frames and a CNN-LSTM on MFCCs.

The paper fixes the layer sequence and the widths of the convolutions, LSTMs and
the audio's Dense 64. It leaves open the video's Dense widths, every dropout rate,
activations, padding and how its per-frame video predictions become one per
clip; our choices are the defaults below and are written down in
experiments/satvik2025.py. The max-confidence decision fusion of the two is a
separate model (`decision_fusion`) built on these two as frozen branches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax import layers
from avjax.models import conv, conv_kernel_init, max_pool, register_model

Array = Any


def _mask_or_ones(inputs: Mapping[str, Array], key: str | None, shape) -> Array:
  """The float32 (B, T) mask under `key`, or all ones when it is absent."""
  if key and key in inputs:
    return jnp.asarray(inputs[key], jnp.float32)
  return jnp.ones(shape, jnp.float32)


@register_model("frame_cnn2d")
class FrameCNN2D(nn.Module):
  """Per-frame Conv2D 32/64/128/256 (3x3, each + max-pool 2), Dense, Dense, logits;
  one prediction per clip from the mean per-frame log-probabilities.

  The paper classifies single frames (every 5th frame of a clip). We fold a clip's
  frames into the batch, run the CNN on each and average the per-frame
  log-softmax over the real frames (mask True). Averaged log-probabilities are a
  normalised geometric mean of the frames' distributions; since log_softmax only
  shifts each frame's logits by a constant, averaging raw logits would give the
  same softmax, so the choice only fixes the scale of `logits`. Padded frames
  take part in the computation but get weight zero, so nothing they hold can
  reach the output. `embedding` is the masked mean of the last hidden Dense.
  """
  num_classes: int = 8
  features: Sequence[int] = (32, 64, 128, 256)
  hidden: Sequence[int] = (256, 128)
  dropout_rate: float = 0.5
  input_key: str = "frames2d"
  mask_key: str | None = "frames2d_mask"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    if not self.hidden:
      raise ValueError("FrameCNN2D needs at least one hidden Dense (the embedding)")
    frames = inputs[self.input_key]  # (B, T, H, W, C) uint8.
    b, t = frames.shape[:2]
    mask = _mask_or_ones(inputs, self.mask_key, (b, t))
    # uint8 on the wire, scaled here; frames folded into the batch.
    x = jnp.asarray(frames, self.dtype).reshape((b * t, *frames.shape[2:])) / 255.0
    for width in self.features:
      x = nn.relu(conv(width, (3, 3), padding="SAME", dtype=self.dtype)(x))
      x = max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((b * t, -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      hidden = x  # Before its dropout: the embedding is the layer's output.
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    hidden = hidden.astype(jnp.float32).reshape((b, t, -1))
    frame_logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    log_probs = jax.nn.log_softmax(frame_logits.astype(jnp.float32)).reshape((b, t, -1))

    # Masked means in float32; `where` (not a product) so that even a non-finite
    # padded frame cannot leak in through 0 * inf. A clip without any real frame
    # gets all-zero logits (a uniform prediction).
    weights = mask[..., None]
    n = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    real = weights > 0
    logits = jnp.sum(jnp.where(real, log_probs, 0.0), axis=1) / n
    embedding = jnp.sum(jnp.where(real, hidden, 0.0), axis=1) / n
    return {"logits": logits, "embedding": embedding}


@register_model("mfcc_conv_lstm")
class MFCCConvLSTM(nn.Module):
  """(T, n_mfcc, 1) MFCC image -> Conv2D 64 + BN, Conv2D 128 + BN, pool, dropout,
  Conv2D 256, pool, dropout -> LSTM 256, 128 (sequences), 64 (last state) over
  time -> Dense 64 + dropout -> logits.

  After the convolutions each time step's (frequency x channel) map is flattened
  into one LSTM input vector. Padding (`mask_padding`): frames outside the mask
  are zeroed before the convolutions and the activations of padded steps after
  each convolution block, and the LSTMs stop at the last step that holds a real
  frame (flax's `seq_lengths`), so in eval mode a clip's output depends neither
  on what the padding holds nor on how long it is (in train mode BatchNorm's
  batch statistics still count padded positions). The paper zero-pads to the
  longest clip and runs its layers through the padding (Keras without masking);
  `mask_padding=False` does that, apart from zeroing the padded input frames.
  With `cmvn`, each coefficient is normalised per clip over its real frames (the
  paper says its MFCCs are "normalized", not how).
  """
  num_classes: int = 8
  conv_features: Sequence[int] = (64, 128, 256)
  lstm_features: Sequence[int] = (256, 128, 64)
  hidden: int = 64
  conv_dropout_rate: float = 0.25
  dropout_rate: float = 0.5
  cmvn: bool = True
  mask_padding: bool = True
  input_key: str = "mfcc"
  mask_key: str | None = "mfcc_mask"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    if len(self.conv_features) != 3:
      raise ValueError(f"conv_features needs 3 widths, got {self.conv_features}")
    x = jnp.asarray(inputs[self.input_key], jnp.float32)  # (B, T, F)
    mask = _mask_or_ones(inputs, self.mask_key, x.shape[:2])[..., None]  # (B, T, 1)
    x = jnp.where(mask > 0, x, 0.0)  # `where`: even inf in the padding stays out.
    if self.cmvn:
      x = layers.masked_cmvn(x, mask)
    x = jnp.where(mask > 0, x, 0.0).astype(self.dtype)[..., None]  # (B, T, F, 1)

    def bn(y):
      return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3,
                          dtype=self.dtype)(y)

    # Time mask at the current resolution, (B, T', 1, 1); a pooled step is real
    # when any frame of its window is.
    m = mask[..., None]

    def masked(y, m):
      return y * m.astype(y.dtype) if self.mask_padding else y

    def pool(y, m):
      t = y.shape[1] // 2
      m = m[:, :2 * t].reshape((m.shape[0], t, 2, 1, 1)).max(axis=2)
      return max_pool(y, (2, 2), strides=(2, 2)), m

    c1, c2, c3 = self.conv_features
    x = masked(bn(nn.relu(conv(c1, (3, 3), padding="SAME", dtype=self.dtype)(x))), m)
    x = masked(bn(nn.relu(conv(c2, (3, 3), padding="SAME", dtype=self.dtype)(x))), m)
    x, m = pool(x, m)
    x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
    x = masked(nn.relu(conv(c3, (3, 3), padding="SAME", dtype=self.dtype)(x)), m)
    x, m = pool(x, m)
    x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
    b, steps = x.shape[:2]
    x = x.reshape((b, steps, -1))  # Time is the sequence; (freq x channel) per step.

    seq_lengths = None
    if self.mask_padding:  # Mask is end-padding: the real steps come first.
      seq_lengths = jnp.maximum(jnp.sum(m[:, :, 0, 0], axis=1), 1).astype(jnp.int32)

    def lstm(width):
      # Input kernels: flax's default LeCun normal, drawn flat (quicker to compile
      # on CPU); recurrent kernels keep the default orthogonal init (as Keras).
      return nn.RNN(nn.OptimizedLSTMCell(width, kernel_init=conv_kernel_init,
                                         dtype=self.dtype))

    *seq_widths, last_width = self.lstm_features
    for width in seq_widths:
      x = lstm(width)(x, seq_lengths=seq_lengths)
    (_, last), _ = lstm(last_width)(x, seq_lengths=seq_lengths,
                                    return_carry=True)  # carry = (c, h): h at the end.

    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(last))
    embedding = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return {"logits": logits.astype(jnp.float32),
            "embedding": embedding.astype(jnp.float32)}
