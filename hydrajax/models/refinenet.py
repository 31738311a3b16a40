"""Light-Weight RefineNet decoder with Chained Residual Pooling (CRP) blocks."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hydrajax.models import layers, ops
from hydrajax.models.ops.common import CRP_STAGES

DECODER_CHANNELS = 256


class _DepthwiseKernel1x1(nn.Module):
  """The (1, 1, 1, C) kernel of a 1x1 depthwise conv: the param `layers.DepthwiseConv(1)`
  makes (same name, shape and init), for blocks that apply it themselves."""
  @nn.compact
  def __call__(self, channels: int) -> jax.Array:
    return self.param("kernel", layers.conv_init, (1, 1, 1, channels))


class CRPBlock(nn.Module):
  """Chained residual pooling: top = conv(maxpool5x5(top)); x += top, 4 times.

  `depthwise` makes each 1x1 conv per-channel (crp1 in the official model, groups=256).
  Official keys `crpK.0.{i}_outvar_dimred` map to `conv{i}`.
  """
  depthwise: bool = False
  dtype: Any = jnp.float32
  impl: str = "auto"  # ops.IMPLS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.depthwise:
      scales = jnp.stack([_DepthwiseKernel1x1(name=f"conv{i}")(x.shape[-1])[0, 0, 0]
                          for i in range(1, CRP_STAGES + 1)]).astype(self.dtype)
      return ops.get(self.impl).crp_depthwise(x.astype(self.dtype), scales)
    top = x
    kw = dict(dtype=self.dtype, impl=self.impl)
    for i in range(1, CRP_STAGES + 1):
      top = layers.max_pool_5x5(top, self.impl)
      top = layers.Conv1x1(x.shape[-1], name=f"conv{i}", **kw)(top)
      x = x + top
    return x


class RefineNetDecoder(nn.Module):
  """Fuses encoder features l3..l8 into one 256-channel map at stride 4 (official order)."""
  align_corners: bool = False
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, feats: list[jax.Array]) -> jax.Array:
    l3, l4, l5, l6, l7, l8 = feats
    kw = dict(dtype=self.dtype, impl=self.impl)
    conv = lambda name: layers.Conv1x1(DECODER_CHANNELS, name=name, **kw)
    up = lambda x, ref: layers.resize_bilinear(x, ref.shape[1:3], self.align_corners, self.impl)

    x = layers.relu6(conv("conv8")(l8) + conv("conv7")(l7))
    x = CRPBlock(name="crp4", **kw)(x)
    x = up(conv("conv_adapt4")(x), l6)

    x = layers.relu6(conv("conv5")(l5) + conv("conv6")(l6) + x)
    x = CRPBlock(name="crp3", **kw)(x)
    x = up(conv("conv_adapt3")(x), l4)

    x = layers.relu6(conv("conv4")(l4) + x)
    x = CRPBlock(name="crp2", **kw)(x)
    x = up(conv("conv_adapt2")(x), l3)

    x = layers.relu6(conv("conv3")(l3) + x)
    return CRPBlock(depthwise=True, name="crp1", **kw)(x)
