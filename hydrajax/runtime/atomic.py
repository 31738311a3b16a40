"""Atomic file writes: readers (and a run killed mid-write) see the old file or the complete
new one, never half of it. The one place hydrajax writes weights, labels, PNGs, JSON, videos
and exported models.

The new content goes to `.tmp-PID-XXXXXXXX<ext>` beside the target, is fsynced, renamed over
the target, and the directory is fsynced so the rename survives a power loss. A replaced
file keeps its permission bits; a target that is a symbolic link keeps the link and its
target file is replaced. A writer holds an advisory lock (flock) on its temp file while it
writes, so the temp files of killed runs (SIGKILL, a power loss) can be told from live ones:
the first write into a directory by a process removes those whose process is gone and whose
lock is free (a live writer on another machine sharing the directory still holds its lock).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import uuid
from typing import BinaryIO, Callable, Iterator

try:
  import fcntl
except ImportError:  # not POSIX: no locks, and no sweeping of stale temp files
  fcntl = None

TEMP_NAME = re.compile(r"\.tmp-(\d{1,10})-[0-9a-f]{8}")  # the start of a temp file's name
_swept: set[str] = set()  # directories this process has cleared of stale temp files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
  """A fresh temporary name beside `path` (same directory, so the rename is atomic), ending
  in `suffix` (default: `path`'s extension, for writers that pick a format by it). Write it
  inside the block (the file exists, empty: open it for writing, not exclusive creation): on
  success it is synced, given the mode of the file it replaces and renamed over `path` (over
  the file a symbolic link `path` points to); on an exception it is removed and `path` is
  untouched."""
  path = _through_links(os.fspath(path))
  suffix = os.path.splitext(path)[1] if suffix is None else suffix
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  remove_stale_temps(directory)
  tmp = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
  # Created here (exclusively: never through a planted link) and locked until the end.
  lock = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
  try:
    _try_lock(lock)
    yield tmp
    # Synced through a fresh descriptor: a writer may have replaced the file at `tmp`.
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    _keep_mode(path, tmp)
    os.replace(tmp, path)
    _fsync_directory(directory)
  finally:
    os.close(lock)
    if os.path.lexists(tmp):
      os.unlink(tmp)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Call `write(file)` on a binary file that replaces `path` atomically when it returns."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      write(f)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  write_atomic(path, lambda f: f.write(data))


def remove_stale_temps(directory: str) -> list[str]:
  """Remove the temp files of dead writers from `directory` (once per directory and
  process); returns the paths removed. A temp file is left alone while its process (by the
  PID in its name) runs here, or while anyone holds its lock."""
  directory = os.path.abspath(directory)
  if directory in _swept or fcntl is None:
    return []
  _swept.add(directory)
  removed = []
  try:
    entries = list(os.scandir(directory))
  except OSError:
    return []
  for entry in entries:
    match = TEMP_NAME.match(entry.name)
    try:
      if not match or not entry.is_file(follow_symlinks=False) or _alive(int(match[1])):
        continue
      fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
      os.unlink(entry.path)
      removed.append(entry.path)
    except OSError:
      pass
    finally:
      os.close(fd)
  return removed


def _through_links(path: str) -> str:
  """`path`, or the file a symbolic link `path` points to (which need not exist yet)."""
  if not os.path.islink(path):
    return path
  target = os.path.realpath(path)
  if os.path.islink(target):
    raise OSError(errno.ELOOP, f"{path}: a loop of symbolic links")
  return target


def _alive(pid: int) -> bool:
  """Whether process `pid` exists here (this process counts as alive)."""
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  except (OverflowError, OSError):  # no such PID can exist
    return False
  return True


def _try_lock(fd: int) -> None:
  """Lock a temp file as written by a live process (no-op where locks are unsupported)."""
  if fcntl is not None:
    with contextlib.suppress(OSError):
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _keep_mode(path: str, tmp: str) -> None:
  """Give `tmp` the permission bits of the file it replaces (a new file keeps the umask's)."""
  try:
    mode = stat.S_IMODE(os.stat(path).st_mode)
  except FileNotFoundError:
    return
  os.chmod(tmp, mode)


def _fsync_directory(directory: str) -> None:
  """Make a rename in `directory` durable (where the file system can sync a directory)."""
  try:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # e.g. EINVAL: this file system does not sync directories
    pass
  finally:
    os.close(fd)
