"""Operational (Self-ONN) convolution: the math it promises, its init, its grads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from avjax.layers import OperationalConv, conv_nd
from avjax.layers.operational import operational_init, power_concat, tanh_moment

# (spatial input, kernel, padding, strides)
DIMS = [((11,), (3,), "VALID", 1), ((7, 6), (3, 3), "SAME", 2), ((4, 5, 3), (3, 3, 3), "SAME", 1)]


def _x(shape, seed=0, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _plain(x, w, strides, padding):
  """Reference convolution, written independently of avjax."""
  n = w.ndim - 2
  sp = "DHW"[-n:]
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("N" + sp + "C", sp + "IO", "N" + sp + "C"))
  return lax.conv_general_dilated(x, w, (strides,) * n, padding, dimension_numbers=dn,
                                  precision=lax.Precision.HIGHEST)


def _init_apply(model, x):
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)  # non-zero bias
  return params, jax.jit(model.apply)(params, x)


@pytest.mark.parametrize("spatial,ksize,padding,strides", DIMS)
def test_order_one_is_plain_conv_of_tanh(spatial, ksize, padding, strides, impl="cpu"):
  x = _x((2, *spatial, 3))
  model = OperationalConv(4, ksize, q_order=1, padding=padding, strides=strides, impl=impl)
  params, y = _init_apply(model, x)
  p = params["params"]
  ref = _plain(np.tanh(x), p["kernel"], strides, padding) + p["bias"]
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spatial,ksize,padding,strides", DIMS)
@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_equals_sum_of_per_power_convs(spatial, ksize, padding, strides, impl):
  q, c = 3, 2
  x = _x((2, *spatial, c), seed=1, scale=2.0)
  model = OperationalConv(3, ksize, q_order=q, padding=padding, strides=strides, impl=impl)
  params, y = _init_apply(model, x)
  kernel, bias = params["params"]["kernel"], params["params"]["bias"]
  assert kernel.shape == (*ksize, q * c, 3)
  t = np.tanh(x)
  ref = bias
  for i in range(1, q + 1):
    w_q = kernel[..., (i - 1) * c:i * c, :]
    ref = ref + _plain(t ** i, w_q, strides, padding)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_power_concat_is_power_major():
  x = jnp.asarray([[0.5, -2.0]])
  np.testing.assert_allclose(np.asarray(power_concat(x, 3)),
                             [[0.5, -2.0, 0.25, 4.0, 0.125, -8.0]])


@pytest.mark.parametrize("impl", ["xla", "cpu"])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_gradients_finite(impl, scale):
  x = _x((2, 6, 5, 2), seed=2, scale=scale)
  model = OperationalConv(3, (3, 3), q_order=5, impl=impl)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  @jax.jit
  def grads(p, x):
    return jax.grad(lambda p_, x_: jnp.sum(model.apply(p_, x_) ** 2), argnums=(0, 1))(p, x)
  gp, gx = grads(params, x)
  leaves = jax.tree_util.tree_leaves(gp) + [gx]
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(gp["params"]["kernel"]).max()) > 0


def test_tanh_moments_match_monte_carlo():
  z = np.tanh(np.random.default_rng(3).standard_normal(400_000))
  for order in (2, 4, 6):
    assert abs(tanh_moment(order) - np.mean(z ** order)) < 5e-3
  # Bounded by 1 and shrinking with the order, as the init relies on.
  assert 1 > tanh_moment(2) > tanh_moment(4) > tanh_moment(6) > 0


def test_init_variance_per_power():
  q, k, c = 3, (3, 3), 16
  w = operational_init(q)(jax.random.PRNGKey(0), (*k, q * c, 64))
  fan_in = 9 * c
  for i in range(1, q + 1):
    block = np.asarray(w[..., (i - 1) * c:i * c, :])
    expected = 1.0 / (q * fan_in * tanh_moment(2 * i))
    assert abs(block.var() / expected - 1) < 0.15


@pytest.mark.parametrize("q_order", [1, 3, 5])
def test_output_variance_at_init_matches_plain_conv(q_order):
  """With zero-mean independent weights, E[y^2] = sum_q fan_in Var(W_q) E[t^2q],
  which the init sets to 1; a lecun-normal plain conv on unit-variance inputs
  also gives E[y^2] = fan_in * (1 / fan_in) * E[x^2] = 1. Allow a factor 2."""
  x = _x((4, 16, 16, 16), seed=4)
  model = OperationalConv(32, (3, 3), q_order=q_order, padding="VALID", impl="xla")
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  y = np.asarray(jax.jit(model.apply)(params, x))
  w_plain = jax.nn.initializers.lecun_normal()(jax.random.PRNGKey(1), (3, 3, 16, 32))
  y_plain = np.asarray(conv_nd(jnp.asarray(x), w_plain, padding="VALID", impl="xla"))
  ratio = np.mean(y ** 2) / np.mean(y_plain ** 2)
  assert 0.5 < ratio < 2.0, ratio
