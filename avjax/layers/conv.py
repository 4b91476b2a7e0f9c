"""One convolution for every avjax model: plain XLA on TPU/GPU, a faster form on CPU.

XLA:CPU runs 3D convolutions and every convolution's weight gradient through a
slow generic path (openxla/xla#34273): on the S1 video net a 3x3x3 conv and its
two gradients each take several times longer than a 2D conv doing the same work.
Users debug on laptops and CI runs on two cores, so on the CPU backend `conv_nd`
switches to a `jax.custom_vjp` whose three passes are written in forms XLA:CPU
runs well:

- forward and input gradient of a 3D conv: a sum over the depth taps of 2D
  convolutions on (batch * depth) planes (XLA:CPU's 2D convolution is fast);
  1D and 2D keep XLA's own convolution;
- input gradient: the transposed convolution written as a stride-1 convolution
  of the zero-interleaved, padded output gradient with the flipped kernel, so it
  reuses the fast forward;
- weight gradient: im2col patches^T @ grad_out, one GEMM per chunk of output
  rows, the patches built directly in (K*C, N) layout and the chunks sized so
  the 27x patch matrix stays a few MiB (cache friendly, bounded memory),
  instead of XLA's derived convolution.

On TPU and GPU (`impl='auto'`) nothing changes: `lax.conv_general_dilated`.
`benchmarks/conv_ops.py` measures each pass against plain XLA.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = Any
PaddingLike = str | Sequence[tuple[int, int]]

IMPLS = ("auto", "xla", "cpu")

# Bytes of one im2col patch chunk in the weight gradient. Small enough to stay
# near cache, large enough that each GEMM amortises its launch (measured on a
# 2-core EPYC; 8-32 MiB were within noise of each other).
_WGRAD_CHUNK_BYTES = 16 * 2**20

# A 3D forward whose patch rows are at most this many columns (K*C) runs as
# im2col + GEMM instead of depth-shifted 2D convs.
_IM2COL_MAX_COLUMNS = 32

# Per dimensionality: how the CPU path computes the forward (and so the input
# gradient) and the weight gradient. See benchmarks/conv_ops.py for the numbers.
_CPU_PLAN = {
    1: ("xla", "im2col"),
    2: ("xla", "im2col"),
    3: ("shift", "im2col"),
}


def resolve_impl(impl: str) -> str:
  """'auto' -> 'cpu' on the CPU backend, 'xla' on TPU/GPU."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  return impl


def _tuple(v: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
  if isinstance(v, int):
    return (v,) * n
  v = tuple(int(i) for i in v)
  if len(v) != n:
    raise ValueError(f"{name} needs {n} entries, got {v}")
  return v


def explicit_padding(padding: PaddingLike, in_shape: Sequence[int],
                     kernel_shape: Sequence[int], strides: Sequence[int],
                     dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """'SAME'/'VALID'/pairs -> pairs, with XLA's SAME convention (extra pad high)."""
  n = len(kernel_shape)
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return ((0, 0),) * n
    if mode != "SAME":
      raise ValueError(f"padding must be 'SAME', 'VALID' or pairs, got {padding!r}")
    pads = []
    for size, k, s, r in zip(in_shape, kernel_shape, strides, dilation):
      out = -(-size // s)
      total = max((out - 1) * s + (k - 1) * r + 1 - size, 0)
      pads.append((total // 2, total - total // 2))
    return tuple(pads)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if len(pads) != n:
    raise ValueError(f"padding needs {n} pairs, got {padding}")
  return pads


def _dimension_numbers(n: int) -> lax.ConvDimensionNumbers:
  spatial = "DHW"[-n:] if n <= 3 else None
  if spatial is None:
    raise ValueError(f"only 1D, 2D and 3D convolutions are supported, got {n}D")
  return lax.conv_dimension_numbers(
      (1,) * (n + 2), (1,) * (n + 2),
      ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C"))


def _xla_valid(x, w, strides, dilation, out_dtype):
  n = w.ndim - 2
  return lax.conv_general_dilated(
      x, w, strides, "VALID", rhs_dilation=dilation,
      dimension_numbers=_dimension_numbers(n),
      preferred_element_type=out_dtype)


def _out_shape(in_spatial, ksize, strides, dilation):
  return tuple((size - (k - 1) * r - 1) // s + 1
               for size, k, s, r in zip(in_spatial, ksize, strides, dilation))


def _shift_valid(x, w, strides, dilation, out_dtype):
  """3D VALID conv as a sum over depth taps of 2D convs on (B * D_out) planes."""
  b, _, hp, wp, c = x.shape
  kd = w.shape[0]
  sd, rd = strides[0], dilation[0]
  d_out = _out_shape(x.shape[1:2], (kd,), (sd,), (rd,))[0]
  out = None
  for i in range(kd):
    start = i * rd
    planes = lax.slice_in_dim(x, start, start + (d_out - 1) * sd + 1, stride=sd, axis=1)
    planes = planes.reshape(b * d_out, hp, wp, c)
    y = _xla_valid(planes, w[i], strides[1:], dilation[1:], out_dtype)
    out = y if out is None else out + y
  return out.reshape(b, d_out, *out.shape[1:])


def _im2col_valid(x, w, strides, dilation, out_dtype):
  """VALID conv as patches @ kernel, chunked over the batch to bound memory."""
  ksize, (c, o) = w.shape[:-2], w.shape[-2:]
  out_spatial = _out_shape(x.shape[1:-1], ksize, strides, dilation)
  wm = w.reshape(-1, o)
  sample_bytes = math.prod(out_spatial) * wm.shape[0] * x.dtype.itemsize
  b = x.shape[0]
  nb = _largest_divisor_at_most(b, _WGRAD_CHUNK_BYTES // max(sample_bytes, 1))

  def chunk(xc):
    p = _patches(xc, ksize, strides, dilation, out_spatial)
    return jnp.dot(p, wm, preferred_element_type=jnp.float32).astype(out_dtype)
  if nb == b:
    return chunk(x)
  ys = lax.map(chunk, x.reshape(b // nb, nb, *x.shape[1:]))
  return ys.reshape(b, *out_spatial, o)


def _valid(x, w, strides, dilation, method, out_dtype):
  if method == "shift" and w.ndim == 5:
    # Few input channels (the first layer on grayscale clips): 2D convs with
    # C=1 run far below peak, while the patch matrix is small (K*C columns).
    if math.prod(w.shape[:-1]) <= _IM2COL_MAX_COLUMNS:
      return _im2col_valid(x, w, strides, dilation, out_dtype)
    return _shift_valid(x, w, strides, dilation, out_dtype)
  return _xla_valid(x, w, strides, dilation, out_dtype)


def _patches(x, ksize, strides, dilation, out_spatial):
  """(n, *in, C) -> (n, *out, K*C), tap-major like kernel.reshape(K*C, O)."""
  n, c = x.shape[0], x.shape[-1]
  cols = []
  for tap in itertools.product(*(range(k) for k in ksize)):
    start = (0,) + tuple(t * r for t, r in zip(tap, dilation)) + (0,)
    limit = ((n,) + tuple(t * r + (o - 1) * s + 1 for t, r, o, s
                          in zip(tap, dilation, out_spatial, strides)) + (c,))
    cols.append(lax.slice(x, start, limit, (1,) + tuple(strides) + (1,)))
  return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def _patches_t(x, ksize, strides, dilation, out_spatial):
  """(n, *in, C) -> (K*C, n*prod(out)): the transposed patch matrix, built
  directly in that layout (channels moved first once, taps stacked on axis 0).
  XLA:CPU runs (K*C, N) @ (N, O) about 3x faster than contracting the leading
  axis of an (N, K*C) matrix, so the transpose is never materialised at 27x."""
  xt = jnp.moveaxis(x, -1, 0)  # (C, n, *in)
  c, n = xt.shape[:2]
  cols = []
  for tap in itertools.product(*(range(k) for k in ksize)):
    start = (0, 0) + tuple(t * r for t, r in zip(tap, dilation))
    limit = ((c, n) + tuple(t * r + (o - 1) * s + 1 for t, r, o, s
                            in zip(tap, dilation, out_spatial, strides)))
    cols.append(lax.slice(xt, start, limit, (1, 1) + tuple(strides)))
  return jnp.stack(cols).reshape(len(cols) * c, -1)


def _contract(x, g, ksize, strides, dilation, out_spatial):
  """x (n, *in, C), grad (n, *out, O) -> (K*C, O), accumulated in float32."""
  pt = _patches_t(x, ksize, strides, dilation, out_spatial)
  return jnp.dot(pt, g.reshape(-1, g.shape[-1]), preferred_element_type=jnp.float32)


def _largest_divisor_at_most(n: int, cap: int) -> int:
  cap = max(1, min(n, cap))
  return max(d for d in range(1, cap + 1) if n % d == 0)


def _im2col_wgrad(x, g, ksize, strides, dilation, chunk_bytes: int | None = None):
  """Weight gradient as patches^T @ g, chunked over batch, then over the first
  spatial output axis, so at most ~chunk_bytes of patches exist at a time."""
  chunk_bytes = chunk_bytes or _WGRAD_CHUNK_BYTES
  b, c, o = x.shape[0], x.shape[-1], g.shape[-1]
  out_spatial = g.shape[1:-1]
  kc = math.prod(ksize) * c
  row_bytes = math.prod(out_spatial[1:]) * kc * x.dtype.itemsize
  sample_bytes = row_bytes * out_spatial[0]
  contract = functools.partial(_contract, ksize=ksize, strides=strides,
                               dilation=dilation)

  if b * sample_bytes <= chunk_bytes:
    total = contract(x, g, out_spatial=out_spatial)
  elif sample_bytes <= chunk_bytes or len(out_spatial) == 1:
    nb = _largest_divisor_at_most(b, chunk_bytes // max(sample_bytes, 1))
    xs = x.reshape(b // nb, nb, *x.shape[1:])
    gs = g.reshape(b // nb, nb, *g.shape[1:])
    parts = lax.map(lambda a: contract(a[0], a[1], out_spatial=out_spatial), (xs, gs))
    total = parts.sum(0)
  else:
    # Blocks of t output rows along the first spatial axis, per sample.
    rows = out_spatial[0]
    t = _largest_divisor_at_most(rows, chunk_bytes // max(row_bytes, 1))
    s0, r0, k0 = strides[0], dilation[0], ksize[0]
    span = (t - 1) * s0 + (k0 - 1) * r0 + 1
    block_spatial = (t,) + tuple(out_spatial[1:])

    def one_block(xb, gb, j):
      xs = lax.dynamic_slice_in_dim(xb, j * t * s0, span, axis=1)
      gj = lax.dynamic_slice_in_dim(gb, j * t, t, axis=1)
      return contract(xs, gj, out_spatial=block_spatial)

    def one_sample(carry, a):
      xb, gb = a[0][None], a[1][None]
      def body(j, acc):
        return acc + one_block(xb, gb, j)
      return lax.fori_loop(0, rows // t, body, carry), None

    total, _ = lax.scan(one_sample, jnp.zeros((kc, o), jnp.float32), (x, g))
  return total.reshape(*ksize, c, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(x, w, strides, pads, dilation):
  return _cpu_conv_fwd(x, w, strides, pads, dilation)[0]


def _pad_spatial(x, pads):
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads)
                 + ((0, 0, 0),))


def _cpu_conv_fwd(x, w, strides, pads, dilation):
  fwd_method, _ = _CPU_PLAN[w.ndim - 2]
  xp = _pad_spatial(x, pads)
  y = _valid(xp, w, strides, dilation, fwd_method, x.dtype)
  return y, (x, w)


def _cpu_conv_bwd(strides, pads, dilation, res, g):
  x, w = res
  fwd_method, wgrad_method = _CPU_PLAN[w.ndim - 2]
  ksize = w.shape[:-2]
  xp = _pad_spatial(x, pads)
  in_spatial = xp.shape[1:-1]
  out_spatial = g.shape[1:-1]
  g = g.astype(x.dtype)

  # Input gradient: transposed conv = stride-1 conv of the zero-interleaved
  # gradient, padded by the dilated kernel extent, with the flipped kernel.
  gpad = lax.pad(g, jnp.zeros((), g.dtype),
                 ((0, 0, 0),)
                 + tuple(((k - 1) * r, size - (o - 1) * s - 1, s - 1)
                         for k, r, s, o, size in zip(ksize, dilation, strides,
                                                     out_spatial, in_spatial))
                 + ((0, 0, 0),))
  wt = jnp.flip(w, axis=tuple(range(len(ksize)))).swapaxes(-1, -2)
  dxp = _valid(gpad, wt, (1,) * len(ksize), dilation, fwd_method, x.dtype)
  # Undo the padding (negative pads crop; a negative forward pad re-grows zeros).
  dx = _pad_spatial(dxp, tuple((-lo, -hi) for lo, hi in pads))

  if wgrad_method == "im2col":
    dw = _im2col_wgrad(xp, g, ksize, strides, dilation)
  else:
    _, vjp = jax.vjp(lambda w_: _xla_valid(xp, w_, strides, dilation, x.dtype), w)
    dw = vjp(g)[0]
  return dx.astype(x.dtype), dw.astype(w.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_nd(x: Array, kernel: Array, strides: int | Sequence[int] = 1,
            padding: PaddingLike = "SAME", dilation: int | Sequence[int] = 1,
            impl: str = "auto", precision: Any = None) -> Array:
  """Channels-last N-D convolution, x (B, *spatial, C), kernel (*k, C, O).

  The functional core of `Conv` and `OperationalConv`; `impl` as in `Conv`.
  `precision` only applies to the XLA path (the CPU path accumulates in f32).
  """
  n = kernel.ndim - 2
  if x.ndim != n + 2:
    raise ValueError(f"a {n}D kernel needs (batch, *{n} spatial, channels) input, "
                     f"got shape {x.shape}")
  strides = _tuple(strides, n, "strides")
  dilation = _tuple(dilation, n, "dilation")
  pads = explicit_padding(padding, x.shape[1:-1], kernel.shape[:n], strides, dilation)
  if resolve_impl(impl) == "xla":
    return lax.conv_general_dilated(
        x, kernel, strides, pads, rhs_dilation=dilation,
        dimension_numbers=_dimension_numbers(n), precision=precision)
  return _cpu_conv(x, kernel, strides, pads, dilation)


class Conv(nn.Module):
  """Drop-in for `flax.linen.Conv` (same `kernel`/`bias` names and shapes, so
  checkpoints load either way) that routes through `conv_nd`.

  Attributes:
    features: output channels.
    kernel_size: spatial kernel shape; its length picks 1D/2D/3D.
    strides, kernel_dilation: ints or per-axis tuples.
    padding: 'SAME', 'VALID' or a sequence of (low, high) pairs.
    impl: 'auto' (by backend), 'xla' (plain `lax.conv_general_dilated`) or
      'cpu' (the CPU formulation, on any backend; used by the tests).
  """
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if isinstance(self.kernel_size, int):
      raise TypeError("kernel_size must be a tuple, e.g. (3,) for 1D")
    ksize = tuple(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init,
                        ksize + (x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_nd(x, kernel, self.strides, self.padding, self.kernel_dilation,
                impl=self.impl, precision=self.precision)
    if bias is not None:
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y
