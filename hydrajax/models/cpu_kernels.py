"""XLA:CPU FFI kernels from `cpu_kernels.cc`, built on first use with the machine's C++
compiler and cached; where that cannot happen every caller falls back to its pure-XLA twin.

The library is compiled for this CPU (`-march=native`) against the installed jaxlib's FFI
headers into `$HYDRAJAX_CACHE` (default `~/.cache/hydrajax`), keyed by the source, compiler,
jaxlib and CPU, and written atomically so concurrent processes can share it. Set
`HYDRAJAX_CPU_KERNELS=0` to never build or use it; `disabled()` turns it off while tracing
(jax.export: a serialized program must not name a target that only this process registered).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name("cpu_kernels.cc")
ENV_SWITCH = "HYDRAJAX_CPU_KERNELS"
ENV_CACHE = "HYDRAJAX_CACHE"
CRP_TARGET = "hydrajax_crp_depthwise"
# target name -> the handler symbol in cpu_kernels.cc
TARGETS = {CRP_TARGET: "HjCrpDepthwise", "hydrajax_max_pool": "HjMaxPool",
           "hydrajax_max_pool_arg": "HjMaxPoolArg", "hydrajax_max_pool_bwd": "HjMaxPoolBwd",
           "hydrajax_depthwise": "HjDepthwise", "hydrajax_depthwise_bwd": "HjDepthwiseBwd"}

_state = threading.local()
_registered = False
_log = logging.getLogger(__name__)


@contextlib.contextmanager
def disabled():
  """Trace without the FFI kernels in this thread (their pure-XLA twins instead)."""
  old = getattr(_state, "off", False)
  _state.off = True
  try:
    yield
  finally:
    _state.off = old


def _cpu_id() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return ""


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which(
      "clang++")


def cache_dir() -> pathlib.Path:
  root = os.environ.get(ENV_CACHE) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hydrajax")
  return pathlib.Path(root)


def build(compiler: str, out: pathlib.Path) -> None:
  """Compiles cpu_kernels.cc into the shared library `out` (atomically: temp file, rename)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
         f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


@functools.cache
def _load() -> bool:
  if os.environ.get(ENV_SWITCH, "1") == "0":
    return False
  compiler = _compiler()
  if compiler is None:
    _log.warning("hydrajax: no C++ compiler (set CXX): the CPU kernels fall back to XLA")
    return False
  try:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version,
                                    importlib.metadata.version("jaxlib"), _cpu_id()]
                                   ).encode()).hexdigest()[:16]
    path = cache_dir() / f"cpu_kernels-{key}.so"
    if not path.exists():
      _log.info("hydrajax: building %s", path)
      build(compiler, path)
    lib = ctypes.cdll.LoadLibrary(str(path))
    global _registered
    if not _registered:  # XLA keeps the first handler a name gets, for the process
      for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      _registered = True
  except Exception as e:  # a build or load failure must never stop the model
    _log.warning("hydrajax: the CPU kernels are unavailable, falling back to XLA: %s", e)
    return False
  return True


def available() -> bool:
  """Whether the kernels are built and registered, and not `disabled()` in this thread."""
  return not getattr(_state, "off", False) and _load()


def crp_depthwise_kernel(x: jax.Array, scales: jax.Array) -> jax.Array:
  """The FFI call: x (N, H, W, C) float32, scales (4, C) -> crp1's output (N, H, W, C)."""
  call = jax.ffi.ffi_call(CRP_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype),
                          vmap_method="sequential")
  return call(x, scales.astype(x.dtype))


def max_pool_kernel(x: jax.Array) -> jax.Array:
  """5x5 stride-1 max-pool, -inf padding 2, of x (N, H, W, C) float32, in one pass."""
  return jax.ffi.ffi_call("hydrajax_max_pool", jax.ShapeDtypeStruct(x.shape, x.dtype),
                          vmap_method="sequential")(x)


def max_pool_arg_kernel(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The pool and the int8 window offsets (0..4) its H pass and its W pass took."""
  arg = jax.ShapeDtypeStruct(x.shape, jnp.int8)
  return jax.ffi.ffi_call("hydrajax_max_pool_arg",
                          (jax.ShapeDtypeStruct(x.shape, x.dtype), arg, arg),
                          vmap_method="sequential")(x)


def max_pool_bwd_kernel(g: jax.Array, arg_h: jax.Array, arg_w: jax.Array) -> jax.Array:
  """The pool's input cotangent from its output cotangent g and the two offset maps."""
  return jax.ffi.ffi_call("hydrajax_max_pool_bwd", jax.ShapeDtypeStruct(g.shape, g.dtype),
                          vmap_method="sequential")(g, arg_h, arg_w)


def _depthwise_out(x: jax.Array, stride: int) -> jax.ShapeDtypeStruct:
  n, h, w, c = x.shape
  return jax.ShapeDtypeStruct((n, (h - 1) // stride + 1, (w - 1) // stride + 1, c), x.dtype)


def depthwise_kernel(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise 3x3 conv, padding 1: x (N, H, W, C) float32, kernel (3, 3, 1, C)."""
  c = x.shape[-1]
  return jax.ffi.ffi_call("hydrajax_depthwise", _depthwise_out(x, stride),
                          vmap_method="sequential")(
      x, kernel.reshape(3, 3, c), stride=np.int64(stride))


def depthwise_bwd_kernel(x: jax.Array, kernel: jax.Array, g: jax.Array, stride: int
                         ) -> tuple[jax.Array, jax.Array]:
  """(dx, dkernel) of `depthwise_kernel` for the output cotangent g; dkernel (3, 3, 1, C)."""
  c = x.shape[-1]
  dx, dk = jax.ffi.ffi_call(
      "hydrajax_depthwise_bwd", (jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 jax.ShapeDtypeStruct((3, 3, c), x.dtype)),
      vmap_method="sequential")(x, kernel.reshape(3, 3, c), g, stride=np.int64(stride))
  return dx, dk.reshape(3, 3, 1, c)
