"""Where hydrajax's ROS messages go: an MCAP file, a ROS 2 bag, a ROS 1 bag, or a live
Foxglove WebSocket server. Each is a `Sink`: channels by topic and message type, messages as
rosbags message objects (serialized in the sink's own ROS version) or, for copied input
topics, raw bytes of the input bag.

Files are written beside OUT under a temporary name and renamed to OUT when closed, so OUT is
either absent or a complete, indexed log; `close(keep=True)` after an error keeps the
messages written so far as a valid log.
"""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from hydrajax.runtime import atomic

FORMATS = ("mcap", "ros2", "ros1")


def typestore(ros1: bool) -> Any:
  """The message definitions hydrajax writes: ROS 1 Noetic's or ROS 2 Humble's."""
  from rosbags.typesys import Stores, get_typestore
  return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)


class Sink:
  """A log of ROS messages. `ros1` says which serialization its messages take."""
  ros1 = False
  per_type_definitions = False  # one definition per message type, shared by all topics

  def __init__(self):
    self.ts = typestore(self.ros1)
    self._channels: dict[str, Any] = {}

  def write(self, topic: str, msgtype: str, log_time: int, msg: Any) -> None:
    """Write `msg` (a message object of `self.ts`) on `topic` at `log_time` (ns)."""
    if topic not in self._channels:
      self._channels[topic] = self._channel(topic, msgtype, self.ts)
    data = (self.ts.serialize_ros1(msg, msgtype) if self.ros1
            else self.ts.serialize_cdr(msg, msgtype))
    self._write(self._channels[topic], log_time, data)

  def write_raw(self, topic: str, msgtype: str, log_time: int, data: bytes, source_ts: Any,
                source_ros1: bool) -> None:
    """Copy a message of another log (serialized as `source_ros1` says, its type known to
    `source_ts`), converted to this sink's serialization."""
    if topic not in self._channels:
      self._channels[topic] = self._channel(topic, msgtype, source_ts)
    if source_ros1 and not self.ros1:
      data = source_ts.ros1_to_cdr(data, msgtype)
    elif self.ros1 and not source_ros1:
      data = source_ts.cdr_to_ros1(data, msgtype)
    self._write(self._channels[topic], log_time, data)

  def _channel(self, topic: str, msgtype: str, ts: Any) -> Any:
    raise NotImplementedError

  def _write(self, channel: Any, log_time: int, data: bytes) -> None:
    raise NotImplementedError

  def close(self, keep: bool = True) -> None:
    """Finish the log; without `keep`, remove everything written."""


class McapSink(Sink):
  """A bare MCAP file (ros2 profile: CDR messages, ros2msg schemas) written with `mcap`."""

  def __init__(self, path: str):
    super().__init__()
    from mcap.writer import Writer
    self._atomic = atomic.atomic_path(path, suffix=".mcap")
    self._tmp = self._atomic.__enter__()
    self._file = open(self._tmp, "wb")
    self._writer = Writer(self._file)
    self._writer.start(profile="ros2", library="hydrajax")
    self._schemas: dict[tuple[str, str], int] = {}

  def _channel(self, topic, msgtype, ts):
    text = ts.generate_msgdef(msgtype, ros_version=2)[0]
    key = (msgtype, text)
    if key not in self._schemas:
      self._schemas[key] = self._writer.register_schema(msgtype, "ros2msg", text.encode())
    return self._writer.register_channel(topic, "cdr", self._schemas[key])

  def _write(self, channel, log_time, data):
    self._writer.add_message(channel, log_time, bytes(data), log_time)

  def close(self, keep=True):
    self._writer.finish()
    self._file.close()
    if keep:
      self._atomic.__exit__(None, None, None)
    else:
      self._atomic.__exit__(RuntimeError, RuntimeError("discarded"), None)


class _RosbagsSink(Sink):
  """A sink whose `_writer` is a rosbags Writer (ROS 1 or ROS 2)."""

  def _channel(self, topic, msgtype, ts):
    return self._writer.add_connection(topic, msgtype, typestore=ts)

  def _write(self, channel, log_time, data):
    self._writer.write(channel, log_time, bytes(data))


class Ros1Sink(_RosbagsSink):
  """A ROS 1 bag (version 2.0) written with `rosbags`."""
  ros1 = True

  def __init__(self, path: str):
    super().__init__()
    from rosbags.rosbag1 import Writer
    self._atomic = atomic.atomic_path(path, suffix=".bag")
    self._tmp = self._atomic.__enter__()
    os.unlink(self._tmp)  # rosbags creates the file itself, exclusively
    self._writer = Writer(self._tmp)
    self._writer.open()

  def close(self, keep=True):
    self._writer.close()
    if keep:
      self._atomic.__exit__(None, None, None)
    else:
      self._atomic.__exit__(RuntimeError, RuntimeError("discarded"), None)


class Ros2Sink(_RosbagsSink):
  """A ROS 2 bag directory (sqlite3 storage, rosbag2 version 9) written with `rosbags`; it
  is built in a hidden directory beside OUT and renamed to OUT at the end."""
  per_type_definitions = True

  def __init__(self, path: str):
    super().__init__()
    from rosbags.rosbag2 import Writer
    path = os.path.abspath(path)
    if os.path.lexists(path):
      raise ValueError(f"{path} exists: a ROS 2 bag is a new directory; remove it or give "
                       "another --out")
    self.path = path
    self._parent = os.path.join(os.path.dirname(path),
                                f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(self._parent)
    self._writer = Writer(Path(self._parent) / os.path.basename(path), version=9)
    self._writer.open()

  def close(self, keep=True):
    try:
      self._writer.close()
      if keep:
        os.rename(os.path.join(self._parent, os.path.basename(self.path)), self.path)
    finally:
      shutil.rmtree(self._parent, ignore_errors=True)


class FoxgloveSink(Sink):
  """A Foxglove WebSocket server on 127.0.0.1 (foxglove-sdk): ros2msg schemas, CDR messages,
  sent to the clients subscribed at the time (a live stream, nothing kept)."""

  def __init__(self, port: int = 8765, host: str = "127.0.0.1"):
    super().__init__()
    import foxglove
    self._foxglove = foxglove
    self.context = foxglove.Context()
    self.server = foxglove.start_server(name="hydrajax", host=host, port=port,
                                        context=self.context)
    self.port = self.server.port

  def _channel(self, topic, msgtype, ts):
    schema = self._foxglove.Schema(name=msgtype, encoding="ros2msg",
                                   data=ts.generate_msgdef(msgtype, ros_version=2)[0].encode())
    return self._foxglove.Channel(topic, schema=schema, message_encoding="cdr",
                                  context=self.context)

  def _write(self, channel, log_time, data):
    channel.log(bytes(data), log_time=log_time)

  def close(self, keep=True):
    for channel in self._channels.values():
      channel.close()
    self.server.stop()


def open_file(path: str, fmt: str) -> Sink:
  """The file sink for `fmt` (one of FORMATS)."""
  if fmt not in FORMATS:
    raise ValueError(f"--out-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  return {"mcap": McapSink, "ros2": Ros2Sink, "ros1": Ros1Sink}[fmt](path)


def format_for(path: str, fmt: str | None) -> str:
  """--out-format, else by OUT's name: .bag is ROS 1, anything else MCAP."""
  if fmt is not None:
    return fmt
  return "ros1" if path.endswith(".bag") else "mcap"


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr)
