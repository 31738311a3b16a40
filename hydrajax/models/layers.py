"""The network's building blocks as Flax modules, each computing through the layer form its
`impl` names (hydrajax.models.ops: "auto", "native", "xla_cpu", "ffi").

Each layer gives the same numbers as its PyTorch counterpart (symmetric padding k//2,
half-pixel or corner-aligned bilinear). Kernels keep Flax's HWIO layout, depthwise kernels
are (kh, kw, 1, C), so checkpoints convert with a transpose.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hydrajax.models import ops

Dtype = Any
IMPLS = ops.IMPLS

# PyTorch's default init for convs is kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ..).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def relu6(x: jax.Array) -> jax.Array:
  """min(max(x, 0), 6) with PyTorch's gradient: 1 on (0, 6), else 0. (`jnp.clip` splits
  the gradient at ties 0 and 6 and costs a compare-divide chain in XLA's backward.)"""
  zero = jnp.zeros((), x.dtype)
  return jnp.where(x > 0, jnp.where(x < 6, x, jnp.asarray(6, x.dtype)), zero)


class Conv1x1(nn.Module):
  """Pointwise conv without bias. NHWC -> NHWC."""
  features: int
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features))
    return ops.get(self.impl).conv1x1(x.astype(self.dtype), kernel.astype(self.dtype))


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (groups = channels) with symmetric padding k//2, no bias: PyTorch's
  `Conv2d(C, C, k, stride, padding=k//2, groups=C)`. Kernel (k, k, 1, C). 1x1 stride 1 is a
  per-channel multiply in every form."""
  kernel_size: int = 3
  stride: int = 1
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    kernel = self.param("kernel", conv_init, (k, k, 1, x.shape[-1])).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1 and s == 1:
      ops.check(self.impl)
      return x * kernel[0, 0, 0]
    return ops.get(self.impl).depthwise_conv(x, kernel, stride=s)


class Conv(nn.Module):
  """Dense k x k conv with symmetric padding k//2 (PyTorch semantics), optional bias."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = ops.get(self.impl).conv(x, kernel, stride=self.stride)
    if self.use_bias:
      fan_in = k * k * x.shape[-1]
      bound = 1.0 / np.sqrt(fan_in)
      # The stored bias is the bias that is added (checkpoints convert 1:1), drawn from
      # U(-bound, bound) as PyTorch does.
      bias_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
          key, shape, dtype, -bound, bound)
      bias = self.param("bias", bias_init, (self.features,))
      y = y + bias.astype(self.dtype)
    return y


def max_pool_5x5(x: jax.Array, impl: str = "auto") -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC, in the form `impl` names."""
  return ops.get(impl).max_pool_5x5(x)


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False,
                    impl: str = "auto") -> jax.Array:
  """Bilinear resize of (..., H, W, C) to (..., h, w, C), same as PyTorch's
  `F.interpolate(mode='bilinear', align_corners=...)` given an output size (no antialias)."""
  return ops.get(impl).resize_bilinear(x, size=tuple(size), align_corners=align_corners)
