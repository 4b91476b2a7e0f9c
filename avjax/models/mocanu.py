"""S4, Mocanu, Tapu & Zaharia 2023: snippet-level 3D/2D ResNets with attention,
cross-modal fusion and a metric-learning embedding.

Each clip arrives as S paired snippets (feature set `snippets`): S video snippets
of T RGB face crops and S log-mel spectrogram snippets covering the same spans.

  video snippet -> R3D-18 -> CBAM (channel, then spatial gate) -> global avg pool
  audio snippet -> ResNet-18 (2D, one input channel)            -> global avg pool
  both: Dense to a shared width + a learned snippet-position embedding
  -> cross-modal attention (video<-audio and audio<-video, multi-head)
  -> temporal attention over the S snippets, per stream (softmax, weighted sum)
  -> concatenate -> fusion Dense = `embedding` (what the triplet loss acts on)
  -> ReLU, dropout, Dense -> `logits`.

The review names the pieces, not their order or sizes. Ours: cross-modal
attention runs on the snippet sequences before temporal pooling (pooling first
would leave one vector per modality, nothing for "relevance of paired snippets"
to weigh); the embedding is the linear fusion output (before the ReLU), so it is
not confined to the positive orthant when the loss L2-normalises it. Widths and
depths are configurable (`widths`, `blocks`) so a smoke config is tiny;
`stem_stride` / `audio_stem_stride` downsample at the stem for CPU runs.

No pretrained weights are used (the review does not say whether they had any).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avjax.layers.attention import CBAM, CrossModalAttention, TemporalAttention
from avjax.models import conv, max_pool, register_model

Array = Any

# Kinetics RGB statistics (torchvision's video models); only a fixed affine map
# in front of the stem's BatchNorm, so the exact values matter little.
_RGB_MEAN = (0.43216, 0.394666, 0.37645)
_RGB_STD = (0.22803, 0.22145, 0.216989)


def _pad(kernel: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Symmetric k//2 padding (torchvision's ResNets), not XLA's SAME, which pads
  the high side more when a stride-2 conv meets an even size."""
  return tuple((k // 2, k // 2) for k in kernel)


class BasicBlock(nn.Module):
  """ResNet basic block, 2D or 3D by `ndim`: conv3-BN-ReLU-conv3-BN plus the
  shortcut (1x1 conv + BN when the shape changes), ReLU."""
  features: int
  strides: Sequence[int]
  ndim: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    k = (3,) * self.ndim
    strides = tuple(self.strides)
    bn = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,  # noqa: E731
                                   epsilon=1e-5, dtype=self.dtype, **kw)
    y = conv(self.features, k, strides=strides, padding=_pad(k), use_bias=False,
             dtype=self.dtype)(x)
    y = nn.relu(bn()(y))
    y = conv(self.features, k, padding=_pad(k), use_bias=False, dtype=self.dtype)(y)
    # Zero-initialised last BN scale: each block starts as the identity, which
    # helps training from scratch (Goyal et al. 2017).
    y = bn(scale_init=nn.initializers.zeros)(y)
    shortcut = x
    if any(s != 1 for s in strides) or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1,) * self.ndim, strides=strides,
                      padding="VALID", use_bias=False, dtype=self.dtype)(x)
      shortcut = bn()(shortcut)
    return nn.relu(y + shortcut)


class ResNetTrunk(nn.Module):
  """Stem + stages of BasicBlocks; the first stage keeps the resolution, every
  later one halves each axis (R3D-18 halves time too). Returns the last map."""
  widths: Sequence[int]
  blocks: Sequence[int]
  stem_kernel: Sequence[int]
  stem_stride: Sequence[int]
  stem_pool: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    ndim = x.ndim - 2
    if len(self.widths) != len(self.blocks) or not self.widths:
      raise ValueError(f"widths {tuple(self.widths)} and blocks {tuple(self.blocks)} "
                       "must be non-empty and of equal length")
    kernel = tuple(self.stem_kernel)
    x = conv(self.widths[0], kernel, strides=tuple(self.stem_stride),
             padding=_pad(kernel), use_bias=False, dtype=self.dtype, name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="stem_bn")(x)
    x = nn.relu(x)
    if self.stem_pool:  # ResNet-18's 3x3 / 2 max-pool after the stem.
      x = max_pool(x, (3,) * ndim, strides=(2,) * ndim, padding="SAME")
    for stage, (width, count) in enumerate(zip(self.widths, self.blocks)):
      for i in range(count):
        strides = (2 if stage > 0 and i == 0 else 1,) * ndim
        x = BasicBlock(width, strides, ndim, self.dtype,
                       name=f"stage{stage}_block{i}")(x, train=train)
    return x


@register_model("mocanu_av")
class AttentiveR3DResNetAV(nn.Module):
  """Audio-visual snippet network of S4; see the module docstring.

  Attributes (besides num_classes, dtype):
    widths, blocks: per-stage widths and BasicBlock counts, shared by both
      trunks unless `audio_widths` / `audio_blocks` are given (R3D-18 and
      ResNet-18: 64/128/256/512, 2/2/2/2).
    stem_stride: video stem stride (T, H, W); R3D-18 uses (1, 2, 2).
    audio_stem_stride: audio stem stride (both axes); ResNet-18 uses 2, then a
      3x3/2 max-pool (`audio_stem_pool`).
    attention_reduction: CBAM channel-MLP reduction.
    spatial_kernel: CBAM spatial-gate kernel on the (T, H, W) map.
    model_dim, num_heads: width and heads of cross-modal attention.
    temporal_hidden: hidden width of the temporal-attention scorer.
    fusion_dim: width of the fused embedding.
    dropout_rate: on the cross-attention weights and before the classifier.
  """
  num_classes: int = 8
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)
  audio_widths: Sequence[int] | None = None
  audio_blocks: Sequence[int] | None = None
  stem_stride: Sequence[int] = (1, 2, 2)
  audio_stem_stride: int = 2
  audio_stem_pool: bool = True
  attention_reduction: int = 16
  spatial_kernel: Sequence[int] = (1, 7, 7)
  model_dim: int = 256
  num_heads: int = 4
  temporal_hidden: int = 128
  fusion_dim: int = 256
  dropout_rate: float = 0.0
  video_key: str = "video_snippets"
  audio_key: str = "audio_snippets"
  dtype: Any = jnp.float32

  def _video_features(self, video: Array, *, train: bool) -> Array:
    """(B, S, T, H, W, 3) uint8 -> (B, S, C): one R3D pass per snippet."""
    b, s = video.shape[:2]
    x = jnp.asarray(video, jnp.float32).reshape((b * s,) + video.shape[2:]) / 255.0
    x = ((x - jnp.asarray(_RGB_MEAN)) / jnp.asarray(_RGB_STD)).astype(self.dtype)
    x = ResNetTrunk(tuple(self.widths), tuple(self.blocks), (3, 7, 7),
                    tuple(self.stem_stride), False, self.dtype, name="video_trunk")(
                        x, train=train)
    x, channel_gate, spatial_gate = CBAM(
        self.attention_reduction, tuple(self.spatial_kernel), conv_factory=conv,
        dtype=self.dtype, name="video_cbam")(x)
    self.sow("intermediates", "video_channel_gate", channel_gate)
    self.sow("intermediates", "video_spatial_gate", spatial_gate)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    return x.reshape(b, s, -1)

  def _audio_features(self, audio: Array, *, train: bool) -> Array:
    """(B, S, M, F) log-mel -> (B, S, C): one ResNet-18 pass per snippet."""
    b, s = audio.shape[:2]
    x = jnp.asarray(audio, jnp.float32)
    # Per-clip standardisation over all its snippets (one mean and variance per
    # clip): log-mel levels depend on recording gain, and a shared statistic keeps
    # the loudness differences between snippets that temporal attention may use.
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    var = jnp.var(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.sqrt(var + 1e-5)
    x = x.reshape((b * s,) + audio.shape[2:] + (1,)).astype(self.dtype)
    widths = tuple(self.audio_widths or self.widths)
    blocks = tuple(self.audio_blocks or self.blocks)
    stride = (self.audio_stem_stride,) * 2
    x = ResNetTrunk(widths, blocks, (7, 7), stride, self.audio_stem_pool, self.dtype,
                    name="audio_trunk")(x, train=train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return x.reshape(b, s, -1)

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    video, audio = inputs[self.video_key], inputs[self.audio_key]
    if video.shape[:2] != audio.shape[:2]:
      raise ValueError(f"video {video.shape} and audio {audio.shape} snippets must pair "
                       "up: same batch and snippet count")
    s = video.shape[1]
    v = self._video_features(video, train=train)
    a = self._audio_features(audio, train=train)

    # A shared width and the snippet index: cross-attention is order-blind, and
    # the position lets it learn that snippet i of one stream pairs with i of the
    # other.
    position = self.param("snippet_position", nn.initializers.normal(0.02),
                          (s, self.model_dim), jnp.float32)
    v = nn.Dense(self.model_dim, dtype=self.dtype, name="video_proj")(v.astype(self.dtype))
    a = nn.Dense(self.model_dim, dtype=self.dtype, name="audio_proj")(a.astype(self.dtype))
    v = v + position.astype(self.dtype)
    a = a + position.astype(self.dtype)
    v, a = CrossModalAttention(self.num_heads, self.dropout_rate, dtype=self.dtype,
                               name="cross")(v, a, train=train)

    v, v_weights = TemporalAttention(self.temporal_hidden, self.dtype,
                                     name="video_temporal")(v)
    a, a_weights = TemporalAttention(self.temporal_hidden, self.dtype,
                                     name="audio_temporal")(a)
    self.sow("intermediates", "video_temporal_weights", v_weights)
    self.sow("intermediates", "audio_temporal_weights", a_weights)

    fused = nn.Dense(self.fusion_dim, dtype=self.dtype, name="fusion")(
        jnp.concatenate([v, a], axis=-1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(fused))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return {"logits": logits.astype(jnp.float32),
            "embedding": fused.astype(jnp.float32)}
