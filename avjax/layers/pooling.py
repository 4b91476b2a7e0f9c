"""Max-pooling whose gradient is fast on CPU.

XLA:CPU computes max-pool's gradient with select-and-scatter, ~20x the cost of
the forward on the S1 video net (0.59 s vs 0.03 s per step at batch 32), which
becomes a visible share of a train step once the convolutions are fast. For
non-overlapping VALID windows (window == strides, what avjax's models use) the
CPU path's backward instead compares each window offset's strided slice of the
input with the pooled output and routes the gradient to the first maximum in
window order, the element select-and-scatter picks, so ties (common after a
ReLU: all-zero windows) match exactly. Other configurations, and TPU/GPU, use
`flax.linen.max_pool`. impl='onednn' (see avjax.layers.conv) pools as 'cpu'.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from avjax.layers.conv import resolve_impl

Array = Any


def _offset_slices(x, window, out_spatial):
  """For each window offset (row-major), the strided slice (B, *out, C)."""
  b, c = x.shape[0], x.shape[-1]
  for offset in itertools.product(*(range(k) for k in window)):
    start = (0,) + offset + (0,)
    limit = (b,) + tuple(o + (n - 1) * k + 1 for o, n, k in
                         zip(offset, out_spatial, window)) + (c,)
    yield lax.slice(x, start, limit, (1,) + tuple(window) + (1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x, window):
  return nn.max_pool(x, window, strides=window, padding="VALID")


def _tiled_fwd(x, window):
  y = _tiled_max_pool(x, window)
  return y, (x, y)


def _tiled_bwd(window, res, g):
  x, y = res
  out_spatial = y.shape[1:-1]
  taken = jnp.zeros(y.shape, jnp.bool_)
  parts = []
  for xs in _offset_slices(x, window, out_spatial):
    hit = (xs == y) & ~taken
    taken = taken | hit
    parts.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
  # (K, B, *out, C) -> (B, out_0, k_0, out_1, k_1, ..., C) -> (B, *out*k, C).
  n = len(window)
  dx = jnp.stack(parts).reshape(*window, *y.shape)
  perm = [n] + [a for i in range(n) for a in (n + 1 + i, i)] + [2 * n + 1]
  dx = jnp.transpose(dx, perm).reshape(
      (y.shape[0],) + tuple(o * k for o, k in zip(out_spatial, window)) + (y.shape[-1],))
  # VALID drops a remainder that fits no window: it gets zero gradient.
  dx = lax.pad(dx, jnp.zeros((), dx.dtype),
               [(0, full - part, 0) for full, part in zip(x.shape, dx.shape)])
  return (dx,)


_tiled_max_pool.defvjp(_tiled_fwd, _tiled_bwd)


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID",
             impl: str = "auto") -> Array:
  """Channels-last max-pool like `flax.linen.max_pool`, (B, *spatial, C)."""
  window = tuple(window)
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  tiled = strides == window and (padding == "VALID" or
                                 (not isinstance(padding, str)
                                  and all(tuple(p) == (0, 0) for p in padding)))
  if resolve_impl(impl) in ("cpu", "onednn") and tiled:  # Both mean "on CPU".
    return _tiled_max_pool(x, window)
  return nn.max_pool(x, window, strides=strides, padding=padding)
