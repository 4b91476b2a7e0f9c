"""S1, Sultana et al. 2024: a 1D CNN on MFCC frames and a 3D CNN on face clips.

The paper fixes the layer types, the dense widths (256/64 audio, 64 video) and the
video's four Conv3D layers (16, 16, 32, 32 filters, 3x3x3) with two max-pools among
them. It leaves the audio convolution widths, kernel sizes and paddings open; our
choices are the defaults below and are written down in experiments/sultana2024.py.
The 64-wide penultimate layer is returned as `embedding` because the fusion net
(a later issue) concatenates exactly these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avjax import layers
from avjax.models import conv, max_pool, register_model

Array = Any


class _Head(nn.Module):
  """Flatten -> Dense ReLU stack (the last one is the embedding) -> logits."""
  hidden: Sequence[int]
  num_classes: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    embedding = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return {"logits": logits.astype(jnp.float32),
            "embedding": embedding.astype(jnp.float32)}


@register_model("sultana_audio")
class Conv1DAudioNet(nn.Module):
  """Conv1D + max-pool blocks over time on (time, n_mfcc) frames, Dense 256, 64."""
  num_classes: int = 8
  features: Sequence[int] = (64, 128, 128)
  kernel_size: int = 5
  pool_size: int = 2
  hidden: Sequence[int] = (256, 64)
  dropout_rate: float = 0.0
  # Per-clip mean/variance normalisation of each coefficient over the real
  # frames (CMVN). Raw MFCCs span hundreds (c0) to units, which makes the first
  # steps' loss explode; the paper does not say, so this is our choice.
  cmvn: bool = True
  input_key: str = "mfcc"
  mask_key: str | None = "mfcc_mask"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    x = jnp.asarray(inputs[self.input_key], jnp.float32)  # (B, T, F)
    mask = jnp.ones(x.shape[:2] + (1,), jnp.float32)
    if self.mask_key and self.mask_key in inputs:
      mask = jnp.asarray(inputs[self.mask_key], jnp.float32)[..., None]
    if self.cmvn:
      x = layers.masked_cmvn(x, mask)
    # Padded frames are zeroed so that what the pad holds cannot leak in.
    x = (x * mask).astype(self.dtype)
    for width in self.features:
      x = conv(width, (self.kernel_size,), padding="SAME", dtype=self.dtype,
               activation="relu")(x)
      x = max_pool(x, (self.pool_size,), strides=(self.pool_size,))
    return _Head(tuple(self.hidden), self.num_classes, self.dropout_rate,
                 self.dtype)(x, train=train)


@register_model("sultana_video")
class Conv3DVideoNet(nn.Module):
  """Conv3D 16, 16, pool, 32, 32, pool over (T, H, W, C) uint8 clips; Dense 64."""
  num_classes: int = 8
  features: Sequence[int] = (16, 16, 32, 32)
  kernel_size: Sequence[int] = (3, 3, 3)
  pool_after: Sequence[int] = (1, 3)  # Indices of the convs followed by a max-pool.
  pool_size: Sequence[int] = (2, 2, 2)
  hidden: Sequence[int] = (64,)
  dropout_rate: float = 0.0
  input_key: str = "frames3d"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Mapping[str, Array], *, train: bool) -> dict:
    # uint8 on the wire (4x less host->device traffic), scaled here.
    x = jnp.asarray(inputs[self.input_key], self.dtype) / 255.0  # (B, T, H, W, C)
    for i, width in enumerate(self.features):
      x = conv(width, tuple(self.kernel_size), padding="SAME", dtype=self.dtype,
               activation="relu")(x)
      if i in self.pool_after:
        x = max_pool(x, tuple(self.pool_size), strides=tuple(self.pool_size))
    return _Head(tuple(self.hidden), self.num_classes, self.dropout_rate,
                 self.dtype)(x, train=train)
