"""Atomic file writes: readers (and a run killed mid-write) see the old file or the complete
new one, never half of it. The one place hydrajax writes weights, labels, PNGs, JSON, videos
and exported models."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import BinaryIO, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
  """A fresh temporary name beside `path` (same directory, so the rename is atomic), ending
  in `suffix` (default: `path`'s extension, for writers that pick a format by it). Write it
  inside the block: on success it is synced and renamed over `path`; on an exception it is
  removed and `path` is untouched."""
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1] if suffix is None else suffix
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
  try:
    yield tmp
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Call `write(file)` on a binary file that replaces `path` atomically when it returns."""
  with atomic_path(path) as tmp:
    with open(tmp, "xb") as f:
      write(f)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  write_atomic(path, lambda f: f.write(data))
