"""The "xla_cpu" form: the same functions rewritten for XLA:CPU, in pure XLA (exportable).

- 1x1 convs as one matmul over channels, with a hand-written backward behind an optimization
  barrier (XLA:CPU otherwise fuses e.g. the BatchNorm backward into the strided read that
  feeds the weight-gradient matmul and recomputes it there).
- depthwise convs as k*k shifted multiply-adds (XLA:CPU's grouped convolution is slow), with
  a backward of the same shifted multiply-adds and one variadic reduce for the kernel.
- the heads' 3x3 convs (>= 64 channels in) as one matmul to all taps and a sum of shifted
  slices under autodiff (XLA:CPU's convolution weight gradient is slow); in inference with
  many outputs XLA's convolution, which writes its output once.
- the CRP pool as shifted maxima of a materialised pad; bilinear upsampling along H as a
  batched matmul.
docs/cpu_backend.md gives the measurements behind each choice.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hydrajax.models.ops import common

# The heads: a stride-1 conv with at least this many input channels runs as taps' matmuls.
HEAD_MIN_CHANNELS = 64
# Heads with more outputs than this infer as XLA's convolution (its output is written once,
# where the taps' 9-slice sum is fused into the logits' upsampling and recomputed per read).
HEAD_MAX_TAP_OUTPUTS = 19


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(..., C) x (C, D) -> (..., D): a 1x1 convolution as one matmul."""
  return jnp.einsum("...c,cd->...d", x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(res, g):
  # The barrier materialises the cotangent (and the saved input) once, so that neither is
  # recomputed inside the transposed read of the weight-gradient matmul.
  x, kernel = res
  x, g = jax.lax.optimization_barrier((x, g))
  dx = jnp.einsum("...d,cd->...c", g, kernel)
  dk = jnp.einsum("mc,md->cd", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
  return dx, dk.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv1x1(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(N, H, W, C) x (1, 1, C, D) -> (N, H, W, D) as a matmul."""
  return pointwise(x, kernel[0, 0])


def _taps(xp: jax.Array, k: int, stride: int, ho: int, wo: int):
  """(i, j, the (N, ho, wo, C) strided view of padded `xp` that tap (i, j) multiplies)."""
  n, _, _, c = xp.shape
  for i in range(k):
    for j in range(k):
      yield i, j, jax.lax.slice(
          xp, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
          (1, stride, stride, 1))


def depthwise_shifts_forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise conv (kernel (k, k, 1, C), padding k//2) as k*k strided slices times weights."""
  k, s = kernel.shape[0], stride
  p = k // 2
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = None
  for i, j, patch in _taps(xp, k, s, ho, wo):
    term = patch * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_shifts(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """`depthwise_shifts_forward` with a hand-written backward (differentiating the slices
  gives k*k bounds-checked pads on XLA:CPU)."""
  return depthwise_shifts_forward(x, kernel, stride)


def _depthwise_shifts_fwd(x, kernel, stride):
  return depthwise_shifts_forward(x, kernel, stride), (x, kernel)


def _depthwise_shifts_bwd(stride, res, g):
  # out[o] = sum_i x[s*o + i - p] k[i], so dx[m] = sum_i gu[m + p - i] k[i] with gu the
  # cotangent spread to stride 1 (zeros between): the same shifted multiply-adds with the
  # flipped kernel. dk[i] = sum over batch and pixels of tap i's view of x times g.
  x, kernel = res
  k, s = kernel.shape[0], stride
  p = k // 2
  _, h, w, c = x.shape
  zero = jnp.zeros((), g.dtype)
  gu = g if s == 1 else jax.lax.pad(g, zero, ((0, 0, 0), (0, 0, s - 1), (0, 0, s - 1), (0, 0, 0)))
  # Left p, and to H + 2p in all (a negative right pad crops gu's spread tail).
  gp = jax.lax.pad(gu, zero, ((0, 0, 0), (p, h + p - gu.shape[1], 0),
                              (p, w + p - gu.shape[2], 0), (0, 0, 0)))
  flipped = kernel[::-1, ::-1]
  dx = None
  for i, j, patch in _taps(gp, k, 1, h, w):
    term = patch * flipped[i, j, 0]
    dx = term if dx is None else dx + term
  # All k*k sums in one variadic reduce over batch and columns, then over the rows: one pass
  # over x and g (separate sums each got a materialised shifted copy of x). Accumulated in at
  # least float32, as jnp.sum does for 16-bit inputs.
  acc = jnp.promote_types(g.dtype, jnp.float32)
  xp = jnp.pad(x.astype(acc), ((0, 0), (p, p), (p, p), (0, 0)))
  products = tuple(patch * g.astype(acc)
                   for _, _, patch in _taps(xp, k, s, g.shape[1], g.shape[2]))
  rows = jax.lax.reduce(products, (jnp.zeros((), acc),) * len(products),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 2))
  dk = jnp.stack([r.sum(0) for r in rows])
  return dx, dk.reshape(k, k, 1, c).astype(kernel.dtype)


depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """k x k depthwise conv, padding k//2: (N, H, W, C) x (k, k, 1, C)."""
  return depthwise_shifts(x, kernel, stride)


def conv_as_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 k x k conv, padding k//2: one matmul to all k*k taps' outputs, then a sum of
  shifted slices. Differentiated, plain matmuls."""
  k, _, cin, cout = kernel.shape
  p = k // 2
  n, h, w, _ = x.shape
  taps = pointwise(x, kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout))
  taps = jnp.pad(taps.reshape(n, h, w, k * k, cout), ((0, 0), (p, p), (p, p), (0, 0), (0, 0)))
  y = None
  for i in range(k):
    for j in range(k):
      # Output (r, c) takes tap (i, j) from input (r + i - p, c + j - p).
      t = jax.lax.slice(taps, (0, i, j, i * k + j, 0), (n, i + h, j + w, i * k + j + 1, cout))
      y = t[:, :, :, 0] if y is None else y + t[:, :, :, 0]
  return y


@jax.custom_vjp
def conv_trained_as_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """XLA's convolution in inference; under autodiff `conv_as_taps` and its backward."""
  return common.conv_general(x, kernel)


def _conv_trained_as_taps_fwd(x, kernel):
  return conv_as_taps(x, kernel), (x, kernel)


def _conv_trained_as_taps_bwd(res, g):
  # A linear map's vjp needs only the inputs: XLA drops the unused taps forward.
  return jax.vjp(conv_as_taps, *res)[1](g)


conv_trained_as_taps.defvjp(_conv_trained_as_taps_fwd, _conv_trained_as_taps_bwd)


def conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """Dense k x k conv, padding k//2. The heads (stride 1, many channels in) as taps'
  matmuls; the stem (3 channels in) as XLA's convolution, which is fine there."""
  if stride == 1 and x.shape[-1] >= HEAD_MIN_CHANNELS:
    if kernel.shape[-1] > HEAD_MAX_TAP_OUTPUTS:
      return conv_trained_as_taps(x, kernel)
    return conv_as_taps(x, kernel)
  return common.conv_general(x, kernel, stride)


def max_pool_5x5(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC, with optimization barriers."""
  return common.separable_max_pool_5x5(x, barrier=True)


def crp_depthwise(x: jax.Array, scales: jax.Array) -> jax.Array:
  """crp1's four pool-and-scale stages: x (N, H, W, C), scales (4, C)."""
  return common.crp_chain(x, scales, max_pool_5x5)


def resize_bilinear(x: jax.Array, *, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """(..., H, W, C) -> (..., h, w, C), PyTorch's bilinear interpolation."""
  return common.resize_bilinear(x, size, align_corners, matmul_along_h=True)
