"""Metric logs without TensorFlow: JSON lines and TensorBoard event files.

TensorBoard reads TFRecord files of `Event` protocol buffers. A scalar event is four small
messages, so they are hand-encoded here (protobuf wire format) and framed as TFRecords
(length, masked CRC-32C of the length, payload, masked CRC-32C of the payload):

  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Any, Iterator, Mapping

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ _CRC32C_POLY if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`; crc32c(b"123456789") == 0xE3069283."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
  return _varint((number << 3) | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """Serialize an `Event` with a file version or a summary of scalar values."""
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    summary = b""
    for tag, value in scalars.items():
      val = _length_delimited(1, str(tag).encode()) + _field(2, 5) + struct.pack("<f", value)
      summary += _length_delimited(1, val)
    out += _length_delimited(5, summary)
  return out


def tfrecord(payload: bytes) -> bytes:
  """Frame one record: uint64 length, masked crc, payload, masked crc (little-endian)."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", masked_crc32c(length)) + payload +
          struct.pack("<I", masked_crc32c(payload)))


def read_tfrecords(path: str | os.PathLike) -> Iterator[bytes]:
  """Yield the payloads of a TFRecord file, checking both checksums of every record."""
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    if pos + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {pos}")
    length_bytes = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", length_bytes)
    (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if crc != masked_crc32c(length_bytes):
      raise ValueError(f"{path}: bad length checksum at byte {pos}")
    payload = data[pos + 12:pos + 12 + length]
    (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    if len(payload) != length or crc != masked_crc32c(payload):
      raise ValueError(f"{path}: bad or truncated payload at byte {pos}")
    yield payload
    pos += 16 + length


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  shift = value = 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
  """(field number, value) pairs of a message: ints, float/double as raw bytes, sub-bytes."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    elif wire == 2:
      n, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + n], pos + n
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield number, value


def decode_event(payload: bytes) -> dict:
  """Inverse of `encode_event`: {"wall_time", "step", "file_version"?, "scalars": {tag: v}}."""
  event = {"wall_time": 0.0, "step": 0, "scalars": {}}
  for number, value in _fields(payload):
    if number == 1:
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif number == 2:
      event["step"] = value - (1 << 64) if value >> 63 else value
    elif number == 3:
      event["file_version"] = value.decode()
    elif number == 5:
      for _, val in _fields(value):
        parts = dict(_fields(val))
        event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
  return event


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and to a TensorBoard event file.

  Every `write` is flushed, so a killed run keeps what it logged. Only the host with
  `enabled=True` (process 0) writes.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.enabled = enabled
    self.workdir = os.fspath(workdir)
    self._jsonl = self._events = None
    if not enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a")
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.events_path = os.path.join(self.workdir, name)
    self._events = open(self.events_path, "ab")
    self._events.write(tfrecord(encode_event(time.time(), 0, file_version="brain.Event:2")))
    self._events.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Log {name: value} at `step`; non-finite values are kept in JSON as null."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step), **{k: (v if math.isfinite(v) else None)
                                    for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._events.write(tfrecord(encode_event(time.time(), step, values)))
    self._events.flush()

  def close(self) -> None:
    for f in (self._jsonl, self._events):
      if f is not None:
        f.close()
    self._jsonl = self._events = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
