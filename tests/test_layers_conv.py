"""The CPU convolution path must be the same function as plain XLA, gradients too."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.layers import Conv, conv_nd, resolve_impl
from avjax.layers import conv as conv_module
from avjax.layers.pooling import max_pool

# (spatial input shape, kernel shape, cin, cout, strides, padding, dilation)
CASES = [
    # 1D: FERCNN-like VALID k3, channels 1, odd sizes.
    ((11,), (3,), 1, 4, 1, "VALID", 1),
    ((12,), (3,), 3, 5, 2, "SAME", 1),
    ((13,), (3,), 2, 3, 1, "SAME", 2),
    ((10,), (4,), 3, 2, 2, ((2, 1),), 1),
    # 2D.
    ((7, 9), (3, 3), 1, 4, 1, "SAME", 1),
    ((8, 7), (3, 3), 3, 2, 2, "VALID", 1),
    ((9, 8), (3, 2), 2, 3, (2, 1), "SAME", (2, 1)),
    ((7, 7), (3, 3), 2, 2, 1, ((2, 0), (0, 1)), 2),
    ((6, 7), (3, 3), 2, 2, 1, ((-1, 1), (1, 1)), 1),
    # 3D: the S1 video kernel, strides, dilation, explicit pads, odd sizes.
    ((5, 7, 6), (3, 3, 3), 1, 4, 1, "SAME", 1),
    ((5, 6, 7), (3, 3, 3), 3, 2, 2, "SAME", 1),
    ((7, 6, 5), (3, 3, 3), 2, 3, 1, "VALID", 2),
    ((6, 5, 7), (2, 3, 3), 2, 2, (2, 1, 2), ((1, 0), (1, 1), (0, 2)), 1),
    # 3D with one input channel takes the im2col forward: strides, dilation.
    ((6, 7, 5), (3, 3, 3), 1, 2, 2, "SAME", 1),
    ((7, 6, 6), (3, 3, 3), 1, 3, 1, "VALID", 2),
]


def _inputs(spatial, ksize, cin, cout, batch=2, seed=0):
  # numpy, not jax.random: eager jax ops each compile, which dominates here.
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, *spatial, cin), np.float32)
  w = rng.standard_normal((*ksize, cin, cout), np.float32) / np.sqrt(np.prod(ksize) * cin)
  return x, w.astype(np.float32)


def _fwd_and_grads(impl, x, w, strides, padding, dilation, g_seed=1):
  """Output and both vjps, under one jit (one compile instead of op-by-op)."""
  f = lambda x_, w_: conv_nd(x_, w_, strides, padding, dilation, impl=impl)
  y_shape = jax.eval_shape(f, x, w).shape
  g = np.random.default_rng(g_seed).standard_normal(y_shape, np.float32)

  @jax.jit
  def run(x, w, g):
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))
  return run(x, w, g)


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial,ksize,cin,cout,strides,padding,dilation", CASES)
def test_cpu_path_matches_xla(monkeypatch, spatial, ksize, cin, cout, strides, padding,
                              dilation):
  n = len(ksize)
  if n < 3:  # 1D/2D default to XLA's own conv on CPU: test the custom path there.
    monkeypatch.setitem(conv_module._CPU_FORWARD, n, "im2col")
    monkeypatch.setitem(conv_module._CPU_WGRAD, n, "im2col")
  x, w = _inputs(spatial, ksize, cin, cout)
  ref = _fwd_and_grads("xla", x, w, strides, padding, dilation)
  got = _fwd_and_grads("cpu", x, w, strides, padding, dilation)
  assert got[0].shape == ref[0].shape
  for a, b in zip(got, ref):
    _close(a, b)


@pytest.mark.parametrize("method", ["xla", "shift", "im2col"])
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[12]])
def test_every_forward_method_matches_xla(monkeypatch, method, case):
  """'auto' picks by channel count; force each formulation on every dim."""
  spatial, ksize, cin, cout, strides, padding, dilation = case
  monkeypatch.setitem(conv_module._CPU_FORWARD, len(ksize), method)
  monkeypatch.setitem(conv_module._CPU_WGRAD, len(ksize), "im2col")
  x, w = _inputs(spatial, ksize, cin, cout)
  ref = _fwd_and_grads("xla", x, w, strides, padding, dilation)
  got = _fwd_and_grads("cpu", x, w, strides, padding, dilation)
  for a, b in zip(got, ref):
    _close(a, b)


def test_forward_method_choice(monkeypatch):
  monkeypatch.setitem(conv_module._CPU_FORWARD, 2, "auto")
  assert conv_module.forward_method((3, 3, 3, 1, 16)) == "im2col"
  assert conv_module.forward_method((3, 3, 3, 16, 16)) == "shift"
  assert conv_module.forward_method((3, 3, 3, 16, 32)) == "im2col"
  assert conv_module.forward_method((3, 3, 16, 16)) == "xla"


@pytest.mark.parametrize("chunk_bytes", [1, 7000, 30000])
@pytest.mark.parametrize("ndim", [1, 3])
def test_chunking_matches(monkeypatch, chunk_bytes, ndim):
  """Small chunk budgets force every branch of `_chunk_plan` (3D, 1 channel:
  12960 patch bytes per sample, 3240 per output row; so rows of 1, rows of 2,
  and 2 samples) in the im2col forward and the weight gradient."""
  spatial, ksize = ((9,), (3,)) if ndim == 1 else ((4, 5, 6), (3, 3, 3))
  monkeypatch.setitem(conv_module._CPU_FORWARD, ndim, "auto")
  monkeypatch.setitem(conv_module._CPU_WGRAD, ndim, "im2col")
  x, w = _inputs(spatial, ksize, 1, 2, batch=4)
  ref = _fwd_and_grads("xla", x, w, 1, "SAME", 1)
  monkeypatch.setattr(conv_module, "_CHUNK_BYTES", chunk_bytes)
  got = _fwd_and_grads("cpu", x, w, 1, "SAME", 1)
  for a, b in zip(got, ref):
    _close(a, b)


def test_module_param_tree_matches_flax_conv():
  x = jnp.ones((2, 5, 6, 7, 3))
  ours = jax.eval_shape(Conv(4, (3, 3, 3)).init, jax.random.PRNGKey(0), x)
  theirs = jax.eval_shape(nn.Conv(4, (3, 3, 3)).init, jax.random.PRNGKey(0), x)
  shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)
  assert shapes(ours) == shapes(theirs)
  no_bias = jax.eval_shape(Conv(4, (3,), use_bias=False).init, jax.random.PRNGKey(0),
                           jnp.ones((1, 5, 2)))
  assert set(no_bias["params"]) == {"kernel"}


@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_module_matches_flax_conv_with_same_params(impl):
  x, _ = _inputs((6, 7), (3, 3), 3, 5, seed=2)
  params = jax.jit(nn.Conv(5, (3, 3), strides=2).init)(jax.random.PRNGKey(0), x)
  # A non-zero bias, so that adding it is checked too.
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
  ref = jax.jit(nn.Conv(5, (3, 3), strides=2, padding="SAME").apply)(params, x)
  got = jax.jit(Conv(5, (3, 3), strides=2, padding="SAME", impl=impl).apply)(params, x)
  _close(got, ref)


def test_jit_grads_through_module_match():
  x, _ = _inputs((5, 6, 5), (3, 3, 3), 2, 3, seed=3)
  params = jax.jit(Conv(3, (3, 3, 3)).init)(jax.random.PRNGKey(0), x)

  def loss(p, impl):
    y = Conv(3, (3, 3, 3), impl=impl).apply(p, x)
    return jnp.sum(jnp.sin(y))
  ref = jax.jit(jax.grad(loss), static_argnums=1)(params, "xla")
  got = jax.jit(jax.grad(loss), static_argnums=1)(params, "cpu")
  jax.tree_util.tree_map(_close, got, ref)


def test_bf16_compute_with_f32_params():
  x, _ = _inputs((5, 6, 5), (3, 3, 3), 2, 3, seed=4)
  model = Conv(3, (3, 3, 3), dtype=jnp.bfloat16, impl="cpu")
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  assert params["params"]["kernel"].dtype == jnp.float32
  y = jax.jit(model.apply)(params, x)
  assert y.dtype == jnp.bfloat16
  y32 = jax.jit(Conv(3, (3, 3, 3), impl="xla").apply)(params, x)
  # bf16 has an 8-bit mantissa: a few 1e-2 relative error is expected.
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=5e-2, atol=5e-2)
  grads = jax.jit(jax.grad(
      lambda p: jnp.sum(model.apply(p, x).astype(jnp.float32) ** 2)))(params)
  assert grads["params"]["kernel"].dtype == jnp.float32
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_impl_resolution():
  expected = "cpu" if jax.default_backend() == "cpu" else "xla"
  assert resolve_impl("auto") == expected
  assert resolve_impl("xla") == "xla"
  with pytest.raises(ValueError):
    resolve_impl("cudnn")


@pytest.mark.parametrize("spatial,window", [((7, 8, 5), (2, 2, 2)), ((6, 9), (2, 3)), ((10,), (3,))])
def test_max_pool_cpu_backward_matches_select_and_scatter(spatial, window):
  """Odd sizes leave a remainder; the ReLU makes all-zero windows, i.e. ties,
  where the gradient must go to the same single element as XLA's."""
  x, _ = _inputs(spatial, window, 3, 1)
  x = np.maximum(x, 0)
  x[0, ...] = 0  # a sample of pure ties
  ours = lambda a: max_pool(a, window, window, impl="cpu")
  ref = lambda a: nn.max_pool(a, window, strides=window, padding="VALID")
  y_shape = jax.eval_shape(ref, x).shape
  g = np.random.default_rng(5).standard_normal(y_shape).astype(np.float32)

  @jax.jit
  def run(x, g):
    (ya, va), (yb, vb) = jax.vjp(ours, x), jax.vjp(ref, x)
    return ya, yb, va(g)[0], vb(g)[0]
  ya, yb, ga, gb = run(x, g)
  np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
  np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb))


def test_max_pool_overlapping_windows_fall_back():
  x, _ = _inputs((7, 7), (3, 3), 2, 1)
  got = jax.jit(lambda a: max_pool(a, (3, 3), (2, 2), impl="cpu"))(x)
  ref = jax.jit(lambda a: nn.max_pool(a, (3, 3), strides=(2, 2)))(x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


# ---------------------------------------------------------------- impl='onednn'
# oneDNN through XLA FFI custom calls (avjax/ops): the same function too, under
# jit, vmap and 8-device sharding. `make test` builds the extension; these
# tests fail (not skip) when it is missing, so a broken build shows.


def _ffi_targets(fn, *args) -> set[str]:
  hlo = jax.jit(fn).lower(*args).as_text()
  return {t for t in ("avjax_onednn_conv_forward", "avjax_onednn_conv_backward_data",
                      "avjax_onednn_conv_backward_weights") if t in hlo}


@pytest.mark.parametrize("spatial,ksize,cin,cout,strides,padding,dilation", CASES)
def test_onednn_path_matches_xla(spatial, ksize, cin, cout, strides, padding, dilation):
  x, w = _inputs(spatial, ksize, cin, cout)
  ref = _fwd_and_grads("xla", x, w, strides, padding, dilation)
  got = _fwd_and_grads("onednn", x, w, strides, padding, dilation)
  assert got[0].shape == ref[0].shape
  for a, b in zip(got, ref):
    _close(a, b)
  # All three passes are oneDNN calls, except with negative padding ('cpu').
  loss = lambda a, b: jnp.sum(jnp.sin(conv_nd(a, b, strides, padding, dilation,
                                              impl="onednn")))
  targets = _ffi_targets(jax.grad(loss, argnums=(0, 1)), x, w)
  negative = not isinstance(padding, str) and min(min(p) for p in padding) < 0
  assert len(targets) == (0 if negative else 3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' is plain XLA off CPU")
def test_auto_picks_onednn_per_layer_size_on_cpu():
  video = ((32, 30, 80, 70, 16), (3, 3, 3, 16, 16), (1, 1, 1))
  tiny = ((2, 12, 2), (3, 2, 3), (1,))
  assert conv_module.cpu_auto_impl(*video, jnp.float32) == "onednn"
  assert conv_module.cpu_auto_impl(*tiny, jnp.float32) == "cpu"
  assert conv_module.cpu_auto_impl(*video, jnp.float16) == "cpu"
  onn = (32, 32, 32, 96), (3, 3, 96, 64), (1, 1)  # Many channels in 2D: XLA's own.
  assert conv_module.cpu_auto_impl(*onn, jnp.float32) == "cpu"
  assert conv_module.cpu_auto_impl((32, 96, 96, 9), (3, 3, 9, 16), (1, 1),
                                   jnp.float32) == "onednn"
  x, w = _inputs((9, 10, 11), (3, 3, 3), 4, 8, batch=4)  # 4*990*27*4*8 MACs
  assert conv_module.conv_macs(x.shape, w.shape, (1, 1, 1)) >= conv_module._ONEDNN_RULES[3]["min_macs"]
  assert _ffi_targets(lambda a, b: conv_nd(a, b), x, w) == {"avjax_onednn_conv_forward"}
  small = _inputs((4,), (3,), 2, 2)
  assert not _ffi_targets(lambda a, b: conv_nd(a, b), *small)


@pytest.fixture(params=["whole", "per-sample"])
def onednn_split(request):
  """Calls run whole (small shapes) or split per sample over XLA's threads,
  weight gradients summed from f32 partials: both must be the same function."""
  from avjax.ops import onednn
  onednn.set_chunk_macs(1 if request.param == "per-sample" else 0)
  yield request.param
  onednn.set_chunk_macs(0)


@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[10], CASES[12]])
def test_onednn_split_calls_match_xla(onednn_split, case):
  spatial, ksize, cin, cout, strides, padding, dilation = case
  x, w = _inputs(spatial, ksize, cin, cout, batch=5)
  ref = _fwd_and_grads("xla", x, w, strides, padding, dilation)
  # A fresh function per setting: jit caches by function identity, and the
  # split happens at run time anyway.
  got = _fwd_and_grads("onednn", x, w, strides, padding, dilation)
  for a, b in zip(got, ref):
    _close(a, b)


def test_onednn_dtypes(onednn_split):
  """bf16 runs in oneDNN where it has bf16 kernels; float16 takes 'cpu'."""
  from avjax.ops import onednn
  x, w = _inputs((5, 6, 5), (3, 3, 3), 2, 3)
  fwd = lambda a, b: conv_nd(a, b, impl="onednn")
  assert _ffi_targets(fwd, x, w) == {"avjax_onednn_conv_forward"}
  half = x.astype(jnp.float16), w.astype(jnp.float16)
  assert not _ffi_targets(fwd, *half)
  bf = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  assert bool(_ffi_targets(fwd, *bf)) == onednn.has_bf16()

  def run(impl, a, b):
    f = lambda a_, b_: jnp.sum(jnp.sin(conv_nd(a_, b_, impl=impl).astype(jnp.float32)))
    return (jax.jit(lambda a_, b_: conv_nd(a_, b_, impl=impl))(a, b),
            *jax.jit(jax.grad(f, argnums=(0, 1)))(a, b))
  for got, ref in zip(run("onednn", *bf), run("xla", x, w)):
    assert got.dtype == jnp.bfloat16
    # bf16 has an 8-bit mantissa: a few 1e-2 error is expected.
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), rtol=5e-2,
                               atol=5e-2)


@pytest.mark.parametrize("mapped_kernel", [False, True])
def test_onednn_under_vmap_matches_xla(onednn_split, mapped_kernel):
  """Unmapped kernels fold the vmap axis into the batch; mapped ones loop."""
  x = np.random.default_rng(6).standard_normal((3, 2, 5, 6, 2)).astype(np.float32)
  ws = np.random.default_rng(7).standard_normal((3, 3, 3, 2, 4)).astype(np.float32)
  w_axis = 0 if mapped_kernel else None
  w = ws if mapped_kernel else ws[0]

  def run(impl):
    f = lambda a, b: jax.grad(lambda a_, b_: jnp.sum(jnp.sin(conv_nd(a_, b_, 2, impl=impl))),
                              argnums=(0, 1))(a, b)
    y = jax.jit(jax.vmap(lambda a, b: conv_nd(a, b, 2, impl=impl), (0, w_axis)))(x, w)
    return (y, *jax.jit(jax.vmap(f, (0, w_axis)))(x, w))
  for a, b in zip(run("onednn"), run("xla")):
    _close(a, b)


def test_onednn_with_sharded_batch_on_8_devices():
  """Under jit with the batch sharded over the (simulated) devices, each device
  runs oneDNN on its own shard (no gather): values and gradients match XLA."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip("needs several (simulated) devices; conftest asks for 8")
  mesh = Mesh(np.array(devices), ("data",))
  x, w = _inputs((5, 6, 7), (3, 3, 3), 3, 4, batch=2 * len(devices))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  ws = jax.device_put(w, NamedSharding(mesh, P()))

  def value_and_grads(impl):
    f = lambda a, b: jnp.sum(jnp.sin(conv_nd(a, b, 2, impl=impl)))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
  (ref, ref_g) = value_and_grads("xla")(xs, ws)
  step = value_and_grads("onednn")
  got, got_g = step(xs, ws)
  _close(got, ref)
  for a, b in zip(got_g, ref_g):
    _close(a, b)
  assert got_g[0].sharding.spec == P("data")
  # Each device's custom calls see its own 2-sample shard, never the whole batch.
  hlo = step.lower(xs, ws).compile().as_text()
  calls = [line for line in hlo.splitlines() if "custom_call_target=\"avjax_onednn" in line]
  assert len(calls) == 3
  assert all("f32[2,5,6,7,3]" in line for line in calls if "backward_data" not in line)
  y = jax.jit(lambda a, b: conv_nd(a, b, impl="onednn"))(xs, ws)
  assert y.sharding.spec == P("data")
  _close(y, jax.jit(lambda a, b: conv_nd(a, b, impl="xla"))(xs, ws))


# ------------------------------------------- fused bias + ReLU (conv_bias_act)
# With oneDNN the bias add and ReLU are post-ops of the forward call; the
# function and both gradients (and the bias's) must be those of
# relu(conv + bias) in plain XLA.

FUSED = "avjax_onednn_conv_forward_bias_act"
WGRAD_BIAS = "avjax_onednn_conv_backward_weights_bias"


def _bias_act_and_grads(impl, activation, x, w, b, strides=1, padding="SAME", dilation=1,
                        sharded=None):
  f = lambda x_, w_, b_: conv_module.conv_bias_act(x_, w_, b_, strides, padding, dilation,
                                                   impl=impl, activation=activation)
  y_shape = jax.eval_shape(f, x, w, b).shape
  g = np.random.default_rng(3).standard_normal(y_shape).astype(np.float32)

  def run(x, w, b, g):
    y, vjp = jax.vjp(f, x, w, b)
    return (y, *vjp(g))
  return jax.jit(run)(x, w, b, g), jax.jit(run).lower(x, w, b, g).compile().as_text()


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[10], CASES[12]])
def test_fused_bias_act_matches_xla(onednn_split, case, activation):
  spatial, ksize, cin, cout, strides, padding, dilation = case
  x, w = _inputs(spatial, ksize, cin, cout, batch=3)
  b = np.random.default_rng(2).standard_normal((cout,)).astype(np.float32)
  ref, _ = _bias_act_and_grads("xla", activation, x, w, b, strides, padding, dilation)
  got, hlo = _bias_act_and_grads("onednn", activation, x, w, b, strides, padding, dilation)
  if activation == "relu":  # Both signs present, so the mask is exercised.
    assert 0 < float(jnp.mean(ref[0] > 0)) < 1
  for a, r in zip(got, ref):
    _close(a, r)
  assert FUSED in hlo and "avjax_onednn_conv_forward\"" not in hlo
  # The bias gradient comes from the weight-gradient call, not an XLA reduce.
  assert f'custom_call_target="{WGRAD_BIAS}"' in hlo
  assert 'custom_call_target="avjax_onednn_conv_backward_weights"' not in hlo


@pytest.mark.parametrize("mapped", [False, True])
def test_fused_bias_act_under_vmap_matches_xla(mapped):
  """Unmapped kernel and bias fold the vmap axis into the batch; mapped loop."""
  rng = np.random.default_rng(8)
  x = rng.standard_normal((3, 2, 5, 6, 4, 2)).astype(np.float32)
  ws = rng.standard_normal((3, 3, 3, 3, 2, 4)).astype(np.float32) / 6
  bs = rng.standard_normal((3, 4)).astype(np.float32)
  axis = 0 if mapped else None
  w, b = (ws, bs) if mapped else (ws[0], bs[0])

  def run(impl):
    f = lambda a, k, c: conv_module.conv_bias_act(a, k, c, impl=impl, activation="relu")
    loss = lambda a, k, c: jnp.sum(jnp.sin(f(a, k, c)))
    y = jax.jit(jax.vmap(f, (0, axis, axis)))(x, w, b)
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), (0, axis, axis)))(x, w, b)
    return (y, *grads)
  for a, r in zip(run("onednn"), run("xla")):
    _close(a, r)


def test_fused_bias_act_with_sharded_batch_on_8_devices():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip("needs several (simulated) devices; conftest asks for 8")
  mesh = Mesh(np.array(devices), ("data",))
  x, w = _inputs((5, 6, 7), (3, 3, 3), 3, 4, batch=2 * len(devices))
  b = np.random.default_rng(4).standard_normal((4,)).astype(np.float32)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  ref, _ = _bias_act_and_grads("xla", "relu", xs, w, b)
  got, hlo = _bias_act_and_grads("onednn", "relu", xs, w, b)
  for a, r in zip(got, ref):
    _close(a, r)
  assert got[0].sharding.spec == P("data")
  fused = [line for line in hlo.splitlines() if f'custom_call_target="{FUSED}"' in line]
  assert len(fused) == 1 and "f32[2,5,6,7,3]" in fused[0]  # Its own shard only.
  wgrad = [line for line in hlo.splitlines() if f'custom_call_target="{WGRAD_BIAS}"' in line]
  assert len(wgrad) == 1 and "f32[2,5,6,7,3]" in wgrad[0]  # Summed over the shards after.


def test_conv_module_activation_is_relu_after_the_bias():
  """Same parameters as without `activation`, so checkpoints load either way."""
  x, _ = _inputs((6, 7, 5), (3, 3, 3), 2, 1, batch=2)
  plain = Conv(4, (3, 3, 3), impl="onednn", bias_init=nn.initializers.normal(1.0))
  fused = Conv(4, (3, 3, 3), impl="onednn", activation="relu",
               bias_init=nn.initializers.normal(1.0))
  params = plain.init(jax.random.PRNGKey(0), x)
  assert (jax.tree.map(jnp.shape, fused.init(jax.random.PRNGKey(0), x))
          == jax.tree.map(jnp.shape, params))
  _close(jax.jit(fused.apply)(params, x), nn.relu(jax.jit(plain.apply)(params, x)))
  with pytest.raises(ValueError, match="activation must be one of"):
    Conv(4, (3, 3, 3), activation="gelu").init(jax.random.PRNGKey(0), x)


def test_models_conv_applies_the_activation_after_another_factory():
  from avjax import models
  x, _ = _inputs((6, 5), (3, 3), 2, 1, batch=2)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return models.conv(3, (3, 3), activation="relu",
                         bias_init=nn.initializers.normal(1.0))(x)

  previous = models.set_conv_factory(nn.Conv)
  try:
    net = Net()
    params = net.init(jax.random.PRNGKey(0), x)
    y = net.apply(params, x)
  finally:
    models.set_conv_factory(previous)
  ref = nn.relu(nn.Conv(3, (3, 3)).apply({"params": params["params"]["Conv_0"]}, x))
  _close(y, ref)
  assert float(jnp.min(y)) == 0.0


def test_max_pool_onednn_takes_the_cpu_backward():
  x, _ = _inputs((6, 8), (2, 2), 3, 1)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda a: jnp.sum(max_pool(a, (2, 2), (2, 2),
                                                                 impl="onednn"))))(x))
  assert "select_and_scatter" not in jaxpr
