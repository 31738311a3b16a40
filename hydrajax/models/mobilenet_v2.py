"""MobileNet-v2 encoder, laid out as the official model: `layer1` (stem) .. `layer8`."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hydrajax.models import layers

# (expansion t, out channels c, repeats n, stride s) for layer2 .. layer8.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32


class BatchNorm(nn.Module):
  """BatchNorm over the last axis (NHWC) with PyTorch BatchNorm2d's training rule: normalise
  with the biased batch variance, move the running variance toward the unbiased one (times
  n / (n - 1), n = values per channel: N*H*W, over all devices of `axis_name` if given).

  Variables as flax.linen.BatchNorm's: params `scale`, `bias` (float32), batch_stats `mean`,
  `var` (float32). `momentum` is the old running value's weight (PyTorch's 1 - momentum).
  Statistics are computed in at least float32 (bfloat16 compute), in float64 for float64.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var, n = self._batch_stats(x, axes)
      if not self.is_initializing():
        unbiased = var * (n / (n - 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    # The same operations, in the same order, as flax.linen.BatchNorm's normalisation.
    y = x - mean
    y = y * (jax.lax.rsqrt(var + self.epsilon) * scale)
    y = y + bias
    return jnp.asarray(y, self.dtype or jnp.result_type(x, scale, bias))

  def _batch_stats(self, x: jax.Array, axes: tuple[int, ...]
                   ) -> tuple[jax.Array, jax.Array, int]:
    """(mean, biased variance, n) per channel, as E[x^2] - E[x]^2 in one pass (as Flax's);
    over every device of `axis_name` outside init. Raises ValueError if n < 2."""
    x = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    axis_name = None if self.is_initializing() else self.axis_name
    n = math.prod(x.shape[a] for a in axes)
    means = jnp.stack([x.mean(axes), jnp.square(x).mean(axes)])
    if axis_name is not None:
      n *= jax.lax.axis_size(axis_name)
      means = jax.lax.pmean(means, axis_name)
    if n < 2 and not self.is_initializing():
      where = "/".join(self.scope.path) or self.name
      raise ValueError(f"BatchNorm {where}: training needs more than 1 value per channel, got "
                       f"input shape {x.shape} (n = {n}); use a larger batch or crop, or "
                       f"config.freeze_bn")
    mean, mean_sq = means[0], means[1]
    return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean)), n


def batch_norm(train: bool, dtype: Any, name: str, axis_name: str | None = None
               ) -> BatchNorm:
  """PyTorch BatchNorm2d (eps 1e-5, momentum 0.1; the running variance moves toward the
  unbiased batch variance). With `axis_name` (inside pmap), training statistics and n are
  those of the batch of all devices."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   axis_name=axis_name if train else None, name=name)


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
