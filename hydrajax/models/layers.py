"""Building blocks in two implementations of the same function, chosen by `impl`:

- "cpu": rewrites for XLA:CPU: 1x1 convs as einsum with a hand-written backward, depthwise
  convs as shifted multiply-adds, the CRP max-pool as two 1-D pools (an FFI kernel where
  `cpu_kernels` is built), optimization barriers where XLA:CPU otherwise fuses badly (see
  REFERENCE.md, "Speed on a CPU").
- "native": XLA's own forms, for GPU/TPU: `lax.conv_general_dilated` for every conv
  (feature_group_count = C for depthwise), the separable max-pool with its deterministic
  int8-argmax gradient but no barriers.
- "auto" (default): both are traced, and `jax.lax.platform_dependent` keeps "cpu" when the
  program is lowered for CPU and "native" for CUDA/ROCm/TPU (a multi-platform export keeps
  both and the runtime picks).

Each layer gives the same numbers as its PyTorch counterpart (symmetric padding k//2,
half-pixel or corner-aligned bilinear). Kernels keep Flax's HWIO layout, depthwise kernels
are (kh, kw, 1, C), so checkpoints convert with a transpose.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hydrajax.models import cpu_kernels

Dtype = Any
IMPLS = ("auto", "cpu", "native")
_NHWC = ("NHWC", "HWIO", "NHWC")


def check_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  return impl


def resolve_impl(impl: str, platform: str | None = None) -> str:
  """"auto" as the form it selects on `platform` (default: JAX's default backend): "cpu" on
  CPU, "native" elsewhere; "cpu" and "native" unchanged. Callers that know where they run
  resolve early: tracing "auto" stages out both forms, and under autodiff each
  platform_dependent becomes a cond that is linearized and transposed, which made a train
  step's trace and compile ~1.3x longer for the same program."""
  if check_impl(impl) != "auto":
    return impl
  return "cpu" if (platform or jax.default_backend()) == "cpu" else "native"


def by_impl(impl: str, cpu: Callable[..., Any], native: Callable[..., Any], *args: Any) -> Any:
  """cpu(*args) or native(*args) as `impl` says; "auto" stages both out and lets the
  lowering platform choose (CPU -> cpu; CUDA, ROCm, TPU -> native)."""
  if check_impl(impl) == "cpu":
    return cpu(*args)
  if impl == "native":
    return native(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=native)

# PyTorch's default init for convs is kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ..).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def relu6(x: jax.Array) -> jax.Array:
  """min(max(x, 0), 6) with PyTorch's gradient: 1 on (0, 6), else 0. (`jnp.clip` splits
  the gradient at ties 0 and 6 and costs a compare-divide chain in XLA's backward.)"""
  zero = jnp.zeros((), x.dtype)
  return jnp.where(x > 0, jnp.where(x < 6, x, jnp.asarray(6, x.dtype)), zero)


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(..., C) x (C, D) -> (..., D): a 1x1 convolution as one matmul."""
  return jnp.einsum("...c,cd->...d", x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(res, g):
  # The barrier materialises the cotangent (and the saved input) once: otherwise XLA fuses
  # e.g. the BatchNorm backward into the transposed read that feeds the weight-gradient
  # matmul and recomputes it there with a strided access pattern (5-20x slower).
  x, kernel = res
  x, g = jax.lax.optimization_barrier((x, g))
  dx = jnp.einsum("...d,cd->...c", g, kernel)
  dk = jnp.einsum("mc,md->cd", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
  return dx, dk.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _conv_native(x: jax.Array, kernel: jax.Array, stride: int = 1, groups: int = 1
                 ) -> jax.Array:
  """XLA's convolution, NHWC x HWIO, symmetric padding k//2 (PyTorch's)."""
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                      dimension_numbers=_NHWC, feature_group_count=groups)


class Conv1x1(nn.Module):
  """Pointwise conv without bias. NHWC -> NHWC. cpu: a matmul over channels; native: conv."""
  features: int
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return by_impl(self.impl, lambda x, k: pointwise(x, k[0, 0]), _conv_native, x, kernel)


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (groups = channels) with symmetric padding k//2, no bias.

  Same as PyTorch's `Conv2d(C, C, k, stride, padding=k//2, groups=C)`. cpu: k*k shifted
  slices times per-channel weights, 10x faster than XLA's grouped conv on CPU; native: the
  grouped conv. 1x1 stride 1 is a per-channel multiply in both. Kernel: (k, k, 1, C).
  """
  kernel_size: int = 3
  stride: int = 1
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    c = x.shape[-1]
    kernel = self.param("kernel", conv_init, (k, k, 1, c)).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1 and s == 1:
      return x * kernel[0, 0, 0]
    native = lambda x, kernel: _conv_native(x, kernel, s, c)
    if k == 3 and kernels_apply(x):
      cpu = lambda x, kernel: depthwise_kernel(x, kernel, s)
    else:
      cpu = lambda x, kernel: depthwise_shifts(x, kernel, s)
    return by_impl(self.impl, cpu, native, x, kernel)


def _taps(xp: jax.Array, k: int, stride: int, ho: int, wo: int):
  """(i, j, the (N, ho, wo, C) strided view of padded `xp` that tap (i, j) multiplies)."""
  n, _, _, c = xp.shape
  for i in range(k):
    for j in range(k):
      yield i, j, jax.lax.slice(
          xp, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
          (1, stride, stride, 1))


def _depthwise_shifts(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
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
  """`_depthwise_shifts` with a hand-written backward, 2x faster than differentiating the
  slices (whose transposes XLA:CPU turns into k*k bounds-checked pads)."""
  return _depthwise_shifts(x, kernel, stride)


def _depthwise_shifts_fwd(x, kernel, stride):
  return _depthwise_shifts(x, kernel, stride), (x, kernel)


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
  # All k*k sums in one variadic reduce, over batch and columns, then over the rows: one pass
  # over x and g, 4-6x faster than k*k separate sums (XLA:CPU gave each a materialised
  # shifted copy of x; 4x64x64x144: 5.4 vs 31 ms). Accumulated in at least float32, as
  # jnp.sum does for 16-bit inputs.
  acc = jnp.promote_types(g.dtype, jnp.float32)
  xp = jnp.pad(x.astype(acc), ((0, 0), (p, p), (p, p), (0, 0)))
  products = tuple(patch * g.astype(acc)
                   for _, _, patch in _taps(xp, k, s, g.shape[1], g.shape[2]))
  rows = jax.lax.reduce(products, (jnp.zeros((), acc),) * len(products),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 2))
  dk = jnp.stack([r.sum(0) for r in rows])
  return dx, dk.reshape(k, k, 1, c).astype(kernel.dtype)


depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_kernel(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """The 3x3 depthwise conv as FFI kernels (cpu_kernels), forward and backward: each reads
  its inputs once, where XLA materialises padded and shifted copies."""
  return cpu_kernels.depthwise_kernel(x, kernel, stride)


def _depthwise_kernel_fwd(x, kernel, stride):
  return cpu_kernels.depthwise_kernel(x, kernel, stride), (x, kernel)


def _depthwise_kernel_bwd(stride, res, g):
  return cpu_kernels.depthwise_bwd_kernel(*res, g, stride)


depthwise_kernel.defvjp(_depthwise_kernel_fwd, _depthwise_kernel_bwd)


def _conv_as_matmul_shifts(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 k x k conv, padding k//2: one matmul to all k*k taps' outputs, then a sum of
  shifted slices. Differentiated, plain matmuls: the heads' backward (`Conv`)."""
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
def conv_matmul_backward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 k x k conv, padding k//2, for the heads (256 -> few channels).

  Not differentiated (inference), XLA's convolution: it writes its output once, where the
  taps' 9-slice sum was fused into the output's consumers and recomputed there (the 4x
  upsampling of the logits reads each value 8 times): 1x120x160x256 -> 40 plus that
  upsampling to 480x640, 62 vs 89 ms. Under autodiff, `_conv_as_matmul_shifts` and its
  backward of plain matmuls (XLA:CPU's convolution weight gradient costs ~4x the forward
  plus two transposes; its forward measured no faster inside the train step)."""
  return _conv_native(x, kernel)


def _conv_matmul_backward_fwd(x, kernel):
  return _conv_as_matmul_shifts(x, kernel), (x, kernel)


def _conv_matmul_backward_bwd(res, g):
  # A linear map's vjp needs only the inputs: XLA drops the unused taps forward.
  return jax.vjp(_conv_as_matmul_shifts, *res)[1](g)


conv_matmul_backward.defvjp(_conv_matmul_backward_fwd, _conv_matmul_backward_bwd)


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
    native = functools.partial(_conv_native, stride=self.stride)
    if self.stride == 1 and x.shape[-1] >= 64:  # the heads: 256 channels in
      # Inference at 1x120x160x256 plus the 4x upsampling, taps vs convolution forward:
      # 1 output 2.5 vs 6 ms, 6 outputs 7 vs 10, 19 even, 40 outputs 99-102 vs 65-76 ms.
      cpu = conv_matmul_backward if self.features > 19 else _conv_as_matmul_shifts
      y = by_impl(self.impl, cpu, native, x, kernel)
    else:  # the stem: 3 channels in, where XLA:CPU's conv is fine
      y = native(x, kernel)
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


def _pool_windows(x: jax.Array, axis: int, window: int, fill, barrier: bool
                  ) -> list[jax.Array]:
  """The `window` shifted views x[i - p + k], k = 0..window-1, padded with `fill`, each of
  shape (outer, n, inner) with the pooled axis in the middle.

  With `barrier` (the cpu form) the padded array is materialised behind an optimization
  barrier: XLA:CPU otherwise fuses the pad (a bounds check per element) into every
  consumer, and recomputes whole chains of pools inside later fusions (3x slower CRP
  backward, measured). The 3-D view keeps the pad on contiguous rows, about 5x faster than
  the same pad on a middle axis of NHWC.
  """
  p = window // 2
  n = x.shape[axis]
  # Leading dims may be symbolic (jax.export batch); the trailing ones are static.
  x3 = x.reshape(-1, n, int(np.prod(x.shape[axis + 1:])))
  xp = jnp.pad(x3, ((0, 0), (p, p), (0, 0)), constant_values=fill)
  if barrier:
    xp = jax.lax.optimization_barrier(xp)
  return [jax.lax.slice_in_dim(xp, k, k + n, axis=1) for k in range(window)]


def _max_pool_1d_with_arg(x: jax.Array, axis: int, window: int, barrier: bool
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
def _max_pool_1d(x: jax.Array, axis: int, window: int, barrier: bool) -> jax.Array:
  if barrier:
    # The cpu form: a max of the shifted views of the materialised pad, 2x faster than
    # XLA:CPU's reduce_window (1x120x160x256, 4 separable 5x5 pools: 38 vs 81 ms).
    views = _pool_windows(x, axis, window, -jnp.inf, barrier)
    out = views[0]
    for view in views[1:]:
      out = jnp.maximum(out, view)
    return out.reshape(x.shape)
  p = window // 2
  dims, pads = [1] * x.ndim, [(0, 0)] * x.ndim
  dims[axis], pads[axis] = window, (p, p)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, (1,) * x.ndim, pads)


def _max_pool_1d_vjp_fwd(x, axis, window, barrier):
  return _max_pool_1d_with_arg(x, axis, window, barrier)


def _max_pool_1d_vjp_bwd(axis, window, barrier, arg, g):
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


_max_pool_1d.defvjp(_max_pool_1d_vjp_fwd, _max_pool_1d_vjp_bwd)


@jax.custom_vjp
def _max_pool_5x5_kernel(x: jax.Array) -> jax.Array:
  return cpu_kernels.max_pool_kernel(x)


def _max_pool_5x5_kernel_fwd(x):
  y, arg_h, arg_w = cpu_kernels.max_pool_arg_kernel(x)
  return y, (arg_h, arg_w)


def _max_pool_5x5_kernel_bwd(res, g):
  return (cpu_kernels.max_pool_bwd_kernel(g, *res),)


_max_pool_5x5_kernel.defvjp(_max_pool_5x5_kernel_fwd, _max_pool_5x5_kernel_bwd)


def kernels_apply(x: jax.Array) -> bool:
  """Whether the cpu form runs `x` through the FFI kernels (cpu_kernels): float32, static
  shapes, and the kernels built and not disabled."""
  return (x.dtype == jnp.float32 and all(isinstance(d, int) for d in x.shape)
          and cpu_kernels.available())


def max_pool_5x5(x: jax.Array, impl: str = "auto") -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC, as a 5x1 then a 1x5 pool.

  Each 1-D pool saves only an int8 argmax offset for its backward, which routes the
  cotangent with five shifted, masked adds: deterministic on every backend (XLA's generic
  max-pool gradient builds index arrays and a scatter, a third of a training step's time on
  CPU, and uses atomics on GPU). Only the cpu form puts optimization barriers in it.
  """
  def pool(barrier: bool) -> Callable[[jax.Array], jax.Array]:
    return lambda x: _max_pool_1d(_max_pool_1d(x, 1, 5, barrier), 2, 5, barrier)

  # The FFI kernels compute the same two passes (same maxima, offsets and sums) in one pass
  # over memory each way, instead of XLA's padded copies. Chosen here, not inside the
  # branch: JAX caches a branch's trace by function, and the choice can change (disabled()).
  cpu = _max_pool_5x5_kernel if kernels_apply(x) and x.ndim == 4 else pool(True)
  return by_impl(impl, cpu, pool(False), x)


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
def _interp_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """(n_out, n_in) matrix of 1-D linear interpolation weights, PyTorch conventions."""
  # float64 weights, cast to the input's dtype by the caller (exact in float64 runs).
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


def _interp_along_axis1(x: jax.Array, m: np.ndarray) -> jax.Array:
  """m (n_out, n_in) applied along axis 1 of x (N, n_in, ...): a batched matmul with m
  broadcast over the batch, so no transposes; XLA materialises x once as its operand."""
  m = jnp.asarray(m, x.dtype)
  out = jax.lax.dot_general(jnp.broadcast_to(m, (x.shape[0],) + m.shape),
                            x.reshape(x.shape[0], m.shape[1], -1), (((2,), (1,)), ((0,), (0,))))
  return out.reshape((x.shape[0], m.shape[0]) + x.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _upsample_axis(x: jax.Array, axis: int, factor: int) -> jax.Array:
  """Half-pixel bilinear upsampling by an integer factor along `axis`: output s*i + r is a
  fixed two-tap blend of x[i-1], x[i] or x[i], x[i+1] (edges replicated, which is PyTorch's
  clamping). On CPU along axis 1 a batched matmul, else shifted slices; no transposes."""
  slices = functools.partial(_upsample_slices, axis=axis, factor=factor)
  if axis != 1:
    return slices(x)
  # Along H (the batch the only outer axis) on CPU, as in the backward, the interpolation
  # matrix as a matmul: the slices fused the heads' 9-slice sum into the loss's upsampling
  # and recomputed it per read (train step 0.93-0.98x, alternating calls in one process;
  # inference even).
  n = x.shape[axis]
  matmul = lambda x: _interp_along_axis1(x, _interp_matrix(n, n * factor, False))
  return by_impl("auto", matmul, slices, x)


def _upsample_slices(x: jax.Array, axis: int, factor: int) -> jax.Array:
  """`_upsample_axis` as shifted slices and two-tap blends."""
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


def _upsample_axis_fwd(x, axis, factor):
  return _upsample_axis(x, axis, factor), None


def _upsample_axis_bwd(axis, factor, _, g):
  n = g.shape[axis] // factor
  if axis == 1:
    # Along H (the batch the only outer axis): the transposed interpolation matrix as a
    # matmul, whose operand XLA materialises; the shifted reads below fused W's adjoint and
    # the max-pool backward ahead of it into themselves and recomputed them per read (train
    # step 719 vs 737 ms, alternating).
    return (_interp_along_axis1(g, _interp_matrix(n, n * factor, False).T),)
  # Otherwise elementwise: xp[j] receives a[s][j - s] for s = 0, 1, 2, with a[s] the weighted
  # sum of the phases that read xp at offset s; then xp's two clamped edge rows fold into
  # x's first and last. 5-20x faster than the interpolation matrix applied between two
  # moveaxis transposes, which dominated (4x256x256x40, 4x: 1.6-1.8 vs 30-33 ms).
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


_upsample_axis.defvjp(_upsample_axis_fwd, _upsample_axis_bwd)


def _resize_axis(x: jax.Array, axis: int, n_out: int, align_corners: bool) -> jax.Array:
  n_in = x.shape[axis]
  if n_in == n_out:
    return x
  if not align_corners and n_out % n_in == 0:
    return _upsample_axis(x, axis, n_out // n_in)
  m = jnp.asarray(_interp_matrix(n_in, n_out, align_corners), x.dtype)
  x = jnp.moveaxis(x, axis, -1)
  return jnp.moveaxis(jnp.einsum("...i,oi->...o", x, m), -1, axis)


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of (..., H, W, C) to (..., h, w, C), same as PyTorch's
  `F.interpolate(mode='bilinear', align_corners=...)` given an output size (no antialias).

  Integer half-pixel upsampling factors (the decoder's 2x on sizes divisible by 32, the
  heads' 4x) run as shifted two-tap blends; other sizes as a matrix per axis."""
  h, w = size
  x = _resize_axis(x, x.ndim - 3, h, align_corners)
  return _resize_axis(x, x.ndim - 2, w, align_corners)
