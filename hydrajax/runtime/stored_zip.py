"""Zip archives whose members are stored, checked before any member is read.

torch.save checkpoints and numpy's .npz (np.savez) are zips of stored (uncompressed)
members, so a member that is compressed, or that declares more bytes than it stores or than
the file holds, is refused before a byte of it is inflated: what a reader of such an
archive allocates is then bounded by the file's size.
"""
from __future__ import annotations

import os
import zipfile

_METHODS = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
            zipfile.ZIP_LZMA: "lzma", 9: "deflate64", 93: "zstandard"}


# zipfile parses the whole central directory when it opens an archive (~0.5 KB of memory
# per member), reading as many records as the directory's size holds whatever member count
# the end record claims: so the size is what is bounded. A record takes at least 46 bytes
# (`zipfile.sizeCentralDir`, MAX_MEMBERS of them fill MAX_DIRECTORY_BYTES); a weights file
# or a checkpoint of this network has a few hundred members of 50-90 bytes each.
MAX_DIRECTORY_BYTES = 256 << 10
MAX_MEMBERS = MAX_DIRECTORY_BYTES // zipfile.sizeCentralDir


class StoredZipError(ValueError):
  """The archive is not a zip of stored members within the file; says which and why."""


def printable(text: str, limit: int = 60) -> str:
  """`text` quoted, escaped (no control or terminal escape characters) and truncated: how a
  name read from a file is shown in a message."""
  text = str(text)
  return repr(text[:limit]) + ("..." if len(text) > limit else "")


def describe(error: BaseException, limit: int = 200, with_type: bool = True) -> str:
  """An exception as one printable line: its type (`with_type`) and its message's first
  line, escaped (the message may quote bytes from a file) and truncated."""
  lines = str(error).strip().splitlines()
  if not lines:
    return type(error).__name__
  text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in lines[0][:limit])
  return f"{type(error).__name__}: {text}" if with_type else text


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
  """`zipfile.ZipFile(path)` once its end-of-directory record says that the directory
  zipfile will parse is at most MAX_DIRECTORY_BYTES and lists at most MAX_MEMBERS members
  (zipfile's errors as they are for a damaged archive)."""
  with open(path, "rb") as f:
    end = zipfile._EndRecData(f)  # the record zipfile itself reads first (zip64 aware)
  size = end[zipfile._ECD_SIZE] if end is not None else 0
  if size > MAX_DIRECTORY_BYTES:
    raise StoredZipError(f"{os.fspath(path)}: the zip directory is {size} bytes (room for "
                         f"{size // zipfile.sizeCentralDir} members), more than the "
                         f"{MAX_DIRECTORY_BYTES} a checkpoint or weights file needs")
  if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_MEMBERS:
    raise StoredZipError(f"{os.fspath(path)}: the zip directory lists "
                         f"{end[zipfile._ECD_ENTRIES_TOTAL]} members, more than the "
                         f"{MAX_MEMBERS} a checkpoint or weights file has")
  return zipfile.ZipFile(path)


def stored_members(zf: zipfile.ZipFile, path: str | os.PathLike) -> dict[str, zipfile.ZipInfo]:
  """{name: info} of every member of `zf` (opened from `path`), after checking that each
  is stored, unencrypted, once, of the size it declares, inside the file, and that the
  members' sizes sum to no more than the file's."""
  path = os.fspath(path)
  file_size = os.path.getsize(path)
  members: dict[str, zipfile.ZipInfo] = {}
  total = 0
  for info in zf.infolist():
    name = printable(info.filename)
    if info.filename in members:
      raise StoredZipError(f"{path}: member {name} appears twice in the zip directory")
    if info.flag_bits & 0x1:
      raise StoredZipError(f"{path}: member {name} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
      method = _METHODS.get(info.compress_type, f"method {info.compress_type}")
      raise StoredZipError(f"{path}: member {name} is compressed ({method}); only stored "
                           f"(uncompressed) members are accepted, as torch.save and "
                           f"np.savez write them")
    if info.file_size != info.compress_size:
      raise StoredZipError(f"{path}: member {name} declares {info.file_size} bytes but "
                           f"stores {info.compress_size}")
    if info.header_offset + info.compress_size > file_size:
      raise StoredZipError(f"{path}: member {name} ({info.compress_size} bytes at offset "
                           f"{info.header_offset}) reaches past the end of the "
                           f"{file_size}-byte file")
    total += info.file_size
    if total > file_size:
      raise StoredZipError(f"{path}: the members declare more bytes ({total} by {name}) "
                           f"than the {file_size}-byte file holds")
    members[info.filename] = info
  return members
