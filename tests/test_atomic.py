"""Atomic writes (hydrajax/runtime/atomic.py): temp files of killed writers are cleared, the
rename is made durable, and a replaced file keeps its mode and its symbolic link."""
import fcntl
import os
import re
import signal
import stat
import subprocess
import sys

import pytest

from hydrajax.runtime import atomic

# A writer killed mid-write: atomic.py loaded on its own (no jax import: a quick process).
_KILLED_WRITER = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.atomic_path(sys.argv[2]) as tmp:
  with open(tmp, "wb") as f:
    f.write(b"half a point cloud")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid():
  """The PID of a process that has ended (and been reaped)."""
  p = subprocess.Popen([sys.executable, "-c", ""])
  p.wait()
  return p.pid


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
  target = tmp_path / "scene.ply"
  p = subprocess.run([sys.executable, "-c", _KILLED_WRITER, atomic.__file__, str(target)])
  assert p.returncode == -signal.SIGKILL
  (left,) = os.listdir(tmp_path)
  assert re.fullmatch(r"\.tmp-\d+-[0-9a-f]{8}\.ply", left) and not target.exists()
  atomic.write_bytes_atomic(tmp_path / "other.ply", b"next run")
  assert sorted(os.listdir(tmp_path)) == ["other.ply"]


def test_temp_files_of_live_writers_are_kept(tmp_path):
  """A temp file whose process runs here, or whose lock is held (a writer on another
  machine sharing the directory), is not touched; only the dead, unlocked one goes."""
  dead = _dead_pid()
  live = tmp_path / f".tmp-{os.getppid()}-0123abcd.png"
  locked = tmp_path / f".tmp-{dead}-89abcdef.png"
  stale = tmp_path / f".tmp-{dead}-00000000.png"
  for path in (live, locked, stale):
    path.write_bytes(b"x")
  with open(locked, "rb") as held:
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)
    atomic.write_bytes_atomic(tmp_path / "new.png", b"y")
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, locked.name,
                                                               "new.png"])


def test_the_directory_is_synced_after_the_rename(tmp_path, monkeypatch):
  """A power loss must not undo the rename: the directory is fsynced once the new file is
  in place."""
  target = tmp_path / "w.json"
  synced = []
  fsync = os.fsync

  def spy(fd):
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    synced.append((is_dir, target.exists() and target.read_bytes() == b"new"))
    fsync(fd)
  monkeypatch.setattr(os, "fsync", spy)
  atomic.write_bytes_atomic(target, b"new")
  assert synced[-1] == (True, True)  # the directory, after the rename
  assert (False, False) in synced  # the file itself, before it


def test_a_replaced_file_keeps_its_mode(tmp_path):
  target = tmp_path / "labels.png"
  target.write_bytes(b"old")
  os.chmod(target, 0o640)
  atomic.write_bytes_atomic(target, b"new")
  assert target.read_bytes() == b"new" and stat.S_IMODE(os.stat(target).st_mode) == 0o640
  fresh = tmp_path / "fresh.png"
  umask = os.umask(0o027)
  try:
    atomic.write_bytes_atomic(fresh, b"new")
  finally:
    os.umask(umask)
  assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o640  # a new file: 0o666 less the umask


def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
  (tmp_path / "store").mkdir()
  real = tmp_path / "store" / "weights.npz"
  real.write_bytes(b"old")
  link = tmp_path / "latest.npz"
  link.symlink_to(os.path.join("store", "weights.npz"))
  atomic.write_bytes_atomic(link, b"new")
  assert link.is_symlink() and os.readlink(link) == os.path.join("store", "weights.npz")
  assert real.read_bytes() == b"new"
  assert sorted(os.listdir(tmp_path / "store")) == ["weights.npz"]


def test_a_symlink_loop_is_refused_and_nothing_written(tmp_path):
  (tmp_path / "a").symlink_to("b")
  (tmp_path / "b").symlink_to("a")
  with pytest.raises(OSError, match="loop of symbolic links"):
    atomic.write_bytes_atomic(tmp_path / "a", b"new")
  assert sorted(os.listdir(tmp_path)) == ["a", "b"]
