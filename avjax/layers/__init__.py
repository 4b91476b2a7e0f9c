"""Layers shared by every avjax model: one convolution (fast on CPU, plain XLA on
TPU/GPU), a max-pool with a fast CPU gradient, and operational (Self-ONN)
convolutions built on the same convolution core."""

from avjax.layers.conv import Conv, conv_nd, resolve_impl
from avjax.layers.normalization import masked_cmvn
from avjax.layers.operational import OperationalConv, operational_init
from avjax.layers.pooling import max_pool

__all__ = ["Conv", "conv_nd", "resolve_impl", "max_pool", "masked_cmvn",
           "OperationalConv", "operational_init"]
from avjax.layers.attention import (CBAM, ChannelAttention, CrossModalAttention,  # noqa: E402
                                    SpatialAttention, TemporalAttention)
__all__ += ["CBAM", "ChannelAttention", "SpatialAttention", "TemporalAttention",
            "CrossModalAttention"]
