"""Pieces shared by the layer forms: XLA's convolution with PyTorch's padding, the separable
max-pool with its int8-argmax gradient, and 1-D bilinear interpolation (PyTorch's conventions).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

CRP_STAGES = 4
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general(x: jax.Array, kernel: jax.Array, stride: int = 1, groups: int = 1
                 ) -> jax.Array:
  """XLA's convolution, NHWC x HWIO, symmetric padding k//2 (PyTorch's, not Flax's 'SAME')."""
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                      dimension_numbers=_NHWC, feature_group_count=groups)


def crp_chain(x: jax.Array, scales: jax.Array, pool: Callable[[jax.Array], jax.Array]
              ) -> jax.Array:
  """crp1: top = scales[k] * pool(top); x += top, k = 0..3. scales (4, C)."""
  top = x
  for k in range(CRP_STAGES):
    top = pool(top) * scales[k]
    x = x + top
  return x


def _pool_windows(x: jax.Array, axis: int, window: int, fill, barrier: bool
                  ) -> list[jax.Array]:
  """The `window` shifted views x[i - p + k], k = 0..window-1, padded with `fill`, each of
  shape (outer, n, inner) with the pooled axis in the middle.

  With `barrier` (xla_cpu) the padded array is materialised behind an optimization barrier:
  XLA:CPU otherwise fuses the pad (a bounds check per element) into every consumer and
  recomputes whole chains of pools inside later fusions. The 3-D view keeps the pad on
  contiguous rows rather than on a middle axis of NHWC.
  """
  p = window // 2
  n = x.shape[axis]
  # Leading dims may be symbolic (jax.export batch); the trailing ones are static.
  x3 = x.reshape(-1, n, int(np.prod(x.shape[axis + 1:])))
  xp = jnp.pad(x3, ((0, 0), (p, p), (0, 0)), constant_values=fill)
  if barrier:
    xp = jax.lax.optimization_barrier(xp)
  return [jax.lax.slice_in_dim(xp, k, k + n, axis=1) for k in range(window)]


def max_pool_1d_with_arg(x: jax.Array, axis: int, window: int, barrier: bool
                         ) -> tuple[jax.Array, jax.Array]:
  """Stride-1 max-pool along `axis` with -inf padding window//2, and the int8 offset k of
  the first maximum in each window (input index i - p + k), as PyTorch picks on ties."""
  views = _pool_windows(x, axis, window, -jnp.inf, barrier)
  out, arg = views[0], jnp.zeros(views[0].shape, jnp.int8)
  for k in range(1, window):
    better = views[k] > out
    out = jnp.where(better, views[k], out)
    arg = jnp.where(better, jnp.int8(k), arg)
  return out.reshape(x.shape), arg.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_1d(x: jax.Array, axis: int, window: int, barrier: bool) -> jax.Array:
  """Stride-1 max-pool along `axis`, -inf padding window//2. With `barrier` a max of the
  shifted views of the materialised pad (XLA:CPU's reduce_window is slower), else XLA's
  reduce_window. The backward routes the cotangent by the saved int8 argmax offset."""
  if barrier:
    views = _pool_windows(x, axis, window, -jnp.inf, barrier)
    out = views[0]
    for view in views[1:]:
      out = jnp.maximum(out, view)
    return out.reshape(x.shape)
  p = window // 2
  dims, pads = [1] * x.ndim, [(0, 0)] * x.ndim
  dims[axis], pads[axis] = window, (p, p)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, (1,) * x.ndim, pads)


def _max_pool_1d_fwd(x, axis, window, barrier):
  return max_pool_1d_with_arg(x, axis, window, barrier)


def _max_pool_1d_bwd(axis, window, barrier, arg, g):
  # Output j took input j - p + k where k = arg[j]; so input i receives g[j] from the
  # outputs j = i + p - k with arg[j] == k: `window` shifted, masked adds, no scatter.
  gs = _pool_windows(g, axis, window, 0, barrier)
  args = _pool_windows(arg, axis, window, -1, barrier)
  dx = None
  for k in range(window):
    j = window - 1 - k  # view j holds position i - p + j = i + p - k
    term = jnp.where(args[j] == k, gs[j], jnp.zeros((), g.dtype))
    dx = term if dx is None else dx + term
  return (dx.reshape(g.shape),)


max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)


def separable_max_pool_5x5(x: jax.Array, barrier: bool) -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC as a 5x1 then a 1x5 pool.

  Each 1-D pool saves only an int8 argmax offset for its backward (five shifted, masked
  adds): deterministic on every backend, where XLA's generic max-pool gradient builds index
  arrays and a scatter (atomics on GPU)."""
  return max_pool_1d(max_pool_1d(x, 1, 5, barrier), 2, 5, barrier)


def interp_taps(n_in: int, n_out: int, align_corners: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """1-D linear interpolation from n_in to n_out samples as two taps, PyTorch conventions:
  out[o] = w0[o] * x[i0[o]] + w1[o] * x[i1[o]]. Returns (i0, i1, w0, w1), each (n_out,):
  int64 indices in [0, n_in) (edges clamped, so i0 == i1 there) and float64 weights."""
  if align_corners:
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float64) * scale
  else:
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = src - i0
  return i0, i1, 1.0 - w1, w1


@functools.lru_cache(maxsize=256)
def interp_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """(n_out, n_in) float64 matrix of 1-D linear interpolation weights, PyTorch conventions
  (cast to the input's dtype by the caller: exact in float64 runs)."""
  m = np.zeros((n_out, n_in), np.float64)
  i0, i1, w0, w1 = interp_taps(n_in, n_out, align_corners)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), w0)
  np.add.at(m, (rows, i1), w1)
  return m


def _phase_taps(factor: int):
  """Per output phase r of integer half-pixel upsampling: (start, w0, w1) with output
  s*i + r = w0 * xp[i + start] + w1 * xp[i + start + 1], xp[j] = x[clamp(j - 1)]."""
  for r in range(factor):
    f = (r + 0.5) / factor - 0.5  # source position i + f, |f| < 0.5
    start = 0 if f < 0 else 1  # taps x[i-1], x[i] or x[i], x[i+1]
    w1 = np.float32(1.0 + f if f < 0 else f)
    w0 = np.float32(1.0) - w1 if f >= 0 else np.float32(-f)
    yield r, start, w0, w1


def interp_along_axis1(x: jax.Array, m: np.ndarray) -> jax.Array:
  """m (n_out, n_in) applied along axis 1 of x (N, n_in, ...): a batched matmul with m
  broadcast over the batch, so no transposes; XLA materialises x once as its operand."""
  m = jnp.asarray(m, x.dtype)
  out = jax.lax.dot_general(jnp.broadcast_to(m, (x.shape[0],) + m.shape),
                            x.reshape(x.shape[0], m.shape[1], -1), (((2,), (1,)), ((0,), (0,))))
  return out.reshape((x.shape[0], m.shape[0]) + x.shape[2:])


def _upsample_slices(x: jax.Array, axis: int, factor: int) -> jax.Array:
  """Half-pixel upsampling by `factor` along `axis` as shifted slices and two-tap blends."""
  n = x.shape[axis]
  shape = list(x.shape)
  shape[axis] = n * factor
  # Leading dims may be symbolic (jax.export batch); the trailing ones are static.
  x3 = x.reshape(-1, n, int(np.prod(x.shape[axis + 1:])))
  xp = jnp.concatenate([x3[:, :1], x3, x3[:, -1:]], axis=1)  # xp[j] = x[clamp(j - 1)]
  phases = []
  for _, start, w0, w1 in _phase_taps(factor):
    lo = jax.lax.slice_in_dim(xp, start, start + n, axis=1)
    hi = jax.lax.slice_in_dim(xp, start + 1, start + 1 + n, axis=1)
    phases.append(lo * w0.astype(x.dtype) + hi * w1.astype(x.dtype))
  out = jnp.stack(phases, axis=2)  # (outer, n, factor, inner)
  return out.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def upsample_axis(x: jax.Array, axis: int, factor: int, matmul_along_h: bool) -> jax.Array:
  """Half-pixel bilinear upsampling by an integer factor along `axis`: output s*i + r is a
  fixed two-tap blend of x[i-1], x[i] or x[i], x[i+1] (edges replicated, PyTorch's clamping).
  `matmul_along_h` (xla_cpu) runs axis 1 as a batched matmul: XLA:CPU otherwise fuses the
  producer (e.g. a head's 9-slice sum) into every shifted read and recomputes it there."""
  if axis == 1 and matmul_along_h:
    n = x.shape[axis]
    return interp_along_axis1(x, interp_matrix(n, n * factor, False))
  return _upsample_slices(x, axis, factor)


def _upsample_axis_fwd(x, axis, factor, matmul_along_h):
  return upsample_axis(x, axis, factor, matmul_along_h), None


def _upsample_axis_bwd(axis, factor, matmul_along_h, _, g):
  n = g.shape[axis] // factor
  if axis == 1:
    # Along H (the batch the only outer axis): the transposed interpolation matrix as a
    # matmul, whose operand XLA materialises (shifted reads fused the upstream backward into
    # themselves and recomputed it per read).
    return (interp_along_axis1(g, interp_matrix(n, n * factor, False).T),)
  # Otherwise elementwise: xp[j] receives a[s][j - s] for s = 0, 1, 2, with a[s] the weighted
  # sum of the phases that read xp at offset s; then xp's two clamped edge rows fold into
  # x's first and last (no moveaxis transposes around an interpolation matrix).
  shape = list(g.shape)
  shape[axis] = n
  g4 = g.reshape(-1, n, factor, int(np.prod(g.shape[axis + 1:])))
  a = [None, None, None]
  for r, start, w0, w1 in _phase_taps(factor):
    for s, w in ((start, w0), (start + 1, w1)):
      term = g4[:, :, r] * w.astype(g.dtype)
      a[s] = term if a[s] is None else a[s] + term
  # x[i] = xp[i + 1] gets a[1][i] + a[0][i + 1] + a[2][i - 1]; x[0] also xp[0] = a[0][0],
  # x[n - 1] also xp[n + 1] = a[2][n - 1].
  above = jnp.concatenate([a[0][:, 1:], a[2][:, -1:]], axis=1)
  below = jnp.concatenate([a[0][:, :1], a[2][:, :-1]], axis=1)
  return ((a[1] + above + below).reshape(shape),)


upsample_axis.defvjp(_upsample_axis_fwd, _upsample_axis_bwd)


def _resize_axis(x: jax.Array, axis: int, n_out: int, align_corners: bool,
                 matmul_along_h: bool) -> jax.Array:
  n_in = x.shape[axis]
  if n_in == n_out:
    return x
  if not align_corners and n_out % n_in == 0:
    return upsample_axis(x, axis, n_out // n_in, matmul_along_h)
  m = jnp.asarray(interp_matrix(n_in, n_out, align_corners), x.dtype)
  x = jnp.moveaxis(x, axis, -1)
  return jnp.moveaxis(jnp.einsum("...i,oi->...o", x, m), -1, axis)


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool,
                    matmul_along_h: bool) -> jax.Array:
  """Bilinear resize of (..., H, W, C) to (..., h, w, C), PyTorch's `F.interpolate(mode=
  'bilinear', align_corners=...)` given an output size (no antialias). Integer half-pixel
  upsampling factors run as two-tap blends; other sizes as a matrix per axis."""
  h, w = size
  x = _resize_axis(x, x.ndim - 3, h, align_corners, matmul_along_h)
  return _resize_axis(x, x.ndim - 2, w, align_corners, matmul_along_h)
