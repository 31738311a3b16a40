"""Robot logs: camera images from a ROS 1 bag, a ROS 2 bag (sqlite3 or MCAP) or a bare MCAP
file in, segmentation, metric depth, point clouds and camera info out, as a log RViz and
Foxglove replay, or live over Foxglove's WebSocket protocol.

    hydrajax-predict --weights W --bag IN --topic /camera/image_raw --out OUT.mcap [--points]
    hydrajax-predict --weights W --camera 0 --foxglove [--port 8765]

Bags are read with `rosbags` (no ROS install), whatever their version or storage; OUT is
MCAP (written with `mcap`), a ROS 2 bag or a ROS 1 bag (`--out-format`, or .bag by name).
Per image message of `--topic` (sensor_msgs/Image or CompressedImage, rosmsg.py says which
encodings), with its header's stamp and frame_id and its log time, OUT gets PREFIX/segm (mono8
class ids), PREFIX/segm_color (rgb8), PREFIX/depth (32FC1 metres), PREFIX/camera_info and,
with `--points`, PREFIX/points (PointCloud2), all at the network's resolution (the input, or
its copy shrunk to `--max-side`). `--copy-input` copies every input topic too.

The camera: `--intrinsics`/`--fov` when given, else the CameraInfo on the image topic's
namespace (`--camera-info-topic`), rescaled to the output's size; the choice is printed.
Without either, segm and depth are still written and `--points` is refused.

Frames stream through `video.predict_stream` (batched, bounded memory). A bag that cannot be
read on stops the run with its name and the last good message time; the frames before it are
kept in a valid OUT (exit status 1). So does a bag cut short by a recorder that was killed (an
unindexed ROS 1 bag, an MCAP file without footer), read record by record by bagscan.py, as
is an MCAP file that holds channels of other encodings (JSON, protobuf) beside its ROS ones:
only the ROS ones are read.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from hydrajax import api
from hydrajax.data import pngio
from hydrajax.inference import bagscan
from hydrajax.inference import full_res
from hydrajax.inference import exported
from hydrajax.inference import onnx_runner
from hydrajax.inference import points as points_lib
from hydrajax.inference import roslog
from hydrajax.inference import rosmsg
from hydrajax.inference import video
from hydrajax.inference import visualize

DEFAULT_PREFIX = "/hydrajax"


@dataclasses.dataclass
class Meta:
  """What an output frame keeps of its input message: header stamp and frame_id (ns), the
  log time (ns) it was recorded at."""
  stamp: int
  frame_id: str
  log_time: int


@dataclasses.dataclass
class BagReport:
  """frames: frames written; seconds: wall time; error: why reading stopped early (None: the
  bag was read to its end or to --end)."""
  frames: int
  seconds: float
  error: str | None = None


def camera_info_topic(image_topic: str) -> str:
  """The CameraInfo topic of an image topic's namespace (image_transport's convention):
  /cam/image_raw and /cam/image_raw/compressed -> /cam/camera_info."""
  base = image_topic[:-len("/compressed")] if image_topic.endswith("/compressed") else image_topic
  return f"{base.rsplit('/', 1)[0]}/camera_info"


class BagInput:
  """An opened bag: its image topic, the first CameraInfo on the camera's topic (or None),
  the first image's size; checked before anything is written."""

  def __init__(self, path: str, topic: str, info_topic: str | None = None,
               max_pixels: int = pngio.DEFAULT_MAX_PIXELS):
    self.path, self.topic, self.max_pixels = path, topic, max_pixels
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such bag")
    self.reader = _open_reader(path)
    self.ros1 = not self.reader.is2
    conns = self.reader.connections
    self.skipped = getattr(self.reader, "skipped", {})  # non-ROS MCAP channels (bagscan.py)
    self.image_conns = [c for c in conns if c.topic == topic]
    if not self.image_conns or self.image_conns[0].msgtype not in rosmsg.IMAGE_TYPES:
      images = sorted({c.topic for c in conns if c.msgtype in rosmsg.IMAGE_TYPES})
      what = (f"is a {self.image_conns[0].msgtype}, not an image topic" if self.image_conns
              else f"is {self.skipped[topic]}, not a ROS image" if topic in self.skipped
              else "is not in it")
      raise ValueError(f"{path}: topic {topic} {what}; its image topics: "
                       f"{', '.join(images) or 'none'}")
    self.info_topic = info_topic or camera_info_topic(topic)
    self.info_conns = [c for c in conns if c.topic == self.info_topic
                       and c.msgtype == rosmsg.CAMERA_INFO]
    if info_topic and not self.info_conns:
      raise ValueError(f"{path}: no CameraInfo on --camera-info-topic {info_topic}; its "
                       f"CameraInfo topics: "
                       f"{', '.join(sorted({c.topic for c in conns if c.msgtype == rosmsg.CAMERA_INFO})) or 'none'}")
    self.info = self._first(self.info_conns)
    first = self._first(self.image_conns)
    if first is None:
      raise ValueError(f"{path}: topic {topic} has no readable messages")
    self.first_image = rosmsg.to_rgb(first, topic, max_pixels)  # an unsupported encoding stops here
    self.count = sum(c.msgcount for c in self.image_conns)

  def _first(self, conns: list) -> Any:
    """The first message of `conns`, deserialized (None: none, or unreadable)."""
    if not conns:
      return None
    try:
      for conn, _, raw in self.reader.messages(connections=conns):
        return self.reader.deserialize(raw, conn.msgtype)
    except Exception:  # noqa: BLE001 - a damaged bag: reported when the frames are read
      return None
    return None

  def prepare_copy(self, sinks: Sequence[roslog.Sink]) -> None:
    """Ready `sinks` to copy every topic of the bag, before anything is written; a topic
    that cannot be copied is named in one warning and left out (roslog.Sink.add_copy), and
    the channels of other encodings than ROS's in one more."""
    if self.skipped:
      roslog.warn("not copied, not ROS messages: " + ", ".join(
          f"{topic} ({encoding})" for topic, encoding in sorted(self.skipped.items())))
    for topic, msgtype in dict.fromkeys((c.topic, c.msgtype) for c in self.reader.connections):
      for sink in sinks:
        try:
          sink.add_copy(topic, msgtype, self.reader.typestore, self.ros1)
        except ValueError as e:
          roslog.warn(str(e))

  def frames(self, copy_to: Sequence[roslog.Sink] = (), every: int = 1,
             start: float | None = None, end: float | None = None,
             undistort: Any = None) -> Iterator[tuple[np.ndarray, Meta]]:
    """(RGB frame, Meta) of every `every`-th image message between `start` and `end`
    seconds after the bag's first message; every message read is also copied to `copy_to`.
    A read failure ends the frames and sets `self.error` naming the bag and the last good
    message time."""
    self.error, self.last_time = None, None
    t0 = self.reader.start_time
    start_ns = None if start is None else t0 + int(start * 1e9)
    stop_ns = None if end is None else t0 + int(end * 1e9)
    conns = [] if copy_to else self.image_conns + self.info_conns
    messages = self.reader.messages(connections=conns, start=start_ns, stop=stop_ns)
    image_ids = {id(c) for c in self.image_conns}
    index = 0
    while True:
      try:
        conn, log_time, raw = next(messages)
        msg = (self.reader.deserialize(raw, conn.msgtype) if id(conn) in image_ids else None)
      except StopIteration:
        self._cut_short(stop_ns)
        return
      except Exception as e:  # noqa: BLE001 - the storage's own errors (apsw, zstd, rosbags)
        when = ("before its first message" if self.last_time is None else
                f"after the message at bag time {(self.last_time - t0) / 1e9:.3f} s "
                f"({self.last_time} ns)")
        self.error = f"{self.path}: unreadable {when}: {onnx_runner.one_line(e)}"
        return
      self.last_time = log_time
      for sink in copy_to:
        sink.write_raw(conn.topic, conn.msgtype, log_time, raw, self.reader.typestore,
                       self.ros1)
      if msg is None:
        continue
      index += 1
      if (index - 1) % every:
        continue
      image = rosmsg.to_rgb(msg, self.topic, self.max_pixels)
      if undistort is not None:
        image = undistort(image)
      stamp = msg.header.stamp
      yield image, Meta(stamp.sec * 10**9 + stamp.nanosec, str(msg.header.frame_id), log_time)

  def _cut_short(self, stop_ns: int | None) -> None:
    """Names the bag's last complete message in `self.error` when the bag was cut short
    before `stop_ns` (a scanned bag's `cut`, see bagscan.py)."""
    cut, last = getattr(self.reader, "cut", None), getattr(self.reader, "last_time", None)
    if cut and last is not None and (stop_ns is None or last < stop_ns):
      self.error = (f"{self.path}: {cut} after the message at bag time "
                    f"{(last - self.reader.start_time) / 1e9:.3f} s ({last} ns)")

  def close(self) -> None:
    self.reader.close()


def _open_reader(path: str) -> Any:
  """rosbags' AnyReader of `path`; for a bag it cannot open, the reader of bagscan.py when the
  bag was cut short or left unindexed by a recorder that was killed."""
  from rosbags.highlevel import AnyReader
  try:
    reader = AnyReader([Path(path)])
    reader.open()
    return reader
  except Exception as e:  # noqa: BLE001 - rosbags, sqlite and zstd raise their own types
    why = onnx_runner.one_line(e)
  try:
    reader = bagscan.open_scanned(path)
  except Exception as e:  # noqa: BLE001 - as above, and the scan's own ValueError
    why = onnx_runner.one_line(e)
    reader = None
  if reader is None:
    raise ValueError(f"{path}: not a readable bag ({why}); no message could be read")
  return reader


@dataclasses.dataclass
class Publisher:
  """Writes one frame's outputs to every sink under `prefix`: segm, segm_color, depth,
  camera_info (when the camera is known) and points (with `points`); sinks whose
  `wants_image` is set (live ones) get the frame as PREFIX/image too."""
  sinks: Sequence[roslog.Sink]
  prefix: str
  colours: np.ndarray
  camera: points_lib.Intrinsics | None = None
  info: Any = None  # the input's CameraInfo, copied with the output's size
  undistorted: bool = False
  points: bool = False

  def __call__(self, frame: np.ndarray, outputs: Mapping[str, np.ndarray], meta: Meta) -> None:
    h, w = frame.shape[:2]
    labels = None
    if "segm" in outputs:
      labels = np.asarray(outputs["segm"])
      labels = labels if np.issubdtype(labels.dtype, np.integer) else labels.argmax(-1)
    k = self.camera.scaled(h, w) if self.camera is not None else None
    cloud = None
    if self.points and "depth" in outputs:
      cloud = points_lib.points(outputs["depth"], k, colors=frame, labels=labels)
    p, t = self.prefix, meta.log_time
    for sink in self.sinks:
      ts = sink.ts
      hdr = rosmsg.header(ts, meta.stamp, meta.frame_id)
      if getattr(sink, "wants_image", False):
        sink.write(f"{p}/image", rosmsg.IMAGE, t, rosmsg.image_msg(ts, hdr, frame, "rgb8"))
      if labels is not None:
        sink.write(f"{p}/segm", rosmsg.IMAGE, t, rosmsg.labels_msg(ts, hdr, labels))
        sink.write(f"{p}/segm_color", rosmsg.IMAGE, t, rosmsg.image_msg(
            ts, hdr, visualize.colorize_segm(labels, self.colours), "rgb8"))
      if "depth" in outputs:
        sink.write(f"{p}/depth", rosmsg.IMAGE, t, rosmsg.depth_msg(ts, hdr, outputs["depth"]))
      if k is not None:
        sink.write(f"{p}/camera_info", rosmsg.CAMERA_INFO, t,
                   rosmsg.camera_info_msg(ts, hdr, k, self.info, self.undistorted))
      if cloud is not None:
        sink.write(f"{p}/points", rosmsg.POINTS, t, rosmsg.point_cloud_msg(ts, hdr, cloud))


def output_topics(prefix: str, tasks: Sequence[str], *, camera: bool, points: bool,
                  image: bool) -> dict[str, str]:
  """{topic: message type} of everything `Publisher` writes for a model with `tasks`: the
  input frame with `image` (a live sink), camera_info when the camera is known, points with
  `points` (and a depth head)."""
  topics = {"image": rosmsg.IMAGE} if image else {}
  if "segm" in tasks:
    topics |= {"segm": rosmsg.IMAGE, "segm_color": rosmsg.IMAGE}
  if "depth" in tasks:
    topics["depth"] = rosmsg.IMAGE
  if camera:
    topics["camera_info"] = rosmsg.CAMERA_INFO
  if points and "depth" in tasks:
    topics["points"] = rosmsg.POINTS
  return {f"{prefix}/{name}": msgtype for name, msgtype in topics.items()}


def choose_camera(info_k: points_lib.Intrinsics | None, intrinsics: str | None,
                  fov: float | None, height: int, width: int) -> points_lib.Intrinsics | None:
  """--intrinsics (pixels at the input's size), else --fov, else the CameraInfo's K; the
  choice is printed (None when there is none)."""
  if intrinsics is not None:
    k = points_lib.parse_intrinsics(intrinsics, height, width)
  elif fov is not None:
    k = points_lib.from_fov(fov, height, width)
  else:
    k = info_k
  if k is not None:
    print(f"camera: intrinsics {k.describe()}")
  return k


def _undistorter(src: BagInput, undistort: bool) -> Any:
  """The image map for --undistort (None: nothing to undistort); without --undistort a
  distorted camera is named in a warning."""
  info = src.info
  model, d = rosmsg.distortion(info) if info is not None else ("", np.zeros(0))
  if undistort and info is None:
    raise ValueError(f"--undistort needs the camera's CameraInfo: {src.path} has none on "
                     f"{src.info_topic}")
  if not d.any():
    return None
  if not undistort:
    roslog.warn(f"{src.info_topic} has {model} distortion (D = {np.round(d, 4).tolist()}); "
                "the images are used as recorded (--undistort maps them to its pinhole K)")
    return None
  if model not in rosmsg.PLUMB_BOB:
    raise ValueError(f"--undistort handles {' and '.join(rosmsg.PLUMB_BOB)}; "
                     f"{src.info_topic} has {model!r}")
  k = rosmsg.intrinsics_of(info, src.info_topic)
  return rosmsg.Undistorter(k, d) if k is not None else None


def process_bag(variables: Any, src: str, dst: str | None, *, topic: str,
                out_format: str | None = None, prefix: str = DEFAULT_PREFIX,
                info_topic: str | None = None, intrinsics: str | None = None,
                fov: float | None = None, points: bool = False, undistort: bool = False,
                copy_input: bool = False, every: int = 1, start: float | None = None,
                end: float | None = None, batch_size: int = video.DEFAULT_BATCH,
                max_frames: int | None = None, palette: str = "auto",
                max_depth: float | None = None, max_side: int = full_res.DEFAULT_MAX_SIDE,
                max_pixels: int = pngio.DEFAULT_MAX_PIXELS, progress: bool = True,
                foxglove_port: int | None = None) -> BagReport:
  """Run the network on the images of `topic` in bag `src` and write the outputs to `dst`
  (a log of `out_format`) and/or a Foxglove server on 127.0.0.1:`foxglove_port` (replayed
  at the bag's speed). Bad input raises ValueError (one line) before anything is written."""
  if every < 1:
    raise ValueError(f"--every must be >= 1, got {every}")
  if start is not None and end is not None and end <= start:
    raise ValueError(f"--end {end} must be after --start {start} (seconds into the bag)")
  bag = BagInput(src, topic, info_topic, max_pixels)
  try:
    fmt = roslog.format_for(dst, out_format) if dst else None
    h, w = bag.first_image.shape[:2]
    info_k = rosmsg.intrinsics_of(bag.info, bag.info_topic) if bag.info is not None else None
    camera = choose_camera(info_k, intrinsics, fov, h, w)
    if points and camera is None:
      raise ValueError(f"--points needs the camera: {src} has no CameraInfo on "
                       f"{bag.info_topic}; give --intrinsics fx,fy,cx,cy or --fov DEG")
    if points and "depth" not in _tasks(variables):
      raise ValueError("--points needs a model with a depth head")
    mapper = _undistorter(bag, undistort)
    sinks = []
    try:
      if dst:
        sinks.append(roslog.open_file(dst, fmt))
      if foxglove_port is not None:
        sinks.append(_foxglove(foxglove_port, output_topics(
            prefix, _tasks(variables), camera=camera is not None, points=points, image=True)))
      colours, _ = onnx_runner.display_settings(variables, palette, max_depth)
      publish = Publisher(sinks, prefix, colours, camera, bag.info, mapper is not None, points)
      files = [s for s in sinks if not isinstance(s, roslog.FoxgloveSink)]
      if copy_input:
        bag.prepare_copy(files)
      frames = bag.frames(files if copy_input else (), every, start, end, mapper)
      report = _run(variables, frames, publish, total=-(-bag.count // every),
                    t0=bag.reader.start_time, batch_size=batch_size, max_frames=max_frames,
                    max_side=max_side, progress=progress,
                    realtime=foxglove_port is not None)
    except BaseException:
      for sink in sinks:
        sink.close(keep=False)
      raise
    for sink in sinks:
      sink.close(keep=True)
    report.error = bag.error
    return report
  finally:
    bag.close()


def _run(variables: Any, frames: Iterator[tuple[np.ndarray, Meta]], publish: Publisher, *,
         total: int | None, t0: int | None, batch_size: int, max_frames: int | None,
         max_side: int, progress: bool, realtime: bool) -> BagReport:
  """The loop: frames through the batched network, each frame's outputs published in order
  (at the log's own pace with `realtime`)."""
  metas: collections.deque[Meta] = collections.deque()

  def images() -> Iterator[np.ndarray]:
    for i, (image, meta) in enumerate(frames):
      if max_frames is not None and i >= max_frames:
        return
      metas.append(meta)
      yield image
  start, count, pace = time.perf_counter(), 0, None
  total = min(total, max_frames) if total and max_frames else total
  with tqdm(total=total, desc="bag", unit="frame", disable=not progress) as bar:
    for frame, outputs in video.predict_stream(variables, images(), batch_size=batch_size,
                                               max_side=max_side):
      meta = metas.popleft()
      if realtime:
        pace = pace or (time.monotonic() - meta.log_time / 1e9)
        time.sleep(max(0.0, pace + meta.log_time / 1e9 - time.monotonic()))
      publish(frame, outputs, meta)
      count += 1
      bar.update(1)
      if t0 is not None:
        bar.set_postfix(bag_time=f"{(meta.log_time - t0) / 1e9:.1f}s")
  return BagReport(count, time.perf_counter() - start)


def _foxglove(port: int, topics: Mapping[str, str]) -> roslog.FoxgloveSink:
  """The live sink, every topic of the run (`output_topics`) advertised before any frame."""
  sink = roslog.FoxgloveSink(port, topics=topics)
  sink.wants_image = True
  print(f"foxglove: serving on ws://127.0.0.1:{sink.port} (Foxglove: Open connection)")
  return sink


def _tasks(variables: Any) -> Sequence[str]:
  if isinstance(variables, onnx_runner.ExportedModel):
    return variables.tasks
  return api.model_config(variables)["tasks"]


def live_camera(variables: Any, frames: Iterable[np.ndarray], sinks: Sequence[roslog.Sink], *,
                prefix: str = DEFAULT_PREFIX, camera: points_lib.CameraChoice | None = None,
                points: bool = False, palette: str = "auto", max_frames: int | None = None,
                max_side: int = full_res.DEFAULT_MAX_SIDE, progress: bool = True,
                frame_id: str = "camera") -> BagReport:
  """Publish every frame of a camera (any iterable of (H, W, 3) uint8) to `sinks`, stamped
  with the wall clock, one network call per frame (the least latency)."""
  colours, _ = onnx_runner.display_settings(variables, palette, None)
  k = None
  publish = Publisher(sinks, prefix, colours, None, None, False, points)

  def stamped() -> Iterator[tuple[np.ndarray, Meta]]:
    nonlocal k
    for frame in frames:
      frame = np.asarray(frame)
      if camera is not None and k is None:
        k = publish.camera = camera.for_image(*frame.shape[:2])
      now = time.time_ns()
      yield frame, Meta(now, frame_id, now)
  return _run(variables, stamped(), publish, total=max_frames, t0=None, batch_size=1,
              max_frames=max_frames, max_side=max_side, progress=progress, realtime=False)


def add_bag_args(parser: argparse.ArgumentParser) -> None:
  """The robot-log options of `hydrajax-predict` (--bag, --foxglove)."""
  g = parser.add_argument_group("robot logs (pip install -e \".[robot]\")")
  g.add_argument("--bag", default=None, metavar="IN",
                 help="input ROS 1 bag (.bag), ROS 2 bag (directory, .db3 or .mcap) or MCAP "
                      "file: write the outputs to --out as a log")
  g.add_argument("--topic", default=None, help="the bag's image topic (sensor_msgs/Image or "
                 "CompressedImage)")
  g.add_argument("--out-format", default=None, choices=roslog.FORMATS,
                 help="the output log's format (default: ros1 for OUT.bag, else mcap)")
  g.add_argument("--prefix", default=DEFAULT_PREFIX,
                 help=f"namespace of the output topics (default {DEFAULT_PREFIX})")
  g.add_argument("--camera-info-topic", default=None,
                 help="CameraInfo topic (default: camera_info beside the image topic)")
  g.add_argument("--undistort", action="store_true",
                 help="undistort plumb_bob / rational_polynomial images before the network")
  g.add_argument("--copy-input", action="store_true",
                 help="copy every input topic into the output log")
  g.add_argument("--every", type=int, default=1, metavar="N",
                 help="use every N-th image message (default 1)")
  g.add_argument("--start", type=float, default=None, metavar="S",
                 help="start S seconds after the bag's first message")
  g.add_argument("--end", type=float, default=None, metavar="S",
                 help="stop S seconds after the bag's first message")
  g.add_argument("--foxglove", action="store_true",
                 help="serve the outputs live over Foxglove's WebSocket protocol on "
                      "127.0.0.1 (with --camera, or --bag replayed at its own speed)")
  g.add_argument("--port", type=int, default=8765, help="--foxglove's port (default 8765)")


def run(args: argparse.Namespace) -> int:
  """CLI body of `hydrajax-predict --bag` and `--camera N --foxglove`: exit status 0, 1 when
  the bag could not be read to its end (what was read is written), 2 for bad input."""
  from hydrajax import weights
  try:
    if args.bag and (args.images or args.video is not None or args.camera is not None):
      raise ValueError("give --bag alone, without images, --video or --camera")
    if not args.bag and args.camera is None:
      raise ValueError("--foxglove needs --camera N or --bag IN")
    if not args.bag and args.out:
      raise ValueError("--camera with --foxglove streams live; it writes no --out")
    if args.bag and not args.topic:
      raise ValueError("--bag needs --topic (the image topic)")
    if args.bag and not (args.out or args.foxglove):
      raise ValueError("--bag needs --out (a log to write) or --foxglove")
    if args.batch < 1:
      raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.max_side < 0:
      raise ValueError(f"--max-side must be >= 0 pixels (0 = no limit), got {args.max_side}")
    if args.points and args.onnx:
      raise ValueError("--points needs weights (--weights or --workdir), not --onnx")
    variables = (exported.load(args.onnx, args.runtime, max_pixels=args.max_pixels)
                 if args.onnx else weights.load(args.weights))
    port = args.port if args.foxglove else None
    if args.bag:
      report = process_bag(
          variables, args.bag, args.out, topic=args.topic, out_format=args.out_format,
          prefix=args.prefix, info_topic=args.camera_info_topic, intrinsics=args.intrinsics,
          fov=args.fov, points=args.points, undistort=args.undistort,
          copy_input=args.copy_input, every=args.every, start=args.start, end=args.end,
          batch_size=args.batch, max_frames=args.max_frames, palette=args.palette,
          max_depth=args.max_depth, max_side=args.max_side, max_pixels=args.max_pixels,
          progress=not args.no_progress, foxglove_port=port)
    else:
      report = _run_camera(args, variables, port)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("stopped by Ctrl-C", file=sys.stderr)
    return video.INTERRUPTED
  where = args.out or "Foxglove"
  rate = report.frames / report.seconds if report.seconds > 0 else math.nan
  print(f"wrote {report.frames} frames to {where}: {rate:.2f} frames/s")
  if report.error:
    print(f"error: {report.error}; the {report.frames} frames before it are in {where}",
          file=sys.stderr)
    return 1
  return 0


def _run_camera(args: argparse.Namespace, variables: Any, port: int) -> BagReport:
  from hydrajax.inference import camera as camera_lib
  choice = None
  if args.points:
    choice = points_lib.camera_choice(variables, args.intrinsics, args.fov,
                                      args.weights or args.onnx)
  sink = _foxglove(port, output_topics(args.prefix, _tasks(variables), camera=choice is not None,
                                       points=args.points, image=True))
  try:
    frames, _ = camera_lib.open_camera(args.camera)
    return live_camera(variables, frames, [sink], prefix=args.prefix, camera=choice,
                       points=args.points, palette=args.palette, max_frames=args.max_frames,
                       max_side=args.max_side, progress=not args.no_progress)
  finally:
    sink.close()
