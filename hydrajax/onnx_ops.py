"""ONNX-friendly forms of three hydrajax layers, swapped in only while tracing for ONNX export.

The main layers are written for XLA:CPU (depthwise convs as shifted slices, 1x1 convs as
einsum, the 5x5 max-pool as two 1-D slice maxima). jax2onnx converts them exactly, but into
~3000 small ONNX nodes (Slice/Concat/Shape/Einsum ...) that onnxruntime runs ~3x slower than
its native kernels. Inside `onnx_friendly()` the same parameters are used through
  - DepthwiseConv (k > 1): `lax.conv` with feature_group_count = C  -> ONNX Conv(group=C)
  - Conv1x1:               `lax.conv` with a 1x1 kernel            -> ONNX Conv
  - max_pool_5x5:          `lax.reduce_window` max on (N*C, H, W)   -> ONNX MaxPool(1, 5, 5)
Each computes the same function (max-pool: identical values; convs: same products, summed in
another order, ~1e-7 relative). The max-pool goes through NCHW and a rank-3 reshape because
jax2onnx lowers reduce_window_max by treating every operand axis as spatial, and
onnxruntime's MaxPool supports at most 3 spatial axes.

Not thread-safe: `max_pool_5x5` is replaced on the `layers` module for the duration of the
context, so do not trace hydrajax models in other threads meanwhile.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from hydrajax.models import layers

_NHWC = ("NHWC", "HWIO", "NHWC")


def max_pool_5x5_nchw(x: jax.Array) -> jax.Array:
  """Same as `layers.max_pool_5x5` (stride 1, -inf padding 2) on NHWC, as one window max
  over (N*C, H, W) that jax2onnx lowers to a single ONNX MaxPool."""
  _, h, w, c = x.shape
  # -1 instead of N keeps the reshape targets constant for a symbolic batch.
  y = jnp.transpose(x, (0, 3, 1, 2)).reshape(-1, h, w)
  y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 5, 5), (1, 1, 1),
                            ((0, 0), (2, 2), (2, 2)))
  return jnp.transpose(y.reshape(-1, c, h, w), (0, 2, 3, 1))


def _as_conv(next_fun, args, kwargs, context) -> Any:
  """Flax method interceptor: run DepthwiseConv / Conv1x1 as `lax.conv` (same params)."""
  module = context.module
  if context.method_name != "__call__" or not isinstance(
      module, (layers.DepthwiseConv, layers.Conv1x1)):
    return next_fun(*args, **kwargs)
  if isinstance(module, layers.DepthwiseConv) and module.kernel_size == 1:
    return next_fun(*args, **kwargs)  # a per-channel multiply: already one ONNX Mul
  if not module.has_variable("params", "kernel"):
    return next_fun(*args, **kwargs)  # initialisation: let the layer create its kernel
  x = args[0].astype(module.dtype)
  kernel = module.get_variable("params", "kernel").astype(module.dtype)
  if isinstance(module, layers.Conv1x1):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((0, 0), (0, 0)),
                                        dimension_numbers=_NHWC)
  p = module.kernel_size // 2
  return jax.lax.conv_general_dilated(
      x, kernel, (module.stride, module.stride), ((p, p), (p, p)),
      dimension_numbers=_NHWC, feature_group_count=x.shape[-1])


@contextlib.contextmanager
def onnx_friendly() -> Iterator[None]:
  """While active, hydrajax models trace into ONNX-native ops (see module docstring)."""
  original = layers.max_pool_5x5
  layers.max_pool_5x5 = max_pool_5x5_nchw
  try:
    with nn.intercept_methods(_as_conv):
      yield
  finally:
    layers.max_pool_5x5 = original
