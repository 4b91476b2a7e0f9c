"""Per-clip normalisation over the real (unpadded) time steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cmvn(x: jnp.ndarray, mask: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
  """Cepstral mean/variance normalisation: each feature of (B, T, F) `x` to zero
  mean and unit variance over the steps where `mask` (B, T, 1) is 1.

  Raw MFCCs span hundreds (c0) to units, which makes a net's first steps
  explode. Statistics are float32 whatever the compute dtype; padded steps do not
  count (they are not zeroed here: callers decide what padding becomes).
  """
  x = x.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
  mean = jnp.sum(x * mask, axis=1, keepdims=True) / n
  var = jnp.sum(jnp.square((x - mean) * mask), axis=1, keepdims=True) / n
  return (x - mean) * jax.lax.rsqrt(var + eps)
