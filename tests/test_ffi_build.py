"""The FFI kernels' build cache (hydrajax.models.ops.ffi_build): private, keyed by everything
that changes the binary, a compiler error remembered (a timeout retried), a broken library
rebuilt, and every failure a fallback to the XLA forms, never a stop."""
import ctypes
import logging
import os
import pathlib
import shutil
import stat

import pytest

from hydrajax.models import ops
from hydrajax.models.ops import ffi_build

HAS_COMPILER = ffi_build.compiler() is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
  """A fresh load in an empty cache; afterwards the normal (cached) library again."""
  monkeypatch.setenv(ffi_build.ENV_CACHE, str(tmp_path / "cache"))
  ffi_build.load.cache_clear()
  yield tmp_path / "cache"
  ffi_build.load.cache_clear()


@pytest.fixture(scope="module")
def built_library():
  """Path of the library this machine's normal cache holds (built once per test run)."""
  if ffi_build.load() is not None:
    pytest.fail(f"the kernels did not build: {ffi_build.load()}")
  path = ffi_build.cache_dir() / f"cpu_kernels-{ffi_build.library_key(ffi_build.compiler())}.so"
  assert path.is_file()
  return path


def test_kernels_build_and_register_where_a_compiler_exists():
  # Not a skip: on a machine with a C++ compiler a failed build is a bug to see here.
  assert (ffi_build.load() is None) == HAS_COMPILER


def test_switch_builds_nothing_and_auto_takes_the_xla_form(monkeypatch, fresh):
  monkeypatch.setattr(ops, "_cpu_kernels", True)  # opted in (runtime.fast_cpu), switched off
  monkeypatch.setenv(ffi_build.ENV_SWITCH, "0")
  assert ops.resolve("auto", "cpu") == "xla_cpu"
  assert not fresh.exists()


def test_failed_build_warns_is_remembered_and_leaves_no_library(monkeypatch, fresh, caplog):
  monkeypatch.setenv("CXX", "false")  # a "compiler" that fails every command
  monkeypatch.setattr(ops, "_cpu_kernels", True)  # opted in (runtime.fast_cpu)
  with caplog.at_level(logging.WARNING, logger=ffi_build.__name__):
    assert ops.resolve("auto", "cpu") == "xla_cpu"
  assert "using the XLA forms" in caplog.text and "false -O3" in caplog.text
  names = sorted(p.name for p in fresh.iterdir())
  assert len(names) == 1 and names[0].endswith(".failed")  # no half-written library
  ffi_build.load.cache_clear()
  calls = []
  monkeypatch.setattr(ffi_build, "build", lambda *a: calls.append(a))
  assert "earlier build" in ffi_build.load() and calls == []  # not retried at the next start


def test_hanging_build_times_out_is_not_remembered_and_leaves_no_compiler(
    monkeypatch, fresh, tmp_path):
  """A loaded machine can make any build slow: a timeout is retried at the next start, and
  the compiler's own children are stopped with it (they would write a library later)."""
  pid_file = tmp_path / "child.pid"
  slow = tmp_path / "slow-c++"
  slow.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && exit 0\n"
                  f"sleep 30 &\necho $! > {pid_file}\nwait\n")
  slow.chmod(0o755)
  monkeypatch.setenv("CXX", str(slow))
  monkeypatch.setattr(ffi_build, "BUILD_TIMEOUT_S", 0.5)
  assert "took more than 0.5 s" in ffi_build.load()
  assert not any(p.name.endswith(".failed") for p in fresh.iterdir())
  stat_file = pathlib.Path(f"/proc/{pid_file.read_text().strip()}/stat")
  if stat_file.parent.parent.is_dir():  # gone, or a zombie its new parent has not reaped
    assert not stat_file.exists() or stat_file.read_text().rsplit(")", 1)[1].split()[0] == "Z"
  ffi_build.load.cache_clear()
  calls = []

  def compiler_error(cxx, out):
    calls.append(out)
    raise ffi_build.BuildError("compiler error")
  monkeypatch.setattr(ffi_build, "build", compiler_error)
  assert ffi_build.load() == "compiler error" and len(calls) == 1  # retried, then remembered
  ffi_build.load.cache_clear()
  assert "earlier build" in ffi_build.load() and len(calls) == 1


def test_a_compiler_killed_by_a_signal_is_not_remembered(monkeypatch, fresh, tmp_path):
  killed = tmp_path / "killed-c++"
  killed.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nkill -9 $$\n")
  killed.chmod(0o755)
  monkeypatch.setenv("CXX", str(killed))
  assert "killed by signal 9" in ffi_build.load()
  assert not any(p.name.endswith(".failed") for p in fresh.iterdir())


def test_cache_directory_is_created_private(fresh):
  ffi_build.private_dir(fresh)
  assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_a_cache_others_can_write_is_refused(monkeypatch, fresh):
  fresh.mkdir(mode=0o700)
  fresh.chmod(0o777)
  reason = ffi_build.load()
  assert reason is not None and "not private" in reason and str(fresh) in reason


@pytest.mark.parametrize("mode", [0o777, 0o775], ids=["world-writable", "group-writable"])
def test_a_cache_under_a_parent_others_can_write_is_refused(tmp_path, mode):
  """Whoever can write to a parent can rename the cache directory and put their own there."""
  parent = tmp_path / "shared"
  parent.mkdir()
  parent.chmod(mode)
  with pytest.raises(ffi_build.BuildError, match=f"its parent {parent} can be changed by "
                     f"other users .*mode d{stat.filemode(mode)[1:]}"):
    ffi_build.private_dir(parent / "hydrajax" / "cache")
  parent.chmod(0o1777)  # sticky, as /tmp: others cannot rename or remove what is not theirs
  assert ffi_build.private_dir(parent / "hydrajax" / "cache").is_dir()
  parent.chmod(0o755)
  if os.getuid() == 0:  # only root can hand a directory to another user
    os.chown(parent, 12345, 12345)
    with pytest.raises(ffi_build.BuildError, match="owner uid 12345"):
      ffi_build.private_dir(parent / "hydrajax" / "cache")


@needs_compiler
def test_the_library_loaded_is_the_file_checked(monkeypatch, tmp_path, built_library):
  """A file put at the library's path between the check and the load is not loaded: the
  file is opened once, and the open file is checked and loaded."""
  path = tmp_path / "k.so"
  shutil.copy(built_library, path)
  path.chmod(0o600)
  other = tmp_path / "other.so"
  other.write_bytes(b"not the library that was checked")
  other.chmod(0o600)
  swapped = []
  for name in ("stat", "lstat", "fstat"):
    def checked(*args, real=getattr(os, name), **kwargs):
      result = real(*args, **kwargs)
      if not swapped:
        swapped.append(os.replace(other, path))
      return result
    monkeypatch.setattr(os, name, checked)
  lib = ffi_build.load_private(path)
  monkeypatch.undo()
  assert swapped and path.read_bytes().startswith(b"not the library")
  assert lib.HjCrpDepthwise
  link = tmp_path / "link.so"
  link.symlink_to(built_library)
  with pytest.raises(ffi_build.BuildError, match="symbolic link"):
    ffi_build.load_private(link)


@needs_compiler
def test_a_library_others_can_write_or_own_is_not_loaded(tmp_path, built_library):
  planted = tmp_path / "planted.so"
  shutil.copy(built_library, planted)
  planted.chmod(0o666)
  with pytest.raises(ffi_build.BuildError, match="not a private regular file"):
    ffi_build.load_private(planted)
  planted.chmod(0o600)
  assert ffi_build.load_private(planted).HjCrpDepthwise  # the same file, private: loads
  if os.getuid() == 0:  # only root can hand a file to another user
    os.chown(planted, 12345, 12345)
    with pytest.raises(ffi_build.BuildError, match="owner uid 12345"):
      ffi_build.load_private(planted)


@needs_compiler
def test_a_corrupt_cached_library_is_rebuilt(monkeypatch, fresh, built_library):
  cxx = ffi_build.compiler()
  path = ffi_build.private_dir(fresh) / f"cpu_kernels-{ffi_build.library_key(cxx)}.so"
  path.write_bytes(b"\x7fELF truncated")
  path.chmod(0o600)
  rebuilt = []

  def build(compiler, out):  # the real library, without compiling it again
    rebuilt.append(out)
    shutil.copy(built_library, out)
    out.chmod(0o600)
  monkeypatch.setattr(ffi_build, "build", build)
  lib = ffi_build._load_or_build(cxx)
  assert rebuilt == [path] and lib.HjDepthwise


def test_key_changes_with_the_cpu_and_the_flags(monkeypatch):
  cxx = ffi_build.compiler() or "true"
  base = ffi_build.library_key(cxx)
  monkeypatch.setattr(ffi_build, "cpu_id", lambda: "aarch64\nCPU part : 0xd0c")
  arm = ffi_build.library_key(cxx)
  monkeypatch.setattr(ffi_build, "cpu_id", lambda: "aarch64\nCPU part : 0xd40")
  other_arm = ffi_build.library_key(cxx)
  monkeypatch.setattr(ffi_build, "FLAGS", ffi_build.FLAGS + ("-ffast-math",))
  flags = ffi_build.library_key(cxx)
  assert len({base, arm, other_arm, flags}) == 4


def test_cpu_id_reads_model_and_feature_lines_not_per_core_clocks():
  ident = ffi_build.cpu_id()
  assert "MHz" not in ident and "bogomips" not in ident.lower()
  if os.path.exists("/proc/cpuinfo") and os.uname().machine == "x86_64":
    assert "model name" in ident and "flags" in ident


@needs_compiler
def test_build_writes_a_loadable_private_library_and_nothing_else(tmp_path):
  out = tmp_path / "k.so"
  ffi_build.build(ffi_build.compiler(), out)
  assert [p.name for p in tmp_path.iterdir()] == ["k.so"]
  assert stat.S_IMODE(out.stat().st_mode) == 0o600
  assert ctypes.CDLL(str(out)).HjCrpDepthwise  # the handler symbol XLA is given
