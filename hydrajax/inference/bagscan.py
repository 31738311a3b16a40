"""Bags cut short, read record by record: what a recorder that was killed leaves behind.

A killed `rosbag record` leaves `X.bag.active`: a ROS 1 bag with no index records (its header's
index_pos is 0) whose last chunk may be unterminated (sizes still 0) or cut mid-record. A killed
`ros2 bag record` leaves an MCAP file without summary and footer, or a sqlite3 directory
without metadata.yaml. `rosbags` opens none of these as given (it needs the ROS 1 index, the
MCAP footer, the directory's metadata.yaml): a directory's .db3 files are handed to it one by
one, and the two other kinds `open_scanned` reads from the start in file order, up to the
first incomplete record, as it reads a .db3 file that is itself cut short or damaged (with
Python's sqlite3, row by row up to the first one sqlite cannot read), with a reader that
offers what bag.py uses of `rosbags.highlevel.AnyReader`: `connections`, `start_time`,
`typestore`, `is2`, `messages()`, `deserialize()`, `close()`, plus `cut`, why the reading
stops early (None: the file ended cleanly), and `skipped`, {topic: encoding} of the channels
left out.

The same scan reads a whole MCAP file that also holds channels of other encodings (JSON,
protobuf, ... as Foxglove's recorders write them beside ROS topics): rosbags refuses such a
file, the scan leaves those channels out and reads its ROS ones.

MCAP records are read by `mcap`'s non-seeking StreamReader (a chunk cut short is lost whole).
ROS 1 has no such reader: `_Ros1Scan` walks the records of the bag format 2.0 (a u32-sized
header of u32-sized `name=value` fields, then u32-sized data), with every size checked against
the bytes left so that a hostile size cannot make it read or allocate past the file. Each file
is scanned once to find its connections and message counts, then again per `messages()` call.
"""
from __future__ import annotations

import bz2
import io
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterator

MAX_CHUNK = 1 << 30  # the largest decompressed ROS 1 chunk read (rosbag writes ~768 KiB ones)
ROS1_MAGIC = b"#ROSBAG V2.0\n"
MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\0"
_OP_MSG, _OP_CHUNK, _OP_CONNECTION = 2, 5, 7
ROS_SCHEMAS = ("ros1msg", "ros2msg", "ros2idl", "omgidl")  # MCAP schema encodings read
ROS_MESSAGES = ("cdr", "ros1")  # and message encodings


class Cut(Exception):
  """The file ends inside a record (or a record's sizes point past it), or it has no index;
  the message says which, as the error line shows it."""


def open_scanned(path: str) -> Any:
  """A reader of the bag at `path` that rosbags could not open (a ROS 1 bag, an MCAP file, a
  rosbag2 .db3 file, or a ROS 2 directory of them), or None when it is none of these kinds;
  ValueError when it has no complete message."""
  p = Path(path)
  if p.is_dir():
    return _bag_dir(p)
  with open(p, "rb") as f:
    magic = f.read(len(SQLITE_MAGIC))
  if magic.startswith(MCAP_MAGIC):
    reader = _Scanned(p, is2=True)
  elif magic == SQLITE_MAGIC:
    reader = _Db3(p)
  elif magic.startswith(ROS1_MAGIC):
    reader = _Scanned(p, is2=False)
  else:
    return None
  if not any(c.msgcount for c in reader.connections):
    raise ValueError(f"no complete message before {reader.cut or 'its end'}")
  return reader


def _bag_dir(p: Path) -> Any:
  """A ROS 2 bag directory that rosbags could not open (no metadata.yaml, or its storage file
  cut short): its .db3 files read by rosbags as they are (a single one it cannot read, read
  row by row), or its single .mcap file scanned."""
  from rosbags.highlevel import AnyReader
  db3, mcaps = sorted(p.glob("*.db3")), sorted(p.glob("*.mcap"))
  if db3:
    reader = AnyReader(db3)
    try:
      reader.open()
    except Exception:  # noqa: BLE001 - rosbags and sqlite raise their own types
      if len(db3) > 1:
        raise
      return open_scanned(str(db3[0]))
    return reader
  if len(mcaps) == 1:
    return open_scanned(str(mcaps[0]))
  if mcaps:
    raise ValueError(f"{len(mcaps)} .mcap files and no readable metadata.yaml to order them")
  return None


class _Scanned:
  """An AnyReader look-alike over one file read sequentially (see the module docstring)."""

  def __init__(self, path: Path, is2: bool):
    self.path, self.is2 = path, is2
    self.cut: str | None = None
    self.conns: dict[int, Any] = {}
    self.skipped: dict[str, str] = {}
    counts: dict[int, int] = {}
    self.start_time = self.last_time = None
    for cid, t, _ in self._records(with_data=False):
      counts[cid] = counts.get(cid, 0) + 1
      self.start_time = t if self.start_time is None else min(self.start_time, t)
      self.last_time = t
    self.connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in self.conns.values()]
    self.conns = {c.id: c for c in self.connections}  # the ones messages() yields
    self.typestore = self._typestore()

  def _records(self, with_data: bool) -> Iterator[tuple[int, int, bytes | None]]:
    """(connection id, log time ns, raw message or None) in file order; new connections go
    to self.conns, and where the reading stopped to self.cut."""
    with open(self.path, "rb") as f:
      try:
        yield from (_mcap_records(f, self) if self.is2 else _Ros1Scan(f, self).records(with_data))
      except Cut as e:
        self.cut = str(e)
      except Exception as e:  # noqa: BLE001 - struct, mcap and decompressor errors
        self.cut = f"unreadable ({type(e).__name__}: {e})"

  def _typestore(self) -> Any:
    """The bag's own message definitions, as AnyReader registers them (a bag without any
    falls back to the ROS 2 Humble or ROS 1 Noetic types)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
    types: dict = {}
    for c in self.connections:
      if c.msgdef.data and c.msgdef.format == MessageDefinitionFormat.IDL:
        types.update(get_types_from_idl(c.msgdef.data))
      elif c.msgdef.data:
        types.update(get_types_from_msg(c.msgdef.data, c.msgtype))
    if not types:
      return get_typestore(Stores.ROS2_HUMBLE if self.is2 else Stores.ROS1_NOETIC)
    store = get_typestore(Stores.EMPTY)
    store.register(types)
    return store

  def messages(self, connections: Any = (), start: int | None = None,
               stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """(connection, log time ns, raw) of `connections` (all when empty) in file order, from
    `start` to before `stop`; ends quietly where the file is cut (see `cut`)."""
    wanted = {c.id for c in connections} or set(self.conns)
    for cid, t, raw in self._records(with_data=True):
      if cid in wanted and (start is None or t >= start) and (stop is None or t < stop):
        yield self.conns[cid], t, raw

  def deserialize(self, raw: bytes, msgtype: str) -> Any:
    return (self.typestore.deserialize_cdr(raw, msgtype) if self.is2
            else self.typestore.deserialize_ros1(raw, msgtype))

  def close(self) -> None:
    """Nothing stays open between scans."""


class _Db3(_Scanned):
  """A rosbag2 sqlite3 file that rosbags cannot open (cut short, or a page damaged), read with
  Python's sqlite3 one row at a time until sqlite raises. Rows come in timestamp order through
  the bag's timestamp index; when that query fails before its first row (the index itself
  damaged, or sqlite sorting instead and so reading every row first), in rowid order, the
  order rosbag2 inserted them in. The scan that counts the messages reads their data too
  (one row at a time), so that it stops where `messages()` does."""

  def __init__(self, path: Path):
    super().__init__(path, is2=True)

  def _records(self, with_data: bool) -> Iterator[tuple[int, int, bytes | None]]:
    import contextlib
    import sqlite3
    # writable_schema: sqlite otherwise takes a file shorter than the page count in its header
    # as wholly malformed; the connection is read-only, nothing is written.
    with contextlib.closing(sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro",
                                            uri=True)) as db:
      db.execute("PRAGMA writable_schema = ON")
      if not self.conns:
        self._topics(db)
      yielded = False
      for order in ("timestamp", "id"):
        self.cut = None
        try:
          for cid, t, raw in db.execute("SELECT topic_id, timestamp, data FROM messages "
                                        f"ORDER BY {order}"):
            if cid in self.conns:
              yielded = True
              yield cid, t, raw
          return
        except sqlite3.Error as e:
          self.cut = f"{self.path.name} cut short or damaged (sqlite: {e})"
          if yielded:
            return

  def _topics(self, db: Any) -> None:
    """Connections of the topics table (sqlite's error when it is unreadable: not a bag),
    with the message definitions rosbag2 stores from its format 8 on."""
    import sqlite3
    defs: dict[str, tuple[str, str]] = {}
    try:
      defs = {t: (enc, text) for t, enc, text in db.execute(
          "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions")}
    except sqlite3.Error:  # older bags have none: the ROS 2 Humble types are used
      pass
    for cid, topic, msgtype in db.execute("SELECT id, name, type FROM topics"):
      enc, text = defs.get(msgtype, ("", ""))
      self.conns[cid] = _connection(self, cid, topic, msgtype, text, enc == "ros2idl")


def _connection(owner: _Scanned, cid: int, topic: str, msgtype: str, msgdef: str,
                idl: bool = False) -> Any:
  from rosbags.interfaces import (Connection, ConnectionExtRosbag1, ConnectionExtRosbag2,
                                  MessageDefinition, MessageDefinitionFormat)
  fmt = MessageDefinitionFormat.IDL if idl else MessageDefinitionFormat.MSG
  ext = ConnectionExtRosbag2("cdr", []) if owner.is2 else ConnectionExtRosbag1(None, None)
  return Connection(cid, topic, msgtype, MessageDefinition(fmt, msgdef), "", 0, ext, owner)


class _Exact:
  """A file whose reads return all the bytes asked for or raise Cut (mcap's stream reader
  would take a short read as a record's data, cut short)."""

  def __init__(self, f: BinaryIO):
    self.f = f

  def read(self, n: int = -1) -> bytes:
    data = self.f.read(n)
    if n > 0 and len(data) < n:
      raise Cut("cut short (no summary or footer; its last record is incomplete)"
                if data or n > 1 else "cut short (no summary or footer)")
    return data


def _mcap_records(f: BinaryIO, owner: _Scanned) -> Iterator[tuple[int, int, bytes]]:
  from mcap.records import Channel, Footer, Message, Schema
  from mcap.stream_reader import StreamReader
  schemas: dict[int, Any] = {}
  size = os.fstat(f.fileno()).st_size
  for record in StreamReader(_Exact(f), record_size_limit=size).records:
    if isinstance(record, Schema):
      schemas[record.id] = record
    elif isinstance(record, Channel) and record.id not in owner.conns:
      schema = schemas.get(record.schema_id)
      if (record.message_encoding not in ROS_MESSAGES
          or schema is not None and schema.encoding not in ROS_SCHEMAS):
        owner.skipped[record.topic] = record.message_encoding
        continue
      owner.conns[record.id] = _connection(
          owner, record.id, record.topic, schema.name if schema else "",
          schema.data.decode() if schema else "", bool(schema) and schema.encoding == "ros2idl")
    elif isinstance(record, Message):
      yield record.channel_id, record.log_time, record.data
    elif isinstance(record, Footer):
      return


def _fields(data: bytes) -> dict[str, bytes]:
  """The `name=value` fields of a ROS 1 record header or connection header, each u32-sized."""
  fields, i = {}, 0
  while i + 4 <= len(data):
    n = struct.unpack_from("<I", data, i)[0]
    name, _, value = data[i + 4:i + 4 + n].partition(b"=")
    fields[name.decode("latin-1")] = value
    i += 4 + n
  return fields


class _Ros1Scan:
  """The records of a ROS 1 bag (format 2.0) read in order, entering its chunks."""

  def __init__(self, f: BinaryIO, owner: _Scanned):
    self.f, self.owner = f, owner
    self.size = os.fstat(f.fileno()).st_size

  def records(self, with_data: bool) -> Iterator[tuple[int, int, bytes | None]]:
    f = self.f
    f.seek(len(ROS1_MAGIC))
    indexed = True
    try:
      header, n = self._record(f, self.size)
      f.seek(n, os.SEEK_CUR)
      indexed = struct.unpack("<Q", header.get("index_pos", bytes(8)))[0] != 0
      while f.tell() < self.size:
        fields, n = self._record(f, self.size, chunk=True)
        op = fields.get("op", b"\0")[0]
        if op == _OP_CHUNK:
          yield from self._chunk(fields, n, with_data)
        elif op == _OP_CONNECTION:
          self._connection(fields, f.read(n))
        else:  # index data, chunk info: not needed to read in order
          f.seek(n, os.SEEK_CUR)
    except Cut as e:
      raise Cut(f"cut short ({'' if indexed else 'not indexed; '}{e})") from None
    if not indexed:
      raise Cut("not indexed (its recorder was stopped before writing the index)")

  def _record(self, f: BinaryIO, end: int, chunk: bool = False) -> tuple[dict[str, bytes], int]:
    """The header fields and data length of the record at f's position (f is left at its
    data); Cut when it does not fit before `end` (a chunk's data may: it is cut later)."""
    left = end - f.tell()
    header_len = self._u32(f, left)
    fields = _fields(f.read(header_len))
    data_len = self._u32(f, left - 4 - header_len, check=False)
    if data_len > left - 8 - header_len and not (chunk and fields.get("op") == bytes([_OP_CHUNK])):
      raise Cut("its last record is incomplete")
    return fields, data_len

  @staticmethod
  def _u32(f: BinaryIO, left: int, check: bool = True) -> int:
    if left < 4:
      raise Cut("its last record is incomplete")
    n = struct.unpack("<I", f.read(4))[0]
    if check and n > left - 4:
      raise Cut("its last record is incomplete")
    return n

  def _chunk(self, fields: dict[str, bytes], data_len: int,
             with_data: bool) -> Iterator[tuple[int, int, bytes | None]]:
    """The messages of a chunk. One whose sizes are still 0 (its recorder was killed before
    closing it) or that runs past the file's end is read up to the end, where it is cut."""
    compression = fields.get("compression", b"none").decode("latin-1")
    size = struct.unpack("<I", fields.get("size", bytes(4)))[0]
    start = self.f.tell()
    cut = (data_len == 0 and size == 0) or start + data_len > self.size
    if cut:
      data_len = self.size - start
    if compression == "none":
      src, end = self.f, start + data_len
    else:
      src = io.BytesIO(self._decompress(compression, self.f.read(data_len), size or MAX_CHUNK))
      end = len(src.getvalue())
    while src.tell() < end:
      fields, n = self._record(src, end)
      op = fields.get("op", b"\0")[0]
      if op == _OP_CONNECTION:
        self._connection(fields, src.read(n))
      elif op == _OP_MSG:
        cid = struct.unpack("<I", fields["conn"])[0]
        sec, nsec = struct.unpack("<II", fields["time"])
        if cid not in self.owner.conns:
          raise ValueError(f"a message of connection {cid} before its connection record")
        raw = src.read(n) if with_data else None
        if raw is None:
          src.seek(n, os.SEEK_CUR)
        yield cid, sec * 10**9 + nsec, raw
      else:
        src.seek(n, os.SEEK_CUR)
    self.f.seek(start + data_len)
    if cut:
      raise Cut("its last chunk is unterminated")

  @staticmethod
  def _decompress(compression: str, data: bytes, size: int) -> bytes:
    """At most `size` bytes of a chunk: as much as its (possibly cut) data holds."""
    if size > MAX_CHUNK:
      raise ValueError(f"a chunk of {size} bytes (at most {MAX_CHUNK} are read)")
    if compression == "bz2":
      return bz2.BZ2Decompressor().decompress(data, max_length=size)
    if compression == "lz4":
      from lz4.frame import LZ4FrameDecompressor
      return LZ4FrameDecompressor().decompress(data, max_length=size)
    raise ValueError(f"chunk compression {compression!r}")

  def _connection(self, fields: dict[str, bytes], data: bytes) -> None:
    from rosbags.typesys.msg import normalize_msgtype
    cid = struct.unpack("<I", fields["conn"])[0]
    if cid not in self.owner.conns:
      conn = {k: v.decode("utf-8", "replace") for k, v in _fields(data).items()}
      self.owner.conns[cid] = _connection(
          self.owner, cid, fields["topic"].decode("utf-8", "replace"),
          normalize_msgtype(conn["type"]), conn.get("message_definition", ""))
