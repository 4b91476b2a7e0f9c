"""Attention blocks for S4 (Mocanu et al. 2023): where to look in a feature map,
which channels matter, which snippets matter, and what each modality's snippets
say about the other's.

Spatial and channel attention follow CBAM (Woo et al. 2018) rather than
squeeze-and-excitation: the review asks for both a spatial and a channel map, and
CBAM is the common design that gives both, each a sigmoid gate (weights in (0, 1),
not a distribution). Temporal attention, by contrast, is a softmax over snippets,
so its weights sum to one and it can be read as "which snippets carry the emotion".
Cross-modal attention is multi-head dot-product attention in both directions
(video queries over audio snippets, audio queries over video snippets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avjax.layers.conv import Conv

Array = Any


class ChannelAttention(nn.Module):
  """CBAM channel gate on (B, *spatial, C): a shared two-layer MLP on the spatial
  average and the spatial max, summed, sigmoid, times the input.

  Returns (gated map, gate (B, C)); the gate is returned so tests and analysis
  can inspect it without sow.
  """
  reduction: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    c = x.shape[-1]
    hidden = max(c // self.reduction, 1)
    axes = tuple(range(1, x.ndim - 1))
    # Pooled statistics in float32: a spatial mean of bf16 maps loses digits.
    xf = x.astype(jnp.float32)
    pooled = jnp.stack([jnp.mean(xf, axis=axes), jnp.max(xf, axis=axes)])  # (2, B, C)
    fc1 = nn.Dense(hidden, dtype=self.dtype, name="fc1")
    fc2 = nn.Dense(c, dtype=self.dtype, name="fc2")
    logits = jnp.sum(fc2(nn.relu(fc1(pooled.astype(self.dtype)))), axis=0)
    gate = nn.sigmoid(logits.astype(jnp.float32))
    shape = (x.shape[0],) + (1,) * len(axes) + (c,)
    return x * gate.reshape(shape).astype(x.dtype), gate


class SpatialAttention(nn.Module):
  """CBAM spatial gate on (B, *spatial, C): channel mean and max stacked, one
  convolution to a single map, sigmoid, times the input.

  `kernel_size` sets the dimensionality (e.g. (7, 7) for a spectrogram map,
  (1, 7, 7) for a video map, a per-frame gate). `conv_factory(features,
  kernel_size, **kw)` builds the convolution; models pass `avjax.models.conv` so
  the gate follows the model's convolution implementation, and the default is
  `avjax.layers.Conv` (this package must not import `avjax.models`).

  Returns (gated map, gate (B, *spatial)).
  """
  kernel_size: Sequence[int] = (7, 7)
  conv_factory: Callable[..., nn.Module] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    ksize = tuple(self.kernel_size)
    if len(ksize) != x.ndim - 2:
      raise ValueError(f"kernel_size {ksize} does not match a map of shape {x.shape}")
    xf = x.astype(jnp.float32)
    stats = jnp.stack([jnp.mean(xf, axis=-1), jnp.max(xf, axis=-1)], axis=-1)
    factory = self.conv_factory or Conv
    # A bias is useful here: it sets the gate's resting level.
    logits = factory(1, ksize, padding="SAME", use_bias=True, dtype=self.dtype,
                     name="conv")(stats.astype(self.dtype))
    gate = nn.sigmoid(logits[..., 0].astype(jnp.float32))
    return x * gate[..., None].astype(x.dtype), gate


class CBAM(nn.Module):
  """Channel gate then spatial gate (CBAM's order). Returns (map, channel gate,
  spatial gate)."""
  reduction: int = 8
  kernel_size: Sequence[int] = (7, 7)
  conv_factory: Callable[..., nn.Module] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array, Array]:
    x, channel_gate = ChannelAttention(self.reduction, self.dtype, name="channel")(x)
    x, spatial_gate = SpatialAttention(tuple(self.kernel_size), self.conv_factory,
                                       self.dtype, name="spatial")(x)
    return x, channel_gate, spatial_gate


class TemporalAttention(nn.Module):
  """Attention pooling over snippets: score_s = w . tanh(W x_s + b), softmax over
  s (masked snippets get zero weight), output sum_s a_s x_s.

  x: (B, S, D); mask: optional (B, S), nonzero where a snippet is real.
  Returns (pooled (B, D), weights (B, S) summing to one).
  """
  hidden: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, Array]:
    h = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype, name="proj")(x))
    scores = nn.Dense(1, use_bias=False, dtype=self.dtype, name="score")(h)[..., 0]
    scores = scores.astype(jnp.float32)
    if mask is not None:
      scores = jnp.where(mask > 0, scores, jnp.finfo(jnp.float32).min)
    weights = nn.softmax(scores, axis=-1)
    pooled = jnp.einsum("bs,bsd->bd", weights, x.astype(jnp.float32))
    return pooled.astype(x.dtype), weights


class CrossModalAttention(nn.Module):
  """Two-way cross-attention over paired snippet sequences.

  Video snippets query the audio snippets (audio-to-video: what the voice says
  about each visual snippet) and audio snippets query the video ones; each result
  is added back to its stream (residual) and layer-normalised, so a stream keeps
  its own information and gains the other's. Both sequences must already share
  the width D (the model projects them).

  video, audio: (B, S, D). Returns (video attended (B, S, D), audio attended
  (B, S, D)). The attention weights are sown under 'intermediates' when
  `sow_weights` is set.
  """
  num_heads: int = 4
  dropout_rate: float = 0.0
  sow_weights: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: Array, audio: Array, *, train: bool) -> tuple[Array, Array]:
    if video.shape[-1] != audio.shape[-1]:
      raise ValueError(f"streams must share a width, got {video.shape} and {audio.shape}")

    def attend(name, queries, context):
      attn = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype,
          deterministic=not train, name=name)
      y = attn(queries, context, sow_weights=self.sow_weights)
      return nn.LayerNorm(dtype=self.dtype, name=name + "_norm")(queries + y)

    video_out = attend("audio_to_video", video, audio)
    audio_out = attend("video_to_audio", audio, video)
    return video_out, audio_out
