"""MobileNet-v2 encoder, laid out as the official model: `layer1` (stem) .. `layer8`."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hydrajax.models import layers

# (expansion t, out channels c, repeats n, stride s) for layer2 .. layer8.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32


def batch_norm(train: bool, dtype: Any, name: str, axis_name: str | None = None
               ) -> nn.BatchNorm:
  """PyTorch-equivalent BatchNorm (eps 1e-5, PyTorch momentum 0.1). With `axis_name`
  (inside pmap), training statistics are taken over the batch of all devices."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, axis_name=axis_name if train else None, name=name)


class ConvBN(nn.Module):
  """conv -> BatchNorm -> optional ReLU6. `kind` is 'dense', 'pointwise' or 'depthwise'."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  kind: str = "pointwise"
  act: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  impl: str = "auto"  # layers.IMPLS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, impl=self.impl, name="conv")
    if self.kind == "pointwise":
      conv = layers.Conv1x1(self.features, **kw)
    elif self.kind == "depthwise":
      conv = layers.DepthwiseConv(self.kernel_size, self.stride, **kw)
    else:
      conv = layers.Conv(self.features, self.kernel_size, self.stride, **kw)
    x = batch_norm(train, self.dtype, "bn", self.bn_axis_name)(conv(x))
    return layers.relu6(x) if self.act else x


class InvertedResidual(nn.Module):
  """1x1 expand -> 3x3 depthwise (stride) -> 1x1 project; residual when shapes allow.

  Official keys `output.0/1/2` map to `expand`, `depthwise`, `project`. Even t=1 has the
  expansion conv, as in the official model.
  """
  features: int
  expansion: int
  stride: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cin = x.shape[-1]
    hidden = cin * self.expansion
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name, impl=self.impl)
    y = ConvBN(hidden, 1, name="expand", **kw)(x, train)
    y = ConvBN(hidden, 3, self.stride, "depthwise", name="depthwise", **kw)(y, train)
    y = ConvBN(self.features, act=False, name="project", **kw)(y, train)
    if cin == self.features and self.stride == 1:
      y = y + x
    return y


class MobileNetV2Encoder(nn.Module):
  """NHWC normalised image -> the outputs of layer3..layer8 (strides 4,8,16,16,32,32;
  channels 24,32,64,96,160,320)."""
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name, impl=self.impl)
    x = ConvBN(STEM_CHANNELS, 3, 2, "dense", name="layer1", **kw)(x, train)
    feats = []
    for idx, (t, c, n, s) in enumerate(MOBILENET_V2_SETTINGS):
      name = f"layer{idx + 2}"
      for j in range(n):
        block = InvertedResidual(c, t, s if j == 0 else 1, name=f"{name}_{j}", **kw)
        x = block(x, train)
      if idx >= 1:
        feats.append(x)
    return feats
