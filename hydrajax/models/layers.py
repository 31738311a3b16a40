"""Building blocks written for XLA: 1x1 convs as einsum, depthwise convs as shifted
multiply-adds, the CRP max-pool as two 1-D pools, bilinear resize as two matmuls.

Each layer gives the same numbers as its PyTorch counterpart (symmetric padding k//2,
half-pixel or corner-aligned bilinear), while avoiding XLA:CPU's slow grouped convolutions
and 2-D window reductions (see REFERENCE.md, "Speed on a CPU"). Kernels keep Flax's HWIO
layout, depthwise kernels are (kh, kw, 1, C), so checkpoints convert with a transpose.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# PyTorch's default init for convs is kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ..).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0.0, 6.0)


class Conv1x1(nn.Module):
  """Pointwise conv without bias, as an einsum over channels. NHWC -> NHWC."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features))
    return jnp.einsum("nhwc,cd->nhwd", x.astype(self.dtype),
                      kernel[0, 0].astype(self.dtype))


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (groups = channels) with symmetric padding k//2, no bias.

  Computed as k*k shifted slices times per-channel weights: identical to PyTorch's
  `Conv2d(C, C, k, stride, padding=k//2, groups=C)`, and 10x faster than XLA's grouped
  conv on CPU. Kernel: (k, k, 1, C).
  """
  kernel_size: int = 3
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    c = x.shape[-1]
    kernel = self.param("kernel", conv_init, (k, k, 1, c)).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1 and s == 1:
      return x * kernel[0, 0, 0]
    p = k // 2
    _, h, w, _ = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = None
    for i in range(k):
      for j in range(k):
        patch = jax.lax.slice(
            xp, (0, i, j, 0), (xp.shape[0], i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
            (1, s, s, 1))
        term = patch * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


class Conv(nn.Module):
  """Dense k x k conv with symmetric padding k//2 (PyTorch semantics), optional bias."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, p = self.kernel_size, self.kernel_size // 2
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride),
        ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
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


def _max_pool_1d(x: jax.Array, axis: int, window: int) -> jax.Array:
  """Stride-1 max-pool along `axis` with -inf padding window//2 (same size out)."""
  p = window // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (p, p)
  xp = jnp.pad(x, pad, constant_values=-jnp.inf)
  n = x.shape[axis]
  out = None
  for i in range(window):
    sl = jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
    out = sl if out is None else jnp.maximum(out, sl)
  return out


def max_pool_5x5(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC, as a 5x1 then a 1x5 pool."""
  return _max_pool_1d(_max_pool_1d(x, 1, 5), 2, 5)


@functools.lru_cache(maxsize=256)
def _interp_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """(n_out, n_in) matrix of 1-D linear interpolation weights, PyTorch conventions."""
  m = np.zeros((n_out, n_in), np.float32)
  if align_corners:
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float64) * scale
  else:
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = (src - i0).astype(np.float32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), 1.0 - w1)
  np.add.at(m, (rows, i1), w1)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of (..., H, W, C) to (..., h, w, C), same as PyTorch's
  `F.interpolate(mode='bilinear', align_corners=...)` given an output size (no antialias)."""
  h_in, w_in = x.shape[-3], x.shape[-2]
  h, w = size
  if (h_in, w_in) == (h, w):
    return x
  mh = jnp.asarray(_interp_matrix(h_in, h, align_corners), x.dtype)
  mw = jnp.asarray(_interp_matrix(w_in, w, align_corners), x.dtype)
  x = jnp.einsum("Hh,...hwc->...Hwc", mh, x)
  return jnp.einsum("Ww,...hwc->...hWc", mw, x)
