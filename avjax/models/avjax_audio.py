"""avjax's own audio system: a residual CNN on log-mel with attentive statistics
pooling over time (experiments/avjax_audio.py gives the choices and the evidence
behind them).

The net is fully convolutional in time and pools with the clip's mask, so it
trains on random crops and scores the whole clip (or the mean of crops, see
`eval_crop`) with the same weights. Per-utterance normalisation (each mel band to
zero mean and unit variance over the real frames) takes out the recording level
and much of the speaker's spectral tilt, which matters most when the test actors
are unseen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax import layers
from avjax.models import conv, max_pool, register_model

Array = Any


def pool_mask(mask: Array, factor: int) -> Array:
  """(B, T) mask -> (B, T // factor): a pooled step is real if any step in it is."""
  if factor == 1:
    return mask
  b, t = mask.shape
  t_out = t // factor
  return jnp.max(mask[:, :t_out * factor].reshape(b, t_out, factor), axis=-1)


def _bn(train: bool, dtype, name=None):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def active_frames(x: Array, mask: Array, active_db: float) -> Array:
  """(B, T) 1.0 where a frame's total log-mel power (natural log) is within
  `active_db` dB of the clip's loudest real frame, else 0.0."""
  energy = jax.scipy.special.logsumexp(x, axis=-1)                   # (B, T)
  loudest = jnp.max(jnp.where(mask > 0, energy, -jnp.inf), axis=1, keepdims=True)
  threshold = loudest - active_db * jnp.log(10.0) / 10.0
  return (energy >= threshold).astype(jnp.float32)


def normalize_utterance(x: Array, mask: Array, mode: str) -> Array:
  """(B, T, F) log-mel normalised over the real frames of each clip (see
  AvjaxAudioNet.normalize)."""
  if mode == "band":
    return layers.masked_cmvn(x, mask[..., None])
  if mode == "global":
    b, t, f = x.shape
    flat = layers.masked_cmvn(x.reshape(b, t * f, 1),
                              jnp.repeat(mask, f, axis=1)[..., None])
    return flat.reshape(b, t, f)
  if mode == "none":
    return x
  raise ValueError(f"normalize must be 'band', 'global' or 'none', got {mode!r}")


class _ResBlock1D(nn.Module):
  """Over time: conv k-BN-ReLU-conv k-BN plus a (1x1-BN when the width changes)
  shortcut, ReLU. 1D convolutions with wide channels are GEMMs, which a CPU runs
  near its peak, unlike 2D convolutions with few channels."""
  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k = (self.kernel_size,)
    y = conv(self.features, k, padding="SAME", use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = conv(self.features, k, padding="SAME", use_bias=False, dtype=self.dtype)(y)
    y = _bn(train, self.dtype, "bn2")(y)
    if x.shape[-1] != self.features:
      x = _bn(train, self.dtype, "bn_short")(
          conv(self.features, (1,), use_bias=False, dtype=self.dtype)(x))
    return nn.relu(x + y)


class AttentiveStatsPool(nn.Module):
  """Masked attentive statistics pooling (Okabe et al. 2018) over time: a softmax
  weight per step from a small tanh MLP, then the weighted mean and standard
  deviation. Padded steps get zero weight. (B, T, D), (B, T) -> (B, 2D), (B, T)."""
  hidden: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, mask):
    e = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype)(h))
    score = nn.Dense(1, dtype=self.dtype)(e)[..., 0].astype(jnp.float32)
    score = jnp.where(mask > 0, score, -1e9)
    w = jax.nn.softmax(score, axis=-1)[..., None]
    h = h.astype(jnp.float32)
    mean = jnp.sum(w * h, axis=1)
    var = jnp.sum(w * jnp.square(h), axis=1) - jnp.square(mean)
    std = jnp.sqrt(jnp.maximum(var, 1e-6))
    return jnp.concatenate([mean, std], axis=-1), w[..., 0]


@register_model("avjax_audio")
class AvjaxAudioNet(nn.Module):
  """Log-mel (B, T, F) + mask (B, T) -> 2D conv front-end -> residual 1D blocks
  over time -> attentive statistics pooling -> Dense (the `embedding`) -> logits.

  `input_pool` averages that many frames first (10 ms -> 20 ms at 2: prosody
  needs no finer steps). Each `conv2d_features` entry is a 3x3 conv-BN-ReLU and a
  2x2 max-pool over (time, mel); the map's mel and channel axes are then
  flattened per step and projected (1x1) to the first `tdnn_features` width;
  each `tdnn_features` entry is a residual 1D block, all but the last followed by
  a max-pool of 2 over time. `eval_crop` > 0: at evaluation the clip is cut into
  `eval_crops` windows of that many (input) frames spread over its real frames,
  and the logits are the mean of their log-probabilities (test-time averaging
  over crops); 0 scores the whole clip at once.
  """
  num_classes: int = 8
  input_pool: int = 2
  conv2d_features: Sequence[int] = (16, 32)
  tdnn_features: Sequence[int] = (128, 128, 128)
  kernel_size: int = 3
  attention_hidden: int = 64
  hidden: int = 128
  dropout_rate: float = 0.3
  # Per-utterance normalisation over the real frames: 'band' (each mel band to
  # zero mean, unit variance), 'global' (one mean and variance per clip: keeps
  # the spectral envelope) or 'none'.
  normalize: str = "band"
  # > 0: frames quieter than the clip's loudest by more than this many dB are
  # treated as padding (masked out), in training and at evaluation alike, so
  # the silence around a take neither enters the statistics nor the pooling.
  active_db: float = 0.0
  eval_crop: int = 0
  eval_crops: int = 3
  input_key: str = "logmel"
  mask_key: str | None = "logmel_mask"
  dtype: Any = jnp.float32

  def _features(self, x, mask, *, train: bool):
    """(B, T, F) normalised log-mel, (B, T) mask -> (B, 2 * width) pooled."""
    b = x.shape[0]
    x = x * mask[..., None]
    p = int(self.input_pool)
    if p > 1:
      t = x.shape[1] // p * p
      x = jnp.mean(x[:, :t].reshape(b, t // p, p, x.shape[-1]), axis=2)
      mask = pool_mask(mask, p)
    x = x[..., None].astype(self.dtype)                               # (B, T, F, 1)
    for width in self.conv2d_features:
      x = conv(width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_bn(train, self.dtype)(x))
      x = max_pool(x, (2, 2), strides=(2, 2))
      mask = pool_mask(mask, 2)
    _, t, f, c = x.shape
    x = x.reshape(b, t, f * c) * mask[..., None].astype(self.dtype)
    x = conv(self.tdnn_features[0], (1,), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_bn(train, self.dtype)(x))
    for i, width in enumerate(self.tdnn_features):
      x = _ResBlock1D(width, self.kernel_size, dtype=self.dtype)(x, train=train)
      if i < len(self.tdnn_features) - 1:
        x = max_pool(x, (2,), strides=(2,))
        mask = pool_mask(mask, 2)
      # Padded steps are zeroed so the next block cannot read what padding held.
      x = x * mask[..., None].astype(x.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    pooled, _ = AttentiveStatsPool(self.attention_hidden, dtype=self.dtype)(x, mask)
    return pooled

  def _head(self, pooled, *, train: bool):
    z = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled.astype(self.dtype))
    embedding = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(z))
    z = nn.Dropout(self.dropout_rate, deterministic=not train)(embedding)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(z)
    return logits.astype(jnp.float32), embedding.astype(jnp.float32)

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    x = jnp.asarray(inputs[self.input_key], jnp.float32)              # (B, T, F)
    if self.mask_key and self.mask_key in inputs:
      mask = jnp.asarray(inputs[self.mask_key], jnp.float32)
    else:
      mask = jnp.ones(x.shape[:2], jnp.float32)
    if self.active_db > 0:
      mask = mask * active_frames(x, mask, self.active_db)
    x = normalize_utterance(x, mask, self.normalize)
    t = x.shape[1]
    crop = int(self.eval_crop)
    if train or crop <= 0 or crop >= t:
      logits, embedding = self._head(self._features(x, mask, train=train), train=train)
      return {"logits": logits, "embedding": embedding}
    # Test-time averaging: n windows of `crop` frames, evenly spread over the
    # span from the clip's first to its last kept frame (its active span when
    # active_db masks the silence around a take, as the training crop does),
    # scored as one batch of n * B.
    n = max(int(self.eval_crops), 1)
    kept = mask > 0
    first = jnp.argmax(kept, axis=1)                                  # (B,)
    last = t - 1 - jnp.argmax(kept[:, ::-1], axis=1)
    span = jnp.maximum(last - first + 1, 0)
    room = jnp.maximum(span - crop, 0).astype(jnp.float32)
    frac = jnp.linspace(0.0, 1.0, n) if n > 1 else jnp.full((1,), 0.5)
    starts = first[None, :] + jnp.round(room[None, :] * frac[:, None]).astype(jnp.int32)
    starts = jnp.minimum(starts, t - crop)                            # (n, B)
    idx = starts[..., None] + jnp.arange(crop)[None, None, :]        # (n, B, crop)
    xs = jnp.take_along_axis(x[None], idx[..., None], axis=2)        # (n, B, crop, F)
    ms = jnp.take_along_axis(mask[None], idx, axis=2)                # (n, B, crop)
    b = x.shape[0]
    pooled = self._features(xs.reshape(n * b, crop, x.shape[-1]),
                            ms.reshape(n * b, crop), train=False)
    logits, embedding = self._head(pooled, train=False)
    logp = jax.nn.log_softmax(logits, axis=-1).reshape(n, b, -1)
    return {"logits": jnp.mean(logp, axis=0),
            "embedding": jnp.mean(embedding.reshape(n, b, -1), axis=0)}
