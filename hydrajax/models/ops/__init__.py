"""The layer forms: one module per implementation of the ops the network needs, all with the
same signatures and PyTorch's numbers (to float rounding):

    conv1x1(x, kernel)                       (N, H, W, C) x (1, 1, C, D)
    depthwise_conv(x, kernel, *, stride)     k x k, padding k//2, kernel (k, k, 1, C)
    conv(x, kernel, *, stride)               dense k x k, padding k//2, kernel (k, k, C, D)
    max_pool_5x5(x)                          MaxPool2d(5, stride=1, padding=2)
    crp_depthwise(x, scales)                 crp1's four pool-and-scale stages, scales (4, C)
    resize_bilinear(x, *, size, align_corners)

Forms (`impl`, a static field of every module, so jit sees it):
- "native": XLA's own ops; GPU and TPU.
- "xla_cpu": rewrites for XLA:CPU in pure XLA.
- "ffi": xla_cpu with C++ FFI kernels where they apply; built on first use (ffi_build).
- "auto": resolved by `resolve` where the platform is known (hydrajax.apply, training,
  evaluation): "ffi" on CPU where the kernels build, else "xla_cpu"; "native" elsewhere.
  Left unresolved in a traced program (a module applied directly, a multi-platform export),
  each op lowers per platform: xla_cpu on CPU, native elsewhere, never the process-local FFI.
"""
from __future__ import annotations

import functools
import types

import jax

from hydrajax.models.ops import ffi, ffi_build, native, xla_cpu

IMPLS = ("auto", "native", "xla_cpu", "ffi")
OPS = ("conv1x1", "depthwise_conv", "conv", "max_pool_5x5", "crp_depthwise", "resize_bilinear")
FORMS = {"native": native, "xla_cpu": xla_cpu, "ffi": ffi}


def check(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  return impl


_cpu_kernels = False  # "auto" may use the C++ kernels: opted in by use_cpu_kernels


def use_cpu_kernels(on: bool = True) -> None:
  """Let "auto" resolve to the C++ kernels ("ffi") on CPU. Opt-in, since they are compiled
  with the machine's C++ compiler into a cache folder on first use (ffi_build); the
  command-line tools and `hydrajax.runtime.fast_cpu()` turn it on."""
  global _cpu_kernels
  _cpu_kernels = on


def resolve(impl: str, platform: str | None = None) -> str:
  """"auto" as the form for `platform` (default: JAX's default backend); others unchanged.
  On CPU: "ffi" if opted in (use_cpu_kernels) and the kernels build (once per machine),
  else "xla_cpu"."""
  if check(impl) != "auto":
    return impl
  if (platform or jax.default_backend()) != "cpu":
    return "native"
  return "ffi" if _cpu_kernels and ffi_build.available() else "xla_cpu"


def _per_platform(name: str):
  cpu, default = getattr(xla_cpu, name), getattr(native, name)

  def op(*arrays, **static):
    return jax.lax.platform_dependent(*arrays, cpu=functools.partial(cpu, **static),
                                      default=functools.partial(default, **static))
  op.__name__ = name
  return op


# "auto" left to the lowering platform.
PER_PLATFORM = types.SimpleNamespace(**{name: _per_platform(name) for name in OPS})


def get(impl: str):
  """The module (or namespace) of ops for `impl`."""
  return PER_PLATFORM if check(impl) == "auto" else FORMS[impl]
