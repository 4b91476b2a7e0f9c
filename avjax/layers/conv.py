"""One convolution for every avjax model: plain XLA on TPU/GPU, a faster form on CPU.

XLA:CPU's convolution emitter is far from its GEMM speed on the shapes avjax
uses (openxla/xla#34273): a 16->16 3x3x3 conv runs at a quarter of the rate of
the same 2D work, and the weight gradients XLA derives are slower still. Users
debug on laptops and CI runs on two cores, so on the CPU backend `conv_nd`
switches to a `jax.custom_vjp` whose three passes are written in forms XLA:CPU
runs well (numbers: benchmarks/conv_ops.py):

- forward: im2col + one GEMM per chunk, kernel^T (O, K*C) @ patches^T (K*C, N),
  the patch matrix built directly in that layout; except when both channel
  counts are <= 16, where XLA:CPU's 2D convolution is at its best and a 3D conv
  becomes a sum over the depth taps of 2D convs on (batch * depth) planes;
- input gradient: the transposed convolution written as a stride-1 convolution
  of the zero-interleaved, padded output gradient with the flipped kernel, so it
  goes through the same fast forward;
- weight gradient: patches^T (K*C, N) @ grad_out (N, O) per chunk, instead of
  XLA's derived convolution.

Patch chunks are cut over batch, then over output rows, to about 16 MiB: that
keeps them near cache and bounds memory (a 3x3x3 patch matrix is 27x its input).

That is the 3D path. For 1D and 2D we measured no consistent win over XLA's own
convolution and gradients, so there 'cpu' means plain XLA by default; the same
formulations stay available (and tested) through `_CPU_FORWARD`/`_CPU_WGRAD`.

On TPU and GPU (`impl='auto'`) nothing changes: `lax.conv_general_dilated`.
`benchmarks/conv_ops.py` measures each pass against plain XLA.

impl='onednn' runs the three passes in oneDNN (the kernels Keras and PyTorch
use on CPU) as XLA custom calls through the typed FFI (avjax/ops, built by
`make`): no host callback, no copies, exportable only to hosts that register
the same targets. On CPU, 'auto' picks 'onednn' or the 'cpu' path per layer
shape (`cpu_auto_impl`, from benchmarks/conv_ops.py). If the extension is not
built, one warning and the 'cpu' path.

`conv_bias_act` (and `Conv(activation=...)`) adds the bias and applies ReLU;
on the oneDNN path both are post-ops of the forward call, which spares XLA a
read and a write of the whole output (S1's video step: 2.44 -> 2.08 s).
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
import numpy as np
from jax import lax

Array = Any
PaddingLike = str | Sequence[tuple[int, int]]

IMPLS = ("auto", "xla", "cpu", "onednn")

# Bytes of one im2col patch chunk. Small enough to stay near cache and bound
# memory (a 3x3x3 patch matrix is 27x its input), large enough that each GEMM
# amortises its launch: 8-16 MiB was best on a 2-core EPYC, 64 MiB 2-3x slower.
_CHUNK_BYTES = 16 * 2**20

# Forward patch matrices this narrow (K*C columns, e.g. a 3x3x3 conv on one
# grayscale channel) always take im2col: 2D convs with C=1 run far below peak.
_IM2COL_MAX_COLUMNS = 32

# The CPU path's forward (also used for the input gradient, a convolution too)
# per dimensionality. 'auto' picks per kernel shape (see `forward_method`):
# depth-shifted 2D convs when both channel counts are <= 16, where XLA:CPU's 2D
# convolution is at its best, else im2col + GEMM. 'xla', 'shift' and 'im2col'
# force one (benchmarks/conv_ops.py --variants times them). For 1D and 2D our
# measurements showed no win over XLA's own convolution and its derived
# gradients (2D 96->32 at 64x64, batch 16: XLA 76 ms forward, im2col 342 ms;
# FERCNN's Conv1D layers: im2col 0.4x XLA), so there the CPU path is plain XLA
# unless these tables are changed.
_CPU_FORWARD = {1: "xla", 2: "xla", 3: "auto"}

# Weight gradient per dimensionality: 'im2col' (patches^T @ grad) or 'xla'
# (XLA's derived convolution).
_CPU_WGRAD = {1: "xla", 2: "xla", 3: "im2col"}


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


def _patches_t(x, ksize, strides, dilation, out_spatial):
  """(n, *in, C) -> (K*C, n*prod(out)): the transposed im2col matrix, rows
  tap-major like kernel.reshape(K*C, O). Built in this layout directly
  (channels moved first once, then taps stacked on axis 0): each copied run is
  a spatial row, not C floats, and XLA:CPU's GEMMs on (K*C, N) operands ran
  2-3x faster than on (N, K*C) in our measurements."""
  xt = jnp.moveaxis(x, -1, 0)  # (C, n, *in)
  c, n = xt.shape[:2]
  cols = []
  for tap in itertools.product(*(range(k) for k in ksize)):
    start = (0, 0) + tuple(t * r for t, r in zip(tap, dilation))
    limit = ((c, n) + tuple(t * r + (o - 1) * s + 1 for t, r, o, s
                            in zip(tap, dilation, out_spatial, strides)))
    cols.append(lax.slice(xt, start, limit, (1, 1) + tuple(strides)))
  return jnp.stack(cols).reshape(len(cols) * c, -1)


def _largest_divisor_at_most(n: int, cap: int) -> int:
  cap = max(1, min(n, cap))
  return max(d for d in range(1, cap + 1) if n % d == 0)


def _chunk_plan(batch, out_spatial, columns, itemsize):
  """How to cut the patch matrix so at most ~_CHUNK_BYTES of it exists at once:
  ('all', B), ('batch', samples per chunk) or ('rows', output rows per block
  along the first spatial axis, per sample)."""
  budget = _CHUNK_BYTES
  row_bytes = math.prod(out_spatial[1:]) * columns * itemsize
  sample_bytes = row_bytes * out_spatial[0]
  if batch * sample_bytes <= budget:
    return "all", batch
  if sample_bytes <= budget or len(out_spatial) == 1:
    return "batch", _largest_divisor_at_most(batch, budget // max(sample_bytes, 1))
  return "rows", _largest_divisor_at_most(out_spatial[0], budget // max(row_bytes, 1))


def _row_span(t, ksize, strides, dilation):
  return (t - 1) * strides[0] + (ksize[0] - 1) * dilation[0] + 1


def _im2col_valid(x, w, strides, dilation, out_dtype):
  """VALID conv as kernel^T (O, K*C) @ patches^T (K*C, N), chunked."""
  ksize, (c, o) = w.shape[:-2], w.shape[-2:]
  b = x.shape[0]
  out_spatial = _out_shape(x.shape[1:-1], ksize, strides, dilation)
  wt = w.reshape(-1, o).T

  def block(xc, spatial):  # (n, *in, C) -> (n, *spatial, O)
    pt = _patches_t(xc, ksize, strides, dilation, spatial)
    y = jnp.dot(wt, pt, preferred_element_type=jnp.float32)
    y = y.reshape(o, xc.shape[0], *spatial)
    return jnp.moveaxis(y, 0, -1).astype(out_dtype)

  mode, m = _chunk_plan(b, out_spatial, wt.shape[1], x.dtype.itemsize)
  if mode == "all":
    return block(x, out_spatial)
  if mode == "batch":
    ys = lax.map(lambda xc: block(xc, out_spatial), x.reshape(b // m, m, *x.shape[1:]))
    return ys.reshape(b, *out_spatial, o)
  span = _row_span(m, ksize, strides, dilation)
  spatial = (m,) + tuple(out_spatial[1:])

  def one_sample(xb):
    def one_block(j):
      xs = lax.dynamic_slice_in_dim(xb[None], j * m * strides[0], span, axis=1)
      return block(xs, spatial)[0]
    return lax.map(one_block, jnp.arange(out_spatial[0] // m))
  return lax.map(one_sample, x).reshape(b, *out_spatial, o)


def forward_method(w_shape) -> str:
  """The CPU path's forward for a kernel shape (*k, C, O); see _CPU_FORWARD."""
  n = len(w_shape) - 2
  method = _CPU_FORWARD[n]
  if method != "auto":
    return method
  cin, cout = w_shape[-2:]
  if cin <= 16 and cout <= 16 and math.prod(w_shape[:-1]) > _IM2COL_MAX_COLUMNS:
    return "shift" if n == 3 else "xla"
  return "im2col"


def _valid(x, w, strides, dilation, out_dtype):
  method = forward_method(w.shape)
  if method == "shift" and w.ndim == 5:
    return _shift_valid(x, w, strides, dilation, out_dtype)
  if method == "im2col":
    return _im2col_valid(x, w, strides, dilation, out_dtype)
  return _xla_valid(x, w, strides, dilation, out_dtype)


def _im2col_wgrad(x, g, ksize, strides, dilation):
  """Weight gradient as patches^T (K*C, N) @ grad (N, O), summed over chunks."""
  b, c, o = x.shape[0], x.shape[-1], g.shape[-1]
  out_spatial = g.shape[1:-1]
  kc = math.prod(ksize) * c

  def contract(xc, gc, spatial):
    pt = _patches_t(xc, ksize, strides, dilation, spatial)
    return jnp.dot(pt, gc.reshape(-1, o), preferred_element_type=jnp.float32)

  mode, m = _chunk_plan(b, out_spatial, kc, x.dtype.itemsize)
  if mode == "all":
    total = contract(x, g, out_spatial)
  elif mode == "batch":
    xs = x.reshape(b // m, m, *x.shape[1:])
    gs = g.reshape(b // m, m, *g.shape[1:])
    total = lax.map(lambda a: contract(a[0], a[1], out_spatial), (xs, gs)).sum(0)
  else:
    span = _row_span(m, ksize, strides, dilation)
    spatial = (m,) + tuple(out_spatial[1:])

    def one_sample(acc, a):
      xb, gb = a[0][None], a[1][None]

      def body(j, acc):
        xs = lax.dynamic_slice_in_dim(xb, j * m * strides[0], span, axis=1)
        gj = lax.dynamic_slice_in_dim(gb, j * m, m, axis=1)
        return acc + contract(xs, gj, spatial)
      return lax.fori_loop(0, out_spatial[0] // m, body, acc), None

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
  xp = _pad_spatial(x, pads)
  y = _valid(xp, w, strides, dilation, x.dtype)
  return y, (x, w)


def _cpu_conv_bwd(strides, pads, dilation, res, g):
  x, w = res
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
  dxp = _valid(gpad, wt, (1,) * len(ksize), dilation, x.dtype)
  # Undo the padding (negative pads crop; a negative forward pad re-grows zeros).
  dx = _pad_spatial(dxp, tuple((-lo, -hi) for lo, hi in pads))

  if _CPU_WGRAD[len(ksize)] == "im2col":
    dw = _im2col_wgrad(xp, g, ksize, strides, dilation)
  else:
    _, vjp = jax.vjp(lambda w_: _xla_valid(xp, w_, strides, dilation, x.dtype), w)
    dw = vjp(g)[0]
  return dx.astype(x.dtype), dw.astype(w.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


# ------------------------------------------------------------------ onednn
# impl='onednn': the three passes are XLA custom calls into oneDNN (typed FFI,
# avjax/ops): oneDNN's JIT kernels, the ones Keras and PyTorch run on CPU,
# reading and writing XLA's own buffers. Float32, and bfloat16 where oneDNN
# has a bf16 kernel for this CPU; other dtypes and negative padding take the
# 'cpu' path. If the extension is not built or does not load, one warning and
# the 'cpu' path. Batch-sharded operands stay sharded (custom_partitioning,
# avjax.ops.onednn); vmap folds into the batch. Not twice differentiable: the
# backward passes are custom calls without derivatives of their own.
#
# The weight gradient runs before the input gradient with an optimization
# barrier between them: two oneDNN OpenMP teams at once on the same cores
# were slower than one after the other.
_ONEDNN_SERIAL = True


# 'auto' on the CPU backend, per layer: 'onednn' when oneDNN runs the dtype
# and the layer passes its dimensionality's rule below, else the pure-XLA
# 'cpu' path. From benchmarks/conv_ops.py --onednn --no-xla at batch 32 (fwd +
# dgrad + wgrad of every conv layer of the four benchmark nets, both impls in
# one run; 2 shared cores at load ~14; table in benchmarks/README.md):
# - 3D (S1 video): oneDNN 2.5-2.9x on every layer.
# - 1D (S1 audio, FERCNN): oneDNN 1.0-6x down to FERCNN's 64->32 on 3
#   positions (0.2M MACs); it lost only on the smoke shapes (~400 MACs, 0.8x),
#   where XLA's fused conv beats a custom call's fixed cost: min_macs.
# - 2D (S5 ONN): oneDNN 3.4-3.9x with 3-9 input channels and 1.1-2.5x at 48,
#   but 0.83x at 96->64 on 32x32 (XLA:CPU's 2D conv is at its best with many
#   channels): max_cin.
_ONEDNN_RULES = {1: {"min_macs": 2**16},
                 2: {"min_macs": 2**16, "max_cin": 48},
                 3: {"min_macs": 2**16}}


def conv_macs(x_shape, w_shape, strides) -> int:
  """batch x output positions (SAME-sized) x kernel taps x Cin x Cout."""
  out = [-(-size // s) for size, s in zip(x_shape[1:-1], strides)]
  return x_shape[0] * math.prod(out) * math.prod(w_shape)


def cpu_auto_impl(x_shape, w_shape, strides, dtype) -> str:
  """What 'auto' runs on CPU for one convolution: see _ONEDNN_RULES."""
  rule = _ONEDNN_RULES[len(w_shape) - 2]
  if (conv_macs(x_shape, w_shape, strides) < rule["min_macs"]
      or w_shape[-2] > rule.get("max_cin", w_shape[-2])):
    return "cpu"
  return "onednn" if onednn_supports(dtype) else "cpu"


def onednn_supports(dtype) -> bool:
  """Whether impl='onednn' runs this dtype here (loads the extension once)."""
  from avjax.ops import onednn  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return onednn.available()
  if dtype == jnp.bfloat16:
    return onednn.available() and onednn.has_bf16()
  return False


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _onednn_conv(x, w, strides, pads, dilation):
  return _onednn_conv_fwd(x, w, strides, pads, dilation)[0]


def _onednn_conv_fwd(x, w, strides, pads, dilation):
  from avjax.ops import onednn  # pylint: disable=g-import-not-at-top
  return onednn.forward(x, w, strides, dilation, pads), (x, w)


def _onednn_conv_bwd(strides, pads, dilation, res, g):
  from avjax.ops import onednn  # pylint: disable=g-import-not-at-top
  x, w = res
  g = g.astype(x.dtype)
  dw = onednn.backward_weights(x, g, w.shape, strides, dilation, pads)
  if _ONEDNN_SERIAL:
    w, g, _ = lax.optimization_barrier((w, g, dw))
  dx = onednn.backward_data(w, g, x.shape, strides, dilation, pads)
  return dx, dw


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


# conv + bias (+ ReLU) as one oneDNN call. The backward keeps the output, not
# the pre-activation: y > 0 exactly where conv + bias > 0, so the ReLU mask is
# the same as `nn.relu`'s gradient (0 at 0).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _onednn_conv_bias_act(x, w, b, strides, pads, dilation, relu):
  return _onednn_conv_bias_act_fwd(x, w, b, strides, pads, dilation, relu)[0]


def _onednn_conv_bias_act_fwd(x, w, b, strides, pads, dilation, relu):
  from avjax.ops import onednn  # pylint: disable=g-import-not-at-top
  y = onednn.forward_bias_act(x, w, b, strides, dilation, pads, relu)
  return y, (x, w, y if relu else None)


def _onednn_conv_bias_act_bwd(strides, pads, dilation, relu, res, g):
  x, w, y = res
  g = g.astype(x.dtype)
  if relu:
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
  from avjax.ops import onednn  # pylint: disable=g-import-not-at-top
  # The bias gradient comes out of the weight-gradient call (oneDNN's diff_bias).
  dw, db = onednn.backward_weights_bias(x, g, w.shape, strides, dilation, pads)
  if _ONEDNN_SERIAL:
    w, g, _ = lax.optimization_barrier((w, g, dw))
  dx = onednn.backward_data(w, g, x.shape, strides, dilation, pads)
  return dx, dw, db


_onednn_conv_bias_act.defvjp(_onednn_conv_bias_act_fwd, _onednn_conv_bias_act_bwd)

ACTIVATIONS = {None: None, "relu": nn.relu}


def conv_nd(x: Array, kernel: Array, strides: int | Sequence[int] = 1,
            padding: PaddingLike = "SAME", dilation: int | Sequence[int] = 1,
            impl: str = "auto", precision: Any = None) -> Array:
  """Channels-last N-D convolution, x (B, *spatial, C), kernel (*k, C, O).

  The functional core of `Conv` and `OperationalConv`; `impl` as in `Conv`.
  `precision` only applies to the XLA path (the CPU path accumulates in f32).
  """
  n = kernel.ndim - 2
  strides, dilation, pads, impl = _resolve(x, kernel, strides, padding, dilation, impl)
  if impl == "onednn":
    return _onednn_conv(x, kernel, strides, pads, dilation)
  plain_on_cpu = _CPU_FORWARD[n] == "xla" and _CPU_WGRAD[n] == "xla"
  if impl == "xla" or plain_on_cpu:
    return lax.conv_general_dilated(
        x, kernel, strides, pads, rhs_dilation=dilation,
        dimension_numbers=_dimension_numbers(n), precision=precision)
  return _cpu_conv(x, kernel, strides, pads, dilation)


def _resolve(x, kernel, strides, padding, dilation, impl):
  """Checked strides, dilation and explicit pads, and the implementation that
  runs this convolution ('onednn' only where oneDNN takes it)."""
  n = kernel.ndim - 2
  if n not in (1, 2, 3):
    raise ValueError(f"only 1D, 2D and 3D convolutions are supported, got {n}D")
  if x.ndim != n + 2:
    raise ValueError(f"a {n}D kernel needs (batch, *{n} spatial, channels) input, "
                     f"got shape {x.shape}")
  strides = _tuple(strides, n, "strides")
  dilation = _tuple(dilation, n, "dilation")
  pads = explicit_padding(padding, x.shape[1:-1], kernel.shape[:n], strides, dilation)
  auto = impl == "auto"
  impl = resolve_impl(impl)
  if auto and impl == "cpu":
    impl = cpu_auto_impl(x.shape, kernel.shape, strides, x.dtype)
  if impl == "onednn" and not (x.dtype == kernel.dtype and min(min(p) for p in pads) >= 0
                               and onednn_supports(x.dtype)):
    impl = "cpu"
  return strides, dilation, pads, impl


def conv_bias_act(x: Array, kernel: Array, bias: Array | None, strides=1,
                  padding: PaddingLike = "SAME", dilation=1, impl: str = "auto",
                  precision: Any = None, activation: str | None = None) -> Array:
  """`activation(conv_nd(x, kernel) + bias)`; where the convolution runs in
  oneDNN, the bias and ReLU are its post-ops (one call, no extra pass)."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS, key=str)}, "
                     f"got {activation!r}")
  if bias is not None:
    strides_, dilation_, pads, chosen = _resolve(x, kernel, strides, padding, dilation,
                                                 impl)
    if chosen == "onednn" and bias.dtype == x.dtype:
      return _onednn_conv_bias_act(x, kernel, bias, strides_, pads, dilation_,
                                   activation == "relu")
  y = conv_nd(x, kernel, strides, padding, dilation, impl=impl, precision=precision)
  if bias is not None:
    y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
  return y if activation is None else ACTIVATIONS[activation](y)


class Conv(nn.Module):
  """Drop-in for `flax.linen.Conv` (same `kernel`/`bias` names and shapes, so
  checkpoints load either way) that routes through `conv_nd`.

  Attributes:
    features: output channels.
    kernel_size: spatial kernel shape; its length picks 1D/2D/3D.
    strides, kernel_dilation: ints or per-axis tuples.
    padding: 'SAME', 'VALID' or a sequence of (low, high) pairs.
    impl: 'auto' (by backend), 'xla' (plain `lax.conv_general_dilated`),
      'cpu' (the pure-XLA CPU formulation on any backend, e.g. in tests and
      portable exports; for 1D/2D that is plain XLA unless
      `_CPU_FORWARD`/`_CPU_WGRAD` say otherwise) or 'onednn' (oneDNN as XLA
      custom calls, CPU only; float32, bfloat16 where the CPU has it).
    activation: None or 'relu', applied after the bias; with oneDNN it is
      fused into the convolution (`conv_bias_act`).
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
  activation: str | None = None

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
    return conv_bias_act(x, kernel, bias, self.strides, self.padding,
                         self.kernel_dilation, impl=self.impl, precision=self.precision,
                         activation=self.activation)
