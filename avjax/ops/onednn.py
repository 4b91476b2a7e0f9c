"""oneDNN convolutions as XLA:CPU custom calls (typed FFI): the Python side.

`available()` loads avjax/ops/_onednn_conv.so (built by avjax/ops/build.py
against the pinned onednn-cpu-gomp) and registers its four targets with
XLA; if that fails it warns once and returns False, and avjax.layers.conv
keeps its XLA convolutions. `forward`, `backward_data` and `backward_weights`
are the raw passes on XLA's own layouts (x (B, *S, C), w (*K, C, O)): no
padded copies, oneDNN writes the result buffer. `forward_bias_act` is the
forward pass with the bias add and an optional ReLU done by oneDNN on each
output tile (post-ops), which saves XLA a full pass over the output;
`backward_weights_bias` is the weight gradient that also returns the bias
gradient, reduced by oneDNN while it reads dy (a pass less for XLA).

Under vmap the targets get `expand_dims` operands; the C++ side folds the
mapped dims into the batch when the weights are unmapped, else loops.
Under jit with operands sharded over several devices each pass is a
`custom_partitioning` op: the batch axis stays sharded, each device runs
oneDNN on its shard, and the weight gradient is summed over the batch axes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import logging
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(HERE, "_onednn_conv.so")
TARGETS = {"forward": "avjax_onednn_conv_forward",
           "forward_bias_act": "avjax_onednn_conv_forward_bias_act",
           "backward_data": "avjax_onednn_conv_backward_data",
           "backward_weights": "avjax_onednn_conv_backward_weights",
           "backward_weights_bias": "avjax_onednn_conv_backward_weights_bias"}
_SYMBOLS = {"forward": "AvjaxOnednnConvForward",
            "forward_bias_act": "AvjaxOnednnConvForwardBiasAct",
            "backward_data": "AvjaxOnednnConvBackwardData",
            "backward_weights": "AvjaxOnednnConvBackwardWeights",
            "backward_weights_bias": "AvjaxOnednnConvBackwardWeightsBias"}

_lock = threading.Lock()
_state: dict = {}


def _load() -> ctypes.CDLL:
  # libdnnl first, by path: the extension's rpath names the venv that built it.
  dnnl = os.path.join(sys.prefix, "lib", "libdnnl.so.3")
  if os.path.exists(dnnl):
    ctypes.CDLL(dnnl, mode=ctypes.RTLD_GLOBAL)
  if not os.path.exists(LIBRARY):
    raise OSError(f"{LIBRARY} is missing (build it: make ops, or "
                  "python -m avjax.ops.build)")
  lib = ctypes.CDLL(LIBRARY)
  lib.avjax_onednn_version.restype = ctypes.c_int
  lib.avjax_onednn_set_threads.argtypes = [ctypes.c_int]
  lib.avjax_onednn_set_chunk_macs.argtypes = [ctypes.c_int64]
  lib.avjax_onednn_impl.restype = ctypes.c_int
  lib.avjax_onednn_impl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_int64),
                                    ctypes.c_char_p, ctypes.c_int]
  for key, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(TARGETS[key], jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
  threads = os.environ.get("AVJAX_ONEDNN_THREADS")
  if threads:
    lib.avjax_onednn_set_threads(int(threads))
  return lib


def available() -> bool:
  """True once the targets are registered; on failure one warning line (the
  first call only), then False."""
  with _lock:
    if "ok" not in _state:
      try:
        _state["lib"] = _load()
        _state["ok"] = True
      except (OSError, AttributeError, ValueError) as e:
        _state["ok"] = False
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        logging.getLogger(__name__).warning(
            "avjax: oneDNN convolutions unavailable (%s); using XLA's convolutions", first)
    return _state["ok"]


def set_chunk_macs(macs: int) -> None:
  """Work per job when a call is split over its batch for XLA's threads (0:
  the default, 2^22 MACs). Tests set 1 to split every call per sample."""
  if available():
    _state["lib"].avjax_onednn_set_chunk_macs(int(macs))


def version() -> str:
  v = _state["lib"].avjax_onednn_version() if available() else 0
  return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v else "unavailable"


def impl_name(pass_: str, x_shape, w_shape, strides, dilation, pads,
              dtype=jnp.float32) -> str:
  """The oneDNN implementation chosen for one pass, e.g. 'brg:avx512_core'."""
  if not available():
    return "unavailable"
  n = len(w_shape) - 2
  out = out_spatial(x_shape[1:-1], w_shape[:n], strides, dilation, pads)
  dims = [x_shape[0], x_shape[-1], w_shape[-1], *x_shape[1:-1], *w_shape[:n], *out,
          *strides, *dilation, *(lo for lo, _ in pads), *(hi for _, hi in pads)]
  buf = ctypes.create_string_buffer(256)
  arr = (ctypes.c_int64 * len(dims))(*dims)
  code = {"forward": 0, "backward_data": 1, "backward_weights": 2}[pass_]
  size = _state["lib"].avjax_onednn_impl(code, int(np.dtype(dtype) == jnp.bfloat16),
                                         n, arr, buf, len(buf))
  return buf.value.decode() if size >= 0 else "unsupported"


def has_bf16() -> bool:
  """Whether oneDNN has bfloat16 convolution kernels on this CPU."""
  if "bf16" not in _state:
    _state["bf16"] = all(
        impl_name(p, (1, 4, 4, 16), (3, 3, 16, 16), (1, 1), (1, 1), ((1, 1), (1, 1)),
                  jnp.bfloat16) not in ("unsupported", "unavailable")
        for p in ("forward", "backward_data", "backward_weights"))
  return _state["bf16"]


def out_spatial(in_spatial, ksize, strides, dilation, pads) -> tuple[int, ...]:
  return tuple((size + lo + hi - (k - 1) * r - 1) // s + 1
               for size, k, s, r, (lo, hi) in zip(in_spatial, ksize, strides,
                                                   dilation, pads))


def _attrs(strides, dilation, pads):
  return {"strides": np.asarray(strides, np.int64),
          "dilation": np.asarray(dilation, np.int64),
          "pad_lo": np.asarray([lo for lo, _ in pads], np.int64),
          "pad_hi": np.asarray([hi for _, hi in pads], np.int64)}


def _call(key, shape, dtype, operands, strides, dilation, pads, relu=None):
  attrs = _attrs(strides, dilation, pads)
  if relu is not None:
    attrs["relu"] = np.int64(relu)
  result = jax.ShapeDtypeStruct(tuple(shape), dtype)
  if key == "backward_weights_bias":  # (dw, db): db is (cout,).
    result = (result, jax.ShapeDtypeStruct((shape[-1],), dtype))
  return jax.ffi.ffi_call(TARGETS[key], result, vmap_method="expand_dims")(
      *operands, **attrs)


# ------------------------------------------------------------- partitioning
# Batch-sharded operands: every device runs its shard; all other dims are
# gathered. The partitioner hands us the operands' shardings.


def _batch_spec(sharding, ndim):
  """The mesh axes of dim 0 in a NamedSharding (None: unsharded)."""
  spec = getattr(sharding, "spec", None)
  if spec is None or len(spec) == 0:
    return None
  return spec[0]


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _named(mesh, *spec):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def _rule(n: int, pass_: str) -> str:
  """Shardy rule: only the batch factor 'b' may stay sharded."""
  sp_in = " ".join(f"i{k}" for k in range(n))
  sp_out = " ".join(f"o{k}" for k in range(n))
  ker = " ".join(f"k{k}" for k in range(n))
  x, w, y = f"b {sp_in} c", f"{ker} c f", f"b {sp_out} f"
  if pass_ == "forward":
    return f"{x}, {w} -> {y}"
  if pass_ == "forward_bias_act":
    return f"{x}, {w}, f -> {y}"
  if pass_ == "backward_data":
    return f"{w}, {y} -> {x}"
  if pass_ == "backward_weights_bias":
    return f"{x}, {y} -> {w}, f"
  return f"{x}, {y} -> {w}"


@functools.lru_cache(maxsize=None)
def _partitioned(pass_: str, n: int, strides, dilation, pads, relu=None):
  """The pass as a custom_partitioning op for one static configuration."""
  from jax.experimental.custom_partitioning import custom_partitioning  # pylint: disable=g-import-not-at-top

  def local(*args):
    *operands, shape = args
    return _call(pass_, shape, operands[0].dtype, operands, strides, dilation, pads, relu)

  def result_shape(a_shape, b_shape):
    if pass_ in ("forward", "forward_bias_act"):  # a: x, b: w
      return (a_shape[0], *out_spatial(a_shape[1:-1], b_shape[:n], strides, dilation,
                                       pads), b_shape[-1])
    if pass_ == "backward_data":  # a: w, b: dy; the input shape is static
      raise AssertionError("backward_data passes its shape statically")
    return None

  data_arg = 1 if pass_ == "backward_data" else 0  # The batched operand.
  # Operands that are never batch-sharded: the weights and the bias.
  replicated = {"forward": (1,), "forward_bias_act": (1, 2),
                "backward_data": (0,), "backward_weights": (),
                "backward_weights_bias": ()}[pass_]
  weight_grad = pass_ in ("backward_weights", "backward_weights_bias")

  if pass_ == "forward_bias_act":
    @functools.partial(custom_partitioning, static_argnums=(3,))
    def op(a, b, c, shape):
      return local(a, b, c, shape)
  else:
    @functools.partial(custom_partitioning, static_argnums=(2,))
    def op(a, b, shape):
      return local(a, b, shape)

  def shardings(mesh, arg_shapes):
    batch = _batch_spec(arg_shapes[data_arg].sharding, len(arg_shapes[data_arg].shape))
    args = [_named(mesh) if i in replicated else
            _named(mesh, batch, *([None] * (len(s.shape) - 1)))
            for i, s in enumerate(arg_shapes)]
    return batch, args

  def infer(shape, mesh, arg_shapes, result_shape_):
    batch, _ = shardings(mesh, arg_shapes)
    if pass_ == "backward_weights_bias":
      return (_named(mesh), _named(mesh))
    if pass_ == "backward_weights":
      return _named(mesh)
    return _named(mesh, batch, *([None] * (len(result_shape_.shape) - 1)))

  def partition(shape, mesh, arg_shapes, result_shape_):
    batch, args = shardings(mesh, arg_shapes)
    axes = _axes(batch)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if weight_grad:  # Summed over the batch shards.
      def lower(a, b):
        grads = local(a, b, shape)
        return jax.lax.psum(grads, axes) if axes else grads
      out = (_named(mesh), _named(mesh)) if pass_ == "backward_weights_bias" \
          else _named(mesh)
      return mesh, lower, out, tuple(args)
    local_shape = (shape[0] // size, *shape[1:])

    def lower(*operands):
      return local(*operands, local_shape)
    return (mesh, lower, _named(mesh, batch, *([None] * (len(shape) - 1))),
            tuple(args))

  rule = _rule(n, pass_)
  order = list(dict.fromkeys(rule.replace(",", " ").replace("->", " ").split()))
  op.def_partition(infer_sharding_from_operands=infer, partition=partition,
                   sharding_rule=rule,
                   reduction_factors=("b",) if weight_grad else (),
                   need_replication_factors=tuple(f for f in order if f != "b"))
  del result_shape
  return op


@functools.lru_cache(maxsize=None)
def _batchable(pass_: str, n: int, strides, dilation, pads, shape, relu=None):
  """The partitioned op with a vmap rule (custom_partitioning has none):
  unmapped weights (and bias) fold the mapped axis into the batch, one call;
  otherwise (mapped weights, or a weight gradient) one call per mapped element."""
  part = _partitioned(pass_, n, strides, dilation, pads, relu)
  data_arg = 1 if pass_ == "backward_data" else 0

  @jax.custom_batching.custom_vmap
  def op(*operands):
    return part(*operands, shape)

  @op.def_vmap
  def rule(axis_size, in_batched, *operands):
    others_mapped = any(m for i, m in enumerate(in_batched) if i != data_arg)
    if pass_ not in ("backward_weights", "backward_weights_bias") and not others_mapped:
      d = operands[data_arg]
      folded = list(operands)
      folded[data_arg] = d.reshape(axis_size * d.shape[1], *d.shape[2:])
      inner = _batchable(pass_, n, strides, dilation, pads,
                         (axis_size * shape[0], *shape[1:]), relu)
      y = inner(*folded)
      return y.reshape(axis_size, shape[0], *y.shape[1:]), True
    full = tuple(a if m else jnp.broadcast_to(a, (axis_size, *a.shape))
                 for a, m in zip(operands, in_batched))
    out = jax.lax.map(lambda args: op(*args), full)
    return out, jax.tree.map(lambda _: True, out)

  return op


def _dispatch(pass_, shape, operands, strides, dilation, pads, relu=None):
  if not available():
    raise RuntimeError("avjax's oneDNN convolution extension is not loaded")
  n = len(strides)
  key = (tuple(strides), tuple(dilation), tuple(tuple(p) for p in pads))
  return _batchable(pass_, n, *key, tuple(shape), relu)(*operands)


def _forward_shape(x, w, strides, dilation, pads):
  n = w.ndim - 2
  return (x.shape[0], *out_spatial(x.shape[1:-1], w.shape[:n], strides, dilation, pads),
          w.shape[-1])


def forward(x, w, strides: Sequence[int], dilation: Sequence[int], pads):
  """y = conv(x, w), x (B, *S, C), w (*K, C, O), explicit (lo, hi) pads."""
  return _dispatch("forward", _forward_shape(x, w, strides, dilation, pads), (x, w),
                   strides, dilation, pads)


def forward_bias_act(x, w, bias, strides: Sequence[int], dilation: Sequence[int], pads,
                     relu: bool = False):
  """y = conv(x, w) + bias, then ReLU if `relu`: one oneDNN call (post-ops)."""
  return _dispatch("forward_bias_act", _forward_shape(x, w, strides, dilation, pads),
                   (x, w, bias), strides, dilation, pads, bool(relu))


def backward_data(w, g, x_shape, strides, dilation, pads):
  """dx for y = conv(x, w), given dy = g."""
  return _dispatch("backward_data", x_shape, (w, g), strides, dilation, pads)


def backward_weights(x, g, w_shape, strides, dilation, pads):
  """dw for y = conv(x, w), given dy = g."""
  return _dispatch("backward_weights", w_shape, (x, g), strides, dilation, pads)


def backward_weights_bias(x, g, w_shape, strides, dilation, pads):
  """(dw, db) for y = conv(x, w) + b, given dy = g: db is g summed over every
  axis but the last, reduced inside the weight-gradient call."""
  return _dispatch("backward_weights_bias", w_shape, (x, g), strides, dilation, pads)
