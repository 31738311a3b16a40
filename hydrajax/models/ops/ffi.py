"""The "ffi" form: "xla_cpu" with C++ kernels (XLA FFI custom calls, `cpu_kernels.cc`) for
the ops where XLA:CPU materialises padded and shifted copies: the 3x3 depthwise conv
(forward and backward), the CRP max-pool (forward, forward with argmax, backward) and crp1
in inference (each band of rows streamed through all four stages). Each kernel computes the
same sums as its xla_cpu twin (the pools bit for bit). The kernels apply to float32 inputs of
static shape; other inputs take the xla_cpu twin. The library is built on the first trace
that needs it (`ffi_build`); its targets are registered in this process only, so programs
traced with this form are not exportable (exports use "native" / "xla_cpu").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hydrajax.models.ops import common, ffi_build, xla_cpu

conv1x1 = xla_cpu.conv1x1
conv = xla_cpu.conv
resize_bilinear = xla_cpu.resize_bilinear


def _require() -> None:
  reason = ffi_build.load()
  if reason is not None:
    raise ffi_build.BuildError(f'impl="ffi" needs the CPU kernels, which are unavailable: '
                               f'{reason} (use impl="auto" to fall back to the XLA forms)')


def applies(x: jax.Array) -> bool:
  """Whether the kernels take `x`: float32 NHWC of static shape."""
  return x.dtype == jnp.float32 and x.ndim == 4 and all(isinstance(d, int) for d in x.shape)


def _call(target: str, out, *args, **attrs):
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


def _depthwise_out(x: jax.Array, stride: int) -> jax.ShapeDtypeStruct:
  n, h, w, c = x.shape
  return jax.ShapeDtypeStruct((n, (h - 1) // stride + 1, (w - 1) // stride + 1, c), x.dtype)


@jax.custom_vjp
def _max_pool(x: jax.Array) -> jax.Array:
  return _call("hydrajax_max_pool", jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def _max_pool_fwd(x):
  # The pool and the int8 window offsets (0..4) its H pass and its W pass took.
  arg = jax.ShapeDtypeStruct(x.shape, jnp.int8)
  y, arg_h, arg_w = _call("hydrajax_max_pool_arg",
                          (jax.ShapeDtypeStruct(x.shape, x.dtype), arg, arg), x)
  return y, (arg_h, arg_w)


def _max_pool_bwd(res, g):
  return (_call("hydrajax_max_pool_bwd", jax.ShapeDtypeStruct(g.shape, g.dtype), g, *res),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_5x5(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(5, stride=1, padding=2)` on NHWC, one pass over memory each way."""
  if not applies(x):
    return xla_cpu.max_pool_5x5(x)
  _require()
  return _max_pool(x)


def _depthwise_bwd_call(x, kernel, g, stride):
  c = x.shape[-1]
  dx, dk = _call("hydrajax_depthwise_bwd", (jax.ShapeDtypeStruct(x.shape, x.dtype),
                                            jax.ShapeDtypeStruct((3, 3, c), x.dtype)),
                 x, kernel.reshape(3, 3, c), g, stride=np.int64(stride))
  return dx, dk.reshape(3, 3, 1, c)


def _depthwise_call(x, kernel, stride):
  return _call("hydrajax_depthwise", _depthwise_out(x, stride), x,
               kernel.reshape(3, 3, x.shape[-1]), stride=np.int64(stride))


_depthwise = jax.custom_vjp(_depthwise_call, nondiff_argnums=(2,))
_depthwise.defvjp(lambda x, kernel, stride: (_depthwise_call(x, kernel, stride), (x, kernel)),
                  lambda stride, res, g: _depthwise_bwd_call(*res, g, stride))


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
  """3x3 depthwise conv, padding 1, as kernels that read their inputs once (dk summed per
  fixed block of rows in double); other sizes as xla_cpu."""
  if kernel.shape[:2] != (3, 3) or not applies(x):
    return xla_cpu.depthwise_conv(x, kernel, stride=stride)
  _require()
  return _depthwise(x, kernel, stride)


def _crp_chain(x: jax.Array, scales: jax.Array) -> jax.Array:
  return common.crp_chain(x, scales, max_pool_5x5)


@jax.custom_vjp
def _crp(x: jax.Array, scales: jax.Array) -> jax.Array:
  return _call("hydrajax_crp_depthwise", jax.ShapeDtypeStruct(x.shape, x.dtype), x,
               scales.astype(x.dtype))


_crp.defvjp(lambda x, scales: jax.vjp(_crp_chain, x, scales), lambda vjp, g: vjp(g))


def crp_depthwise(x: jax.Array, scales: jax.Array) -> jax.Array:
  """crp1 (x (N, H, W, C), scales (4, C)) as one kernel in inference; under autodiff the
  chain of pool kernels and its vjp."""
  if not applies(x):
    return xla_cpu.crp_depthwise(x, scales)
  _require()
  return _crp(x, scales)
