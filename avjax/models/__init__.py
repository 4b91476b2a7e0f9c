"""Model registry and the shared convolution factory.

Every network is a `flax.linen.Module` whose `__call__(inputs, *, train)` takes a
mapping of example keys to arrays and returns a dict with `logits` and
`embedding`. The trainer only ever calls `get_model(config.model.name, ...)`, so a
new paper adds a module and a `@register_model` line, never a trainer branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avjax import layers
from avjax.errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# The one place models get their convolution layer from: avjax.layers.Conv, which
# takes the fast CPU formulation on CPU and plain `lax.conv_general_dilated` on
# TPU/GPU. `set_conv_impl` overrides the automatic choice (config: model.conv_impl).
_CONV_FACTORY: Callable[..., nn.Module] = layers.Conv
_CONV_IMPL = "auto"


def conv_kernel_init(key, shape, dtype=jnp.float32):
  """LeCun-normal (flax's default) drawn as a flat vector, then reshaped.

  Same distribution: truncated normal, variance 1/fan_in with fan_in = receptive
  field x input channels. Drawing the 4-D/5-D shape directly makes XLA:CPU spend
  seconds compiling threefry per 3D kernel; the flat draw compiles in a blink.
  """
  fan_in = math.prod(shape[:-1])
  # 0.8796... is the std of a standard normal truncated to [-2, 2].
  stddev = math.sqrt(1.0 / fan_in) / 0.87962566103423978
  flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), jnp.float32)
  return (flat * stddev).reshape(shape).astype(dtype)


def conv(features: int, kernel_size, *, activation: str | None = None,
         **kwargs: Any) -> Callable[[Any], Any]:
  """Builds a convolution (1D, 2D or 3D from len(kernel_size)) via the factory.

  `activation` ('relu') is applied after the bias: by avjax's `Conv` itself (on
  CPU fused into the oneDNN call), after any other factory's module.
  """
  kwargs.setdefault("kernel_init", conv_kernel_init)
  if _CONV_FACTORY is layers.Conv:
    kwargs.setdefault("impl", _CONV_IMPL)
    return layers.Conv(features=features, kernel_size=tuple(kernel_size),
                       activation=activation, **kwargs)
  module = _CONV_FACTORY(features=features, kernel_size=tuple(kernel_size), **kwargs)
  if activation is None:
    return module
  act = layers.conv.ACTIVATIONS[activation]
  return lambda x: act(module(x))


def max_pool(x, window, strides=None, padding="VALID"):
  """Max-pool with the same implementation choice as `conv` (a fast CPU gradient
  for tiled windows, `flax.linen.max_pool` elsewhere)."""
  return layers.max_pool(x, tuple(window), None if strides is None else tuple(strides),
                         padding, impl=_CONV_IMPL)


def set_conv_impl(impl: str) -> str:
  """'auto' (by backend), 'xla', 'cpu' or 'onednn' (opt-in, CPU only: see
  avjax.layers.conv) for every model built after; returns the previous setting."""
  global _CONV_IMPL
  if impl not in layers.conv.IMPLS:
    raise UserError(f"model.conv_impl must be one of {layers.conv.IMPLS}, got {impl!r}")
  previous, _CONV_IMPL = _CONV_IMPL, impl
  return previous


def set_conv_factory(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
  """Replaces the convolution layer of all models; returns the previous one."""
  global _CONV_FACTORY
  previous, _CONV_FACTORY = _CONV_FACTORY, factory
  return previous


def register_model(name: str):
  """Class decorator: makes a module constructible by name from a config."""
  def wrap(cls):
    if name in _MODELS and _MODELS[name] is not cls:
      raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = cls
    return cls
  return wrap


def get_model(model_name: str, /, **kwargs: Any) -> nn.Module:
  """Instantiates a registered model; an unknown name is a user error. `kwargs`
  may hold the module's own `name` (a submodule's scope)."""
  if model_name not in _MODELS:
    raise UserError(f"unknown model {model_name!r} (known: {', '.join(sorted(_MODELS))})")
  try:
    return _MODELS[model_name](**kwargs)
  except TypeError as e:
    raise UserError(f"model {model_name!r}: bad arguments {sorted(kwargs)}: {e}") from e


_NOT_KWARGS = ("name", "inputs", "conv_impl")  # Config fields read by the trainer.


def _tuples(value):
  """Lists (config JSON has no tuples) back to tuples, so module fields hash."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def from_section(section: Mapping[str, Any], where: str = "model", **kwargs: Any) -> nn.Module:
  """A registered model from a config section ({name, inputs, **fields}): every
  field but name/inputs/conv_impl is a keyword argument, plus `kwargs`."""
  section = _tuples(dict(section))
  if "name" not in section:
    raise UserError(f"config.{where} needs a model name")
  fields = {k: v for k, v in section.items() if k not in _NOT_KWARGS}
  return get_model(section["name"], **fields, **kwargs)


def registered_models() -> tuple[str, ...]:
  return tuple(sorted(_MODELS))


# --- statistics fitted on the training split ---------------------------------------
#
# Some systems have parts that are not learnt by gradient but fitted once on the
# training fold (S2's Marginal Fisher Analysis projection, a standardiser). Such a
# model keeps them as variables in the non-trainable "fitted" collection, and
# registers a fit function under its model name:
#
#   fn(model, variables, inputs, labels) -> {"fitted": {...}}
#
# `variables` are the freshly initialised ones ({"params": ..., "fitted": ...}),
# `inputs` maps each of the model's input keys to a numpy array over the whole
# training split (one pass, no augmentation, every process sees all of it) and
# `labels` is an int array. The trainer calls it once on a fresh start, before the
# first step; the result is saved in every checkpoint with the rest of the state,
# so evaluation, export and predict use exactly the fitted values.

FITTED = "fitted"
_FITS: dict[str, Callable[..., dict]] = {}


def register_fit(model_name: str):
  """Decorator: `fn(model, variables, inputs, labels)` fits a model's "fitted"
  collection on the training split (see above)."""
  def wrap(fn):
    if model_name in _FITS and _FITS[model_name] is not fn:
      raise ValueError(f"a fit for model {model_name!r} is already registered")
    _FITS[model_name] = fn
    return fn
  return wrap


def get_fit(model_name: str) -> Callable[..., dict] | None:
  return _FITS.get(model_name)


# Importing the modules registers their models.
from avjax.models import sultana  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from avjax.models import fusion  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from avjax.models import dvemotionnet  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from avjax.models import mocanu  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from avjax.models import akturk  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from avjax.models import satvik  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from avjax.models import avjax_audio  # noqa: E402,F401  pylint: disable=g-import-not-at-top
