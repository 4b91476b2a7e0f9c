"""Layers shared by every avjax model: one convolution (fast on CPU, plain XLA on
TPU/GPU) and operational (Self-ONN) convolutions built on it."""

from avjax.layers.conv import Conv, conv_nd, resolve_impl
from avjax.layers.operational import OperationalConv, operational_init

__all__ = ["Conv", "conv_nd", "resolve_impl", "OperationalConv", "operational_init"]
