"""Builds, caches and loads the C++ FFI kernels of the "ffi" form (`cpu_kernels.cc`).

The library is compiled on first use with the machine's C++ compiler for this CPU
(`-march=native`) against the installed jaxlib's FFI headers, into a private cache directory
(`$HYDRAJAX_CACHE`, default `~/.cache/hydrajax`, created 0700). Its file name is a key over
the source, the compiler and its version, the flags, jaxlib and the CPU (model and feature
lines of /proc/cpuinfo on every architecture), so a shared home never hands one CPU a library
built for another. The cache directory must be this user's and closed to group and others;
every directory above it this user's or root's, and closed to them unless sticky (as /tmp
is): no other user can put a library there or rename the directory. A library is opened
once, without following a link, and that open file is checked (a regular file of this
user's, not writable by group or others) and loaded; one that fails to load is rebuilt
once. A compiler error is
remembered for its key (`<key>.failed`, delete it to retry), so it is not retried at every
start; a build that timed out or whose compiler was killed is retried at the next start.
`HYDRAJAX_CPU_KERNELS=0` never builds or loads anything.
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
import platform
import shutil
import signal
import stat
import subprocess
import tempfile

import jax

SOURCE = pathlib.Path(__file__).with_name("cpu_kernels.cc")
ENV_SWITCH = "HYDRAJAX_CPU_KERNELS"
ENV_CACHE = "HYDRAJAX_CACHE"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300
# target name -> the handler symbol in cpu_kernels.cc
TARGETS = {"hydrajax_crp_depthwise": "HjCrpDepthwise", "hydrajax_max_pool": "HjMaxPool",
           "hydrajax_max_pool_arg": "HjMaxPoolArg", "hydrajax_max_pool_bwd": "HjMaxPoolBwd",
           "hydrajax_depthwise": "HjDepthwise", "hydrajax_depthwise_bwd": "HjDepthwiseBwd"}
# /proc/cpuinfo keys that name the CPU and its features (x86, ARM, POWER, s390, RISC-V);
# per-core and per-moment lines (MHz, bogomips, core ids) are left out.
_CPU_KEYS = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags",
             "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part",
             "CPU revision", "cpu", "revision", "platform", "machine", "features", "isa",
             "uarch", "mmu", "vendor")

_log = logging.getLogger(__name__)
_registered = False


class BuildError(RuntimeError):
  """The kernels could not be built or loaded (the reason is in the message). `lasting`:
  the same build would fail again (a compiler error), so it is remembered."""

  def __init__(self, message: str, lasting: bool = True):
    super().__init__(message)
    self.lasting = lasting


def cpu_id() -> str:
  """The CPU's identity for the cache key: the machine type and the distinct model and
  feature lines of /proc/cpuinfo (empty where there is none)."""
  lines = set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key = line.split(":", 1)[0].strip()
        if key in _CPU_KEYS:
          lines.add(" ".join(line.split()))
  except OSError:
    lines.add(platform.processor())
  return platform.machine() + "\n" + "\n".join(sorted(lines))


def compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which(
      "clang++")


def cache_dir() -> pathlib.Path:
  root = os.environ.get(ENV_CACHE) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hydrajax")
  return pathlib.Path(root)


def private_dir(path: pathlib.Path) -> pathlib.Path:
  """`path`, created 0700 if missing; refused if it is not a directory owned by this user
  and closed to group and others (another user could plant a library there), or if another
  user can change a directory above it (and so rename `path` and put their own there)."""
  path.mkdir(mode=0o700, parents=True, exist_ok=True)
  st = os.stat(path, follow_symlinks=False)
  if not stat.S_ISDIR(st.st_mode):
    raise BuildError(f"{path} is not a directory")
  if st.st_uid != os.getuid() or st.st_mode & 0o022:
    raise BuildError(f"{path} is not private (owner uid {st.st_uid}, mode "
                     f"{stat.filemode(st.st_mode)}): the kernels are loaded only from a "
                     f"directory owned by you and not writable by others; set {ENV_CACHE}")
  # The parents as written and with links resolved: a link's directory is a parent too.
  parents = [*pathlib.Path(os.path.abspath(path)).parents, *path.resolve().parents]
  for parent in dict.fromkeys(parents):
    st = os.stat(parent)
    # Sticky (as /tmp): others may add entries but not rename or remove this user's.
    shared = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
    if st.st_uid not in (0, os.getuid()) or shared:
      raise BuildError(f"{path} is not private: its parent {parent} can be changed by other "
                       f"users (owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); "
                       f"set {ENV_CACHE} to a directory only you and root can change")
  return path


def library_key(cxx: str) -> str:
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                           timeout=60).stdout
  parts = [SOURCE.read_text(), cxx, version, " ".join(FLAGS),
           importlib.metadata.version("jaxlib"), cpu_id()]
  return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build(cxx: str, out: pathlib.Path) -> None:
  """Compiles cpu_kernels.cc into the shared library `out` (atomically: temp file, rename).
  A timeout or a compiler killed by a signal raises a BuildError that is not `lasting`; on a
  timeout the compiler and every process it started are stopped first."""
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
  try:
    # Its own process group, so that a timeout stops the compiler's children too (they
    # would go on writing `tmp` after it is removed).
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
      try:
        _, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
      except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)
        # Until every process of the group has let go of the pipes (bounded, in case one
        # has left the group).
        with contextlib.suppress(subprocess.TimeoutExpired):
          proc.communicate(timeout=10)
        raise BuildError(f"{' '.join(cmd)} took more than {BUILD_TIMEOUT_S} s",
                         lasting=False) from e
    if proc.returncode < 0:
      raise BuildError(f"{' '.join(cmd)} was killed by signal {-proc.returncode}",
                       lasting=False)
    if proc.returncode:
      raise BuildError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    os.chmod(tmp, 0o600)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


# The descriptors of the libraries loaded as /proc/self/fd/N stay open for the process: the
# loader hands back the library it already holds under a name, so no N may name another file.
_loaded_fds: list[int] = []


def load_private(path: pathlib.Path) -> ctypes.CDLL:
  """Loads the library at `path` if it is a regular file (not a link) owned by this user and
  not writable by group or others. The file is opened once and the open file is checked
  and loaded (as /proc/self/fd/N), so a file put at `path` after the check is not the one
  loaded. Without /proc (macOS) it is loaded by path: callers keep it in a directory only
  this user can change (private_dir)."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
  except OSError as e:
    if os.path.islink(path):
      raise BuildError(f"{path} is a symbolic link: not loaded") from e
    raise
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
      raise BuildError(f"{path} is not a private regular file of this user (owner uid "
                       f"{st.st_uid}, mode {stat.filemode(st.st_mode)}): not loaded")
    if not os.path.isdir("/proc/self/fd"):
      return ctypes.CDLL(str(path))
    lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
    _loaded_fds.append(fd)
    return lib
  finally:
    if fd not in _loaded_fds:
      os.close(fd)


def _load_or_build(cxx: str) -> ctypes.CDLL:
  directory = private_dir(cache_dir())
  key = library_key(cxx)
  path, failed = directory / f"cpu_kernels-{key}.so", directory / f"cpu_kernels-{key}.failed"
  if failed.exists():
    raise BuildError(f"an earlier build for this compiler and CPU failed ({failed}; delete it "
                     f"to retry): {failed.read_text()[:500]}")
  for attempt in range(2):
    if not path.exists():
      _log.info("hydrajax: building the CPU kernels into %s", path)
      try:
        build(cxx, path)
      except BuildError as e:
        if e.lasting:
          failed.write_text(str(e))
        raise
    try:
      return load_private(path)
    except OSError as e:  # corrupt or truncated: rebuild once
      if attempt:
        failed.write_text(f"the rebuilt library does not load: {e}")
        raise BuildError(f"{path} does not load: {e}") from e
      _log.warning("hydrajax: %s does not load (%s); rebuilding it", path, e)
      path.unlink()
  raise AssertionError("unreachable")


@functools.cache
def load() -> str | None:
  """Builds (once per key) and registers the kernels; None when done, else the reason they
  are unavailable. Never raises: a failure leaves the XLA forms."""
  if os.environ.get(ENV_SWITCH, "1") == "0":
    return f"{ENV_SWITCH}=0"
  cxx = compiler()
  if cxx is None:
    return "no C++ compiler (set CXX)"
  try:
    lib = _load_or_build(cxx)
    global _registered
    if not _registered:  # XLA keeps the first handler a name gets, for the process
      for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      _registered = True
  except Exception as e:  # a build or load failure must never stop the model
    return str(e)
  return None


def available() -> bool:
  """Whether the kernels are built and registered in this process (building them once)."""
  reason = load()
  if reason is not None and not reason.startswith(ENV_SWITCH):
    _warn_once(reason)
  return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
  _log.warning("hydrajax: the CPU kernels are unavailable, using the XLA forms: %s", reason)
