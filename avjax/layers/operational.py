"""Operational (Self-ONN) convolutions, S5 (Aktürk & Keçeli 2024).

Each weight becomes a nodal operator approximated by an order-Q Maclaurin series:

  out = b + sum_{q=1..Q} conv(W_q, t^q),   t = tanh(x).

The tanh inside the layer bounds the input to [-1, 1] so that the powers cannot
blow up (|t^q| <= 1 for every q); Q = 1 is a plain convolution of tanh(x).

The Q convolutions are computed as ONE convolution over the power-major channel
concat [t, t^2, ..., t^Q] with a kernel of shape (*k, Q*C, O) whose channel block
q-1 is W_q: on TPU that is one large MXU-friendly conv instead of Q small ones,
and on CPU it goes through the same fast `conv_nd` path as `Conv`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avjax.layers.conv import PaddingLike, conv_nd

Array = Any


@functools.lru_cache(maxsize=None)
def tanh_moment(order: int, points: int = 64) -> float:
  """E[tanh(z)^order] for z ~ N(0, 1), by Gauss-Hermite quadrature."""
  z, w = np.polynomial.hermite_e.hermegauss(points)
  return float(np.sum(w * np.tanh(z) ** order) / np.sqrt(2.0 * np.pi))


def operational_init(q_order: int, scale: float = 1.0) -> Callable:
  """Normal init for a (*k, Q*C, O) operational kernel, variance per power block

    Var(W_q) = scale / (Q * fan_in * E[t^(2q)]),   fan_in = prod(k) * C,

  where t = tanh(x) and x is a unit-variance input. Why: with independent
  zero-mean weights, E[out^2] = sum_q fan_in * Var(W_q) * E[t^(2q)] = scale, the
  same second moment a lecun-normal plain conv gives for unit-variance inputs.
  Without the 1/E[t^(2q)] factor the variance would depend on how the tanh
  squashes its input (E[t^2] ~ 0.39, E[t^6] ~ 0.19, so a plain lecun init would
  start at ~0.4x and favour the low powers), and without the 1/Q it would grow
  with the order.
  """
  def init(key, shape, dtype=jnp.float32):
    *ksize, qc, out = shape
    if qc % q_order:
      raise ValueError(f"kernel in-channels {qc} are not a multiple of Q={q_order}")
    c = qc // q_order
    fan_in = math.prod(ksize) * c
    keys = jax.random.split(key, q_order)
    blocks = []
    for q in range(1, q_order + 1):
      std = math.sqrt(scale / (q_order * fan_in * tanh_moment(2 * q)))
      blocks.append(std * jax.random.normal(keys[q - 1], (*ksize, c, out), dtype))
    return jnp.concatenate(blocks, axis=-2)
  return init


def power_concat(x: Array, q_order: int) -> Array:
  """[x, x^2, ..., x^Q] along channels, power-major (block q-1 holds x^q)."""
  powers = [x]
  for _ in range(q_order - 1):
    powers.append(powers[-1] * x)
  return jnp.concatenate(powers, axis=-1) if q_order > 1 else x


class OperationalConv(nn.Module):
  """Self-ONN convolution of Taylor order `q_order`, 1D/2D/3D by len(kernel_size).

  Inputs are squashed with tanh inside the layer (see the module docstring), so
  callers pass raw activations. Parameters: `kernel` (*k, Q*C, O), power-major,
  and `bias` (O,). `impl` as in `avjax.layers.Conv`.
  """
  features: int
  kernel_size: Sequence[int]
  q_order: int = 3
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable | None = None
  bias_init: Callable = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.q_order < 1:
      raise ValueError(f"q_order must be >= 1, got {self.q_order}")
    ksize = tuple(self.kernel_size)
    init = self.kernel_init or operational_init(self.q_order)
    kernel = self.param("kernel", init,
                        ksize + (self.q_order * x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    t = power_concat(jnp.tanh(x), self.q_order)
    y = conv_nd(t, kernel, self.strides, self.padding, self.kernel_dilation,
                impl=self.impl, precision=self.precision)
    if bias is not None:
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y
