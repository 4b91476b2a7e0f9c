"""avjax/ops: the oneDNN FFI targets themselves (conv-level equivalence, jit,
vmap and 8-device sharding are in tests/test_layers_conv.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from avjax.layers import conv_nd
from avjax.ops import onednn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ref(x, w, strides, pads):
  n = w.ndim - 2
  sp = "DHW"[-n:]
  return lax.conv_general_dilated(x, w, strides, pads,
                                  dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"),
                                  precision=lax.Precision.HIGHEST)


def test_extension_is_built_and_loads():
  """`make test` builds it: a missing or broken build fails here, not silently."""
  assert onednn.available(), f"{onednn.LIBRARY} did not load; run `make ops`"
  assert onednn.version().startswith("3.")


@pytest.mark.parametrize("mapped_w", [False, True])
def test_raw_targets_under_vmap_expand_dims(mapped_w):
  """The targets' own leading-dims handling (vmap_method='expand_dims'):
  unmapped weights fold into the batch, mapped ones loop; two vmap levels."""
  rng = np.random.default_rng(0)
  strides, dil, pads = (2, 1), (1, 1), ((1, 0), (1, 1))
  x = rng.standard_normal((2, 3, 2, 7, 6, 3)).astype(np.float32)
  w = rng.standard_normal(((2, 3) if mapped_w else ()) + (3, 3, 3, 4)).astype(np.float32)
  y_shape = jax.eval_shape(lambda a, b: _ref(a, b, strides, pads), x[0, 0], w[0, 0] if
                           mapped_w else w).shape
  fwd = lambda a, b: onednn._call("forward", y_shape, a.dtype, (a, b), strides, dil, pads)
  wmap = 0 if mapped_w else None
  got = jax.jit(jax.vmap(jax.vmap(fwd, (0, wmap)), (0, wmap)))(x, w)
  ref = jax.vmap(jax.vmap(lambda a, b: _ref(a, b, strides, pads), (0, wmap)), (0, wmap))(x, w)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-4)
  # The fused forward: its bias is mapped (a different one per element) with w.
  bias = rng.standard_normal(((2, 3) if mapped_w else ()) + (4,)).astype(np.float32)
  fused = lambda a, b, c: onednn._call("forward_bias_act", y_shape, a.dtype, (a, b, c),
                                       strides, dil, pads, relu=True)
  got = jax.jit(jax.vmap(jax.vmap(fused, (0, wmap, wmap)), (0, wmap, wmap)))(x, w, bias)
  ref_fused = jax.vmap(jax.vmap(lambda a, b, c: jax.nn.relu(_ref(a, b, strides, pads) + c),
                                (0, wmap, wmap)), (0, wmap, wmap))(x, w, bias)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref_fused), rtol=1e-4, atol=1e-4)
  g = rng.standard_normal(ref.shape).astype(np.float32)
  w_shape = w.shape[-4:]
  wgrad = lambda a, b: onednn._call("backward_weights", w_shape, a.dtype, (a, b), strides,
                                    dil, pads)
  got_w = jax.jit(jax.vmap(jax.vmap(wgrad)))(x, g)
  ref_w = jax.vmap(jax.vmap(lambda a, b: jax.vjp(
      lambda w_: _ref(a, w_, strides, pads), jnp.zeros(w_shape))[1](b)[0]))(x, g)
  np.testing.assert_allclose(np.asarray(got_w), np.asarray(ref_w), rtol=1e-4, atol=1e-4)
  # The weight gradient with the bias gradient: db is g summed but for channels.
  wbgrad = lambda a, b: onednn._call("backward_weights_bias", w_shape, a.dtype, (a, b),
                                     strides, dil, pads)
  got_w, got_b = jax.jit(jax.vmap(jax.vmap(wbgrad)))(x, g)
  np.testing.assert_allclose(np.asarray(got_w), np.asarray(ref_w), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(got_b), g.sum(axis=(2, 3, 4)), rtol=1e-4, atol=1e-4)


def test_target_rejects_float16_with_a_clear_error():
  x = jnp.ones((1, 5, 2), jnp.float16)
  w = jnp.ones((3, 2, 2), jnp.float16)
  with pytest.raises(Exception, match="only float32 and bfloat16"):
    jax.block_until_ready(jax.jit(lambda a, b: onednn._call(
        "forward", (1, 3, 2), a.dtype, (a, b), (1,), (1,), ((0, 0),)))(x, w))


def test_implementations_are_onednn_jit_kernels():
  """At the S1 video shapes oneDNN must pick a JIT kernel, not its reference."""
  for p in ("forward", "backward_data", "backward_weights"):
    name = onednn.impl_name(p, (2, 15, 40, 35, 16), (3, 3, 3, 16, 32), (1, 1, 1), (1, 1, 1),
                            ((1, 1),) * 3)
    assert "ref" not in name and name not in ("unsupported", "unavailable"), (p, name)


def test_missing_extension_falls_back_with_one_warning_line():
  code = textwrap.dedent("""
      import numpy as np, jax
      from avjax.ops import onednn
      onednn.LIBRARY = "/nonexistent/_onednn_conv.so"
      from avjax.layers import conv_nd
      x = np.ones((2, 5, 6, 3), np.float32); w = np.ones((3, 3, 3, 4), np.float32)
      ys = [jax.jit(lambda a, b, i=impl: conv_nd(a, b, impl=i))(x, w)
            for impl in ("onednn", "auto", "onednn")]
      ref = jax.jit(lambda a, b: conv_nd(a, b, impl="xla"))(x, w)
      assert all(np.allclose(y, ref) for y in ys)
      print("ok")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "ok"
  lines = [l for l in done.stderr.splitlines() if "oneDNN" in l]
  assert len(lines) == 1, done.stderr
  assert "_onednn_conv.so is missing" in lines[0] and "XLA's convolutions" in lines[0]


def test_export_keeps_a_portable_function():
  """jax.export refuses the oneDNN targets unless told to (they carry no
  compatibility guarantee, and a loading host must register them), so serving
  exports use the pure-XLA 'cpu' path; opted in, the round trip works where
  avjax/ops is loaded."""
  x = jax.ShapeDtypeStruct((2, 5, 6, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
  fn = lambda impl: jax.jit(lambda a, b: conv_nd(a, b, impl=impl))
  with pytest.raises(ValueError, match="avjax_onednn_conv_forward"):
    jax.export.export(fn("onednn"), platforms=("cpu",))(x, w)
  assert "avjax_onednn" not in jax.export.export(fn("cpu"), platforms=("cpu",))(
      x, w).mlir_module()
  checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in onednn.TARGETS.values()]
  exported = jax.export.export(fn("onednn"), platforms=("cpu",), disabled_checks=checks)(x, w)
  again = jax.export.deserialize(exported.serialize())
  a = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
  b = np.random.default_rng(2).standard_normal(w.shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(again.call(a, b)),
                             np.asarray(_ref(a, b, (1, 1), ((1, 1), (1, 1)))),
                             rtol=1e-4, atol=1e-4)


def test_build_without_a_compiler_says_so_in_one_line_and_keeps_the_library():
  before = os.path.getmtime(onednn.LIBRARY)
  env = dict(os.environ, CXX="/nonexistent/c++")
  done = subprocess.run([sys.executable, "-m", "avjax.ops.build", "--force"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith("avjax.ops.build: not built, avjax will use its XLA "
                                "convolutions:")
  assert os.path.getmtime(onednn.LIBRARY) == before
