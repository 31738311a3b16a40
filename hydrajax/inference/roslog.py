"""Where hydrajax's ROS messages go: an MCAP file, a ROS 2 bag, a ROS 1 bag, or a live
Foxglove WebSocket server. Each is a `Sink`: channels by topic and message type, messages as
rosbags message objects (serialized in the sink's own ROS version) or, for copied input
topics, raw bytes of the input bag. A copied message of the other ROS version is converted
byte for byte (rosbags' `ros1_to_cdr` / `cdr_to_ros1`) and written with this version's own
definition of its type when rosbags' ROS 1 Noetic / ROS 2 Humble store has one of the same
wire format (ROS 1's CameraInfo `K` is ROS 2's `k`), else with the bag's definition under this
version's Header (ROS 1's has `seq`), as `rosbags-convert` does.

Files are written beside OUT under a temporary name and renamed to OUT when closed, so OUT is
either absent or a complete, indexed log; `close(keep=True)` after an error keeps the
messages written so far as a valid log.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from hydrajax.runtime import atomic

FORMATS = ("mcap", "ros2", "ros1")

# ROS 1 types that ROS 2 has under another name with the same layout, renamed when copied
# into a ROS 2 log (as `rosbags-convert` does): ROS 2 has no `tf` package, and ROS 2 tools
# (RViz2, Foxglove) take transforms from tf2_msgs/TFMessage only. The other way needs no
# rename: ROS 1 Noetic has tf2_msgs/TFMessage too (rosbags' Noetic store lacks it, so it is
# written with the bag's definition, which gives Noetic's md5sum).
ROS2_RENAMES = {"tf/msg/tfMessage": "tf2_msgs/msg/TFMessage"}


def typestore(ros1: bool) -> Any:
  """The message definitions hydrajax writes: ROS 1 Noetic's or ROS 2 Humble's."""
  from rosbags.typesys import Stores, get_typestore
  return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)


class Sink:
  """A log of ROS messages. `ros1` says which serialization its messages take."""
  ros1 = False

  def __init__(self):
    self.ts = typestore(self.ros1)
    self._channels: dict[str, Any] = {}
    # topic -> (typestore, type written, converter)
    self._copies: dict[str, tuple[Any, str, Any]] = {}
    self._not_copied: set[str] = set()
    self._bag_store: tuple[Any, Any] | None = None  # (a bag's typestore, _bag_types of it)

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
    `source_ts`), converted to this sink's serialization. A topic that cannot be copied is
    named in one warning and left out (see `add_copy`)."""
    if topic in self._not_copied:
      return
    if topic not in self._copies:
      try:
        self.add_copy(topic, msgtype, source_ts, source_ros1)
      except ValueError as e:
        warn(str(e))
        return
    ts, out_type, convert = self._copies[topic]
    try:
      data = convert(data)
    except Exception as e:  # noqa: BLE001 - rosbags' SerdeError, struct errors
      # a message that does not fit its definition: the topic's later messages are left out
      # too, so OUT holds an unbroken prefix of it
      self._not_copied.add(topic)
      warn(f"{topic} ({msgtype}): its message at {log_time} ns cannot be converted "
           f"({' '.join(str(e).split())}); it and the topic's later messages are not copied")
      return
    if topic not in self._channels:
      self._channels[topic] = self._channel(topic, out_type, ts)
    self._write(self._channels[topic], log_time, data)

  def add_copy(self, topic: str, msgtype: str, source_ts: Any, source_ros1: bool) -> None:
    """Get ready to copy `topic` (see `write_raw`): ValueError naming it and why its type
    cannot be written here, and the topic is left out.

    Left out, not refused: `ros2 bag play` and Foxglove likewise skip a topic whose type
    they lack and go on with the others, and the copy is an extra beside the network's
    outputs, with no option to leave a topic out, so refusing would leave no way to run the
    bag with --copy-input at all."""
    try:
      if msgtype not in source_ts.fielddefs:
        raise ValueError("the bag holds no definition of it")
      self._copies[topic] = self._converter(msgtype, source_ts, source_ros1)
    except Exception as e:  # noqa: BLE001 - rosbags' KeyError, TypesysError, SerdeError
      self._not_copied.add(topic)
      why = f"no definition of {e}" if isinstance(e, KeyError) else str(e)
      raise ValueError(f"not copying {topic}: its type {msgtype} cannot be written to a ROS "
                       f"{1 if self.ros1 else 2} log: {' '.join(why.split())}") from None

  def _converter(self, msgtype: str, source_ts: Any,
                 source_ros1: bool) -> tuple[Any, str, Any]:
    """(the typestore whose definition OUT gets, the type OUT's channel has, bytes -> bytes
    of this sink's serialization)."""
    from rosbags.convert.converter import is_same_wireformat
    if source_ros1 == self.ros1:
      ts, out_type, convert = source_ts, msgtype, bytes  # as recorded, the bag's definitions
    else:
      out_type = msgtype if self.ros1 else ROS2_RENAMES.get(msgtype, msgtype)
      if out_type in self.ts.fielddefs and is_same_wireformat(source_ts, self.ts, msgtype,
                                                              out_type):
        ts = self.ts
      else:
        ts, out_type = self._bag_types(source_ts), msgtype
      # each direction reads the ROS 1 Header (with seq) from a store that has it
      convert = (functools.partial(ts.ros1_to_cdr, typename=out_type) if source_ros1
                 else functools.partial(source_ts.cdr_to_ros1, typename=msgtype))
    ts.generate_msgdef(out_type, ros_version=1 if self.ros1 else 2)  # every nested type known
    return ts, out_type, convert

  def _bag_types(self, source_ts: Any) -> Any:
    """The bag's definitions with this ROS version's Header."""
    if self._bag_store is None or self._bag_store[0] is not source_ts:
      from rosbags.typesys import Stores, get_typestore
      store = get_typestore(Stores.EMPTY)
      store.register({**source_ts.fielddefs,
                      "std_msgs/msg/Header": self.ts.fielddefs["std_msgs/msg/Header"]})
      self._bag_store = (source_ts, store)
    return self._bag_store[1]

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
  sent to the clients subscribed at the time (a live stream, nothing kept).

  `topics` ({topic: message type}), every topic the run will publish, get their channels
  before the server starts, so a client that connects before the first frame (the usual
  case: Foxglove opened, then the robot started) sees them advertised and can subscribe.
  foxglove-sdk queues a new channel's advertisement to the connected clients a moment before
  it accepts their subscriptions to it ("Unknown channel ID"); a client that connects later
  gets the existing channels' advertisements only once they accept. A topic outside `topics`
  still gets its channel with its first message."""

  # How long `close` waits for the last messages to reach subscribed clients (seconds)
  FLUSH_SECONDS = 0.5

  def __init__(self, port: int = 8765, host: str = "127.0.0.1",
               topics: Mapping[str, str] | None = None):
    super().__init__()
    import foxglove
    self._foxglove = foxglove
    self.context = foxglove.Context()
    for topic, msgtype in (topics or {}).items():
      self._channels[topic] = self._channel(topic, msgtype, self.ts)
    self.server = foxglove.start_server(name="hydrajax", host=host, port=port,
                                        context=self.context)
    self.port = self.server.port
    self._last_log = time.monotonic()

  def _channel(self, topic, msgtype, ts):
    schema = self._foxglove.Schema(name=msgtype, encoding="ros2msg",
                                   data=ts.generate_msgdef(msgtype, ros_version=2)[0].encode())
    return self._foxglove.Channel(topic, schema=schema, message_encoding="cdr",
                                  context=self.context)

  def _write(self, channel, log_time, data):
    channel.log(bytes(data), log_time=log_time)
    self._last_log = time.monotonic()

  def has_subscribers(self) -> bool:
    """Whether a client is subscribed to one of the sink's topics (its subscription accepted
    by the server: what is logged from now on is sent to it)."""
    return any(channel.has_sinks() for channel in self._channels.values())

  def close(self, keep=True):
    """Stop the server; with `keep`, first give subscribed clients up to FLUSH_SECONDS after
    the last message to receive what is still queued for them."""
    try:
      # foxglove-sdk has no flush: stopping its server drops the messages still queued for a
      # client, and it tells neither how many are queued nor what a client received (the
      # protocol has no acknowledgement), so the wait is a bound, not a confirmation; it ends
      # early once no client is subscribed
      deadline = self._last_log + self.FLUSH_SECONDS
      while keep and time.monotonic() < deadline and self.has_subscribers():
        time.sleep(0.01)
    finally:
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
