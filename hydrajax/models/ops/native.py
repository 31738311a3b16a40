"""The "native" form: XLA's own operations, for GPU and TPU (and the reference the other
forms are tested against). Every conv is `lax.conv_general_dilated` (depthwise with
feature_group_count = C); the CRP pool is reduce_window with the deterministic int8-argmax
gradient; no optimization barriers."""
from __future__ import annotations

import jax

from hydrajax.models.ops import common


def conv1x1(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(N, H, W, C) x (1, 1, C, D) -> (N, H, W, D)."""
  return common.conv_general(x, kernel)


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """k x k depthwise conv, padding k//2: (N, H, W, C) x (k, k, 1, C)."""
  return common.conv_general(x, kernel, stride, x.shape[-1])


def conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """Dense k x k conv, padding k//2: (N, H, W, C) x (k, k, C, D)."""
  return common.conv_general(x, kernel, stride)


def max_pool_5x5(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC."""
  return common.separable_max_pool_5x5(x, barrier=False)


def crp_depthwise(x: jax.Array, scales: jax.Array) -> jax.Array:
  """crp1's four pool-and-scale stages: x (N, H, W, C), scales (4, C)."""
  return common.crp_chain(x, scales, max_pool_5x5)


def resize_bilinear(x: jax.Array, *, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """(..., H, W, C) -> (..., h, w, C), PyTorch's bilinear interpolation."""
  return common.resize_bilinear(x, size, align_corners, matmul_along_h=False)
