"""hydrajax-predict --bag: ROS 1, ROS 2 (sqlite3) and MCAP bags written here with rosbags, run
through the tool, and the output logs read back (rosbags, and mcap's own ROS 2 decoder)."""
import dataclasses
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hydrajax
from hydrajax.inference import predict, rosmsg
from tests.helpers.cli import assert_one_error_line

pytest.importorskip("rosbags")
pytest.importorskip("mcap")
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag1 import Writer as Writer1  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer as Writer2  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

H, W, FRAMES = 48, 64, 3
K_IN = (60.0, 62.0, 31.5, 23.5)  # fx, fy, cx, cy of the 64x48 camera
TOPIC = "/cam/image_raw"


def _frames(n=FRAMES, h=H, w=W):
  y, x = np.mgrid[0:h, 0:w]
  return [np.stack([(x * 4 + 20 * t) % 256, y * 5, np.full_like(x, 30 * t)], -1).astype(np.uint8)
          for t in range(n)]


def write_bag(path, kind, *, encoding="rgb8", compressed=False, camera_info=True,
              distortion=(0.0,) * 5, frames=None, extra_topic=False, chunk_bytes=None,
              k_in=K_IN):
  """A bag of `kind` ("ros1": .bag, "ros2": sqlite3 directory, "mcap": a bare .mcap file)
  with FRAMES images on TOPIC (stamps t seconds + 7 ns, frame_id 'cam_optical', log times
  0.1 s apart) and, with `camera_info`, CameraInfo on /cam/camera_info before each image."""
  ros1 = kind == "ros1"
  ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
  frames = _frames() if frames is None else frames
  if ros1:
    writer = Writer1(path)
    writer.chunk_threshold = chunk_bytes or writer.chunk_threshold
  else:
    target = Path(path)
    writer = Writer2(target.parent / (target.stem + "_dir") if kind == "mcap" else target,
                     version=9, storage_plugin=StoragePlugin.MCAP if kind == "mcap"
                     else StoragePlugin.SQLITE3)
  ser = ts.serialize_ros1 if ros1 else ts.serialize_cdr
  with writer:
    msgtype = rosmsg.COMPRESSED if compressed else rosmsg.IMAGE
    image_topic = TOPIC + "/compressed" if compressed else TOPIC
    img_conn = writer.add_connection(image_topic, msgtype, typestore=ts)
    info_conn = (writer.add_connection("/cam/camera_info", rosmsg.CAMERA_INFO, typestore=ts)
                 if camera_info else None)
    extra = writer.add_connection("/odom_note", "std_msgs/msg/String", typestore=ts) \
        if extra_topic else None
    for t, frame in enumerate(frames):
      hdr = rosmsg.header(ts, t * 10**9 + 7, "cam_optical")
      log_time = 10**9 + t * 10**8
      if info_conn is not None:
        fx, fy, cx, cy = k_in
        k = np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64)
        p = np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64)
        names = ("D", "K", "R", "P") if ros1 else ("d", "k", "r", "p")
        roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                           width=0, do_rectify=False)
        info = ts.types[rosmsg.CAMERA_INFO](
            header=hdr, height=frame.shape[0], width=frame.shape[1],
            distortion_model="plumb_bob", binning_x=0, binning_y=0, roi=roi,
            **dict(zip(names, (np.array(distortion, np.float64), k, np.eye(3).reshape(-1), p))))
        writer.write(info_conn, log_time - 1, ser(info, rosmsg.CAMERA_INFO))
      if compressed:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        msg = ts.types[rosmsg.COMPRESSED](header=hdr, format="png",
                                          data=np.frombuffer(buf.getvalue(), np.uint8))
      elif encoding == "bgr8":
        msg = rosmsg.image_msg(ts, hdr, frame[..., ::-1], "bgr8")
      elif encoding == "mono16":
        msg = rosmsg.image_msg(ts, hdr, frame[..., 0].astype("<u2") * 257, "mono16")
      else:
        msg = rosmsg.image_msg(ts, hdr, frame if encoding == "rgb8" else frame[..., :2], encoding)
      writer.write(img_conn, log_time, ser(msg, msgtype))
      if extra is not None:
        writer.write(extra, log_time + 1, ser(ts.types["std_msgs/msg/String"](data=f"n{t}"),
                                              "std_msgs/msg/String"))
  if kind == "mcap":
    src = target.parent / (target.stem + "_dir") / (target.stem + "_dir.mcap")
    os.replace(src, path)
  return frames


def read_log(path):
  """{topic: [(log_time, message)]} of a log, read by rosbags."""
  out = {}
  with AnyReader([Path(path)]) as reader:
    for conn, t, raw in reader.messages():
      out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
  return out


def _run(args, capsys):
  """predict.main; one frame per network call unless --batch is given (the shapes
  hydrajax.apply compiles for one image, so each compiles once)."""
  rc = predict.main(args + ["--no-progress"] + ([] if "--batch" in args else ["--batch", "1"]))
  return rc, capsys.readouterr()


@pytest.mark.parametrize("kind", ["ros1", "ros2", "mcap"])
def test_bag_gives_segm_depth_and_scaled_camera_info_per_frame(kind, weights_file, variables,
                                                               tmp_path, capsys):
  src = str(tmp_path / ("in.bag" if kind == "ros1" else "in" if kind == "ros2" else "in.mcap"))
  # 128x96 frames, shrunk to 64x48 by --max-side 64
  frames = write_bag(src, kind, frames=_frames(h=2 * H, w=2 * W), k_in=(120, 124, 63.5, 47.5))
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--out", str(out),
                  "--max-side", "64"], capsys)
  assert rc == 0, io_.err
  assert "camera: intrinsics fx=120 fy=124 cx=63.5 cy=47.5 at 128x96 (CameraInfo on " \
         "/cam/camera_info)" in io_.out
  log = read_log(out)
  assert sorted(log) == ["/hydrajax/camera_info", "/hydrajax/depth", "/hydrajax/segm",
                         "/hydrajax/segm_color"]
  for topic, msgs in log.items():
    assert [t for t, _ in msgs] == [10**9 + i * 10**8 for i in range(FRAMES)], topic
    assert [(m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) for _, m in msgs] \
        == [(i, 7, "cam_optical") for i in range(FRAMES)], topic
  depth = log["/hydrajax/depth"][1][1]
  assert (depth.encoding, depth.height, depth.width) == ("32FC1", H, W)
  want = hydrajax.apply(variables, np.asarray(Image.fromarray(frames[1]).resize(
      (W, H), Image.BILINEAR)))
  got = np.frombuffer(depth.data.tobytes(), "<f4").reshape(H, W)
  np.testing.assert_allclose(got, np.asarray(want["depth"]), rtol=1e-5, atol=1e-6)
  segm = log["/hydrajax/segm"][1][1]
  assert segm.encoding == "mono8"
  np.testing.assert_array_equal(np.asarray(segm.data).reshape(H, W),
                                np.asarray(want["segm"]).argmax(-1))
  assert log["/hydrajax/segm_color"][0][1].encoding == "rgb8"
  info = log["/hydrajax/camera_info"][0][1]
  assert (info.width, info.height) == (W, H)
  # half the size: focal lengths halved, the principal point in the half-pixel convention
  np.testing.assert_allclose(info.k, [60, 0, 31.5, 0, 62, 23.5, 0, 0, 1])
  np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3], info.k.reshape(3, 3))


def _fields(msg):
  """A decoded message as ROS 1 and ROS 2 share it: field names lower-cased (ROS 1's
  CameraInfo `K` is ROS 2's `k`), a Header without ROS 1's `seq`, arrays as lists."""
  if dataclasses.is_dataclass(msg):
    return {f.name.lower(): _fields(getattr(msg, f.name)) for f in dataclasses.fields(msg)
            if not (f.name == "seq" and msg.__msgtype__ == "std_msgs/msg/Header")}
  if isinstance(msg, (list, np.ndarray)):
    return [_fields(m) for m in msg]
  return msg


# every input kind into every output format, each kind and each format with a raw and a
# compressed image topic
COPY_CASES = [(kind, fmt, (i + j) % 2 == 0) for i, kind in enumerate(("ros1", "ros2", "mcap"))
              for j, fmt in enumerate(("mcap", "ros2", "ros1"))]
NAMES = {"ros1": "{}.bag", "ros2": "{}", "mcap": "{}.mcap"}


@pytest.mark.parametrize("kind,fmt,compressed", COPY_CASES)
def test_copy_input_copies_every_topic_of_every_bag_kind_to_every_format(
    kind, fmt, compressed, weights_file, tmp_path, capsys):
  """--copy-input: the image (Image or CompressedImage), CameraInfo and std_msgs/String
  topics of a ROS 1 bag, a ROS 2 sqlite3 bag or an MCAP file read back from OUT with the
  input's log times and fields, converted between ROS 1 and ROS 2 where they differ, each
  type with one definition in OUT (the copied CameraInfo's is the output one's)."""
  src = str(tmp_path / NAMES[kind].format("in"))
  write_bag(src, kind, compressed=compressed, extra_topic=True, frames=_frames(2))
  out = tmp_path / NAMES[fmt].format("out")
  topic = TOPIC + "/compressed" if compressed else TOPIC
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", topic,
                  "--out", str(out), "--out-format", fmt, "--copy-input"], capsys)
  assert rc == 0, io_.err
  assert "warning" not in io_.err
  want, log = read_log(src), read_log(out)
  assert sorted(want) == sorted([topic, "/cam/camera_info", "/odom_note"])
  for name, msgs in want.items():
    assert [(t, _fields(m)) for t, m in log[name]] == [(t, _fields(m)) for t, m in msgs], name
  assert len(log["/hydrajax/segm"]) == 2 and len(log["/hydrajax/depth"]) == 2
  assert log["/hydrajax/depth"][0][1].width == W  # below --max-side: the input's size
  with AnyReader([out]) as reader:
    assert len({c.msgdef.data for c in reader.connections
                if c.msgtype == rosmsg.CAMERA_INFO}) == 1
  if fmt == "ros2":
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dirs left


def write_raw_mcap(path, ts, ros_topics, other_channels, frame_records, frames=3):
  """An MCAP file written with `mcap`'s own Writer: `ros_topics` {topic: ROS 2 type} with
  their ros2msg schemas and CDR channels, `other_channels` {topic: (message encoding, schema
  (name, encoding, bytes) or None)}; per frame t, `frame_records(t, header, frame)` gives
  {topic: bytes}, logged 0.1 s apart in that order (stamps t seconds, frame_id cam_optical)."""
  from mcap.writer import Writer
  with open(path, "wb") as f:
    writer = Writer(f)
    writer.start(profile="ros2")
    channels = {}
    for name, msgtype in ros_topics.items():
      schema = writer.register_schema(msgtype, "ros2msg",
                                      ts.generate_msgdef(msgtype, ros_version=2)[0].encode())
      channels[name] = writer.register_channel(name, "cdr", schema)
    for name, (encoding, schema) in other_channels.items():
      channels[name] = writer.register_channel(
          name, encoding, writer.register_schema(*schema) if schema else 0)
    for t, frame in enumerate(_frames(frames)):
      records = frame_records(t, rosmsg.header(ts, t * 10**9, "cam_optical"), frame)
      for i, (name, data) in enumerate(records.items()):
        writer.add_message(channels[name], 10**9 + t * 10**8 + i, data, 10**9 + t * 10**8)
    writer.finish()


def test_copy_input_converts_a_bags_own_type_and_leaves_out_what_it_cannot_with_a_warning(
    weights_file, tmp_path, capsys):
  """An MCAP file into a ROS 1 bag: a type of the bag's own (not in ROS 1 Noetic) is copied
  with its definition under ROS 1's Header; a channel without schema (no definition of its
  type) and a String topic whose second message does not fit its definition are each named
  in one warning and left out (the String topic from that message on)."""
  from rosbags.typesys import get_types_from_msg
  ts = get_typestore(Stores.ROS2_HUMBLE)
  reading, string = "my_msgs/msg/Reading", "std_msgs/msg/String"
  ts.register(get_types_from_msg("std_msgs/Header header\nfloat64 value", reading))
  src = tmp_path / "in.mcap"

  def records(t, hdr, frame):
    note = ts.serialize_cdr(ts.types[string](data=f"n{t}"), string)
    return {TOPIC: ts.serialize_cdr(rosmsg.image_msg(ts, hdr, frame, "rgb8"), rosmsg.IMAGE),
            "/note": note if t != 1 else bytes(note[:4]) + b"\xff\x00\x00\x00n1",
            "/reading": ts.serialize_cdr(ts.types[reading](header=hdr, value=t / 2), reading),
            "/blob": b"\x00\x01\x00\x00\x07"}
  write_raw_mcap(src, ts, {TOPIC: rosmsg.IMAGE, "/note": string, "/reading": reading},
                 {"/blob": ("cdr", None)}, records)
  out = tmp_path / "out.bag"
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", TOPIC,
                  "--out", str(out), "--copy-input"], capsys)
  assert rc == 0, io_.err
  warnings = [line for line in io_.err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 2 and "Traceback" not in io_.err, io_.err
  assert "/blob" in warnings[0] and "__schemaless__" in warnings[0]
  assert "/note" in warnings[1] and f"{10**9 + 10**8 + 1} ns" in warnings[1]
  log = read_log(out)
  assert "/blob" not in log
  assert [m.data for _, m in log["/note"]] == ["n0"]
  with AnyReader([src]) as reader:
    want = [(t, _fields(reader.deserialize(raw, reading))) for _, t, raw in reader.messages(
        connections=[c for c in reader.connections if c.topic == "/reading"])]
  assert [(t, _fields(m)) for t, m in log["/reading"]] == want
  assert len(log[TOPIC]) == 3 and len(log["/hydrajax/depth"]) == 3


def test_copy_input_writes_ros1_tf_messages_as_ros2_tf2_msgs_tfmessage(weights_file, tmp_path,
                                                                       capsys):
  """A ROS 1 bag's /tf (tf/tfMessage, which ROS 2 lacks) copied into MCAP is on a
  tf2_msgs/msg/TFMessage channel (the type ROS 2 tools draw transforms from), its messages
  decoded by ROS 2 Humble's definition to the recorded transform."""
  from mcap.reader import make_reader
  from rosbags.typesys import get_types_from_msg
  ts = get_typestore(Stores.ROS1_NOETIC)
  tf1, tf2 = "tf/msg/tfMessage", "tf2_msgs/msg/TFMessage"
  ts.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", tf1))
  gm = "geometry_msgs/msg/"
  transform = ts.types[gm + "TransformStamped"](
      header=rosmsg.header(ts, 7, "odom"), child_frame_id="cam_optical",
      transform=ts.types[gm + "Transform"](
          translation=ts.types[gm + "Vector3"](x=1.5, y=-2.0, z=0.25),
          rotation=ts.types[gm + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
  src = tmp_path / "in.bag"
  with Writer1(src) as writer:
    tf_conn = writer.add_connection("/tf", tf1, typestore=ts)
    img_conn = writer.add_connection(TOPIC, rosmsg.IMAGE, typestore=ts)
    writer.write(tf_conn, 10**9 - 1, ts.serialize_ros1(ts.types[tf1](transforms=[transform]),
                                                       tf1))
    img = rosmsg.image_msg(ts, rosmsg.header(ts, 7, "cam_optical"), _frames(1)[0], "rgb8")
    writer.write(img_conn, 10**9, ts.serialize_ros1(img, rosmsg.IMAGE))
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", TOPIC,
                  "--out", str(out), "--copy-input"], capsys)
  assert rc == 0, io_.err
  assert "warning" not in io_.err
  humble = get_typestore(Stores.ROS2_HUMBLE)
  with open(out, "rb") as f:
    tf = [(schema.name, humble.deserialize_cdr(message.data, schema.name))
          for schema, channel, message in make_reader(f).iter_messages(topics=["/tf"])]
  assert [name for name, _ in tf] == [tf2]
  (got,) = tf[0][1].transforms
  assert (got.header.frame_id, got.child_frame_id) == ("odom", "cam_optical")
  v = got.transform.translation
  assert (v.x, v.y, v.z) == (1.5, -2.0, 0.25)

# A Foxglove log channel as JSON, and as protobuf (its schema: a FileDescriptorSet, here
# opaque bytes, never parsed since the channel is left out).
OTHER_CHANNELS = {"json": (b'{"message": "n%d"}', ("foxglove.Log", "jsonschema",
                                                    b'{"type": "object"}')),
                  "protobuf": (b"\x12\x02n%d", ("foxglove.Log", "protobuf", b"\x0a\x00"))}


@pytest.mark.parametrize("encoding", sorted(OTHER_CHANNELS))
def test_mcap_with_json_or_protobuf_channels_reads_its_ros_topics_and_names_the_other_one(
    weights_file, tmp_path, capsys, encoding):
  """An MCAP file with a JSON or protobuf channel beside its ROS 2 camera (as Foxglove's
  recorders write them): every frame is read, --copy-input leaves that topic out with one
  warning, and --topic on it is one error line listing the image topics."""
  ts = get_typestore(Stores.ROS2_HUMBLE)
  src = tmp_path / "in.mcap"

  def records(t, hdr, frame):
    info = ts.types[rosmsg.CAMERA_INFO](
        header=hdr, height=H, width=W, distortion_model="", d=np.zeros(0), k=np.eye(3).ravel(),
        r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
        roi=ts.types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    return {"/log": OTHER_CHANNELS[encoding][0] % t,
            "/cam/camera_info": ts.serialize_cdr(info, rosmsg.CAMERA_INFO),
            TOPIC: ts.serialize_cdr(rosmsg.image_msg(ts, hdr, frame, "rgb8"), rosmsg.IMAGE)}
  write_raw_mcap(src, ts, {TOPIC: rosmsg.IMAGE, "/cam/camera_info": rosmsg.CAMERA_INFO},
                 {"/log": (encoding, OTHER_CHANNELS[encoding][1])},
                 records)
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", TOPIC,
                  "--out", str(out), "--copy-input"], capsys)
  assert rc == 0, io_.err
  warnings = [line for line in io_.err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and f"/log ({encoding})" in warnings[0], io_.err
  assert "Traceback" not in io_.err
  log = read_log(out)
  assert "/log" not in log and len(log[TOPIC]) == 3 and len(log["/cam/camera_info"]) == 3
  assert [m.header.stamp.sec for _, m in log["/hydrajax/depth"]] == [0, 1, 2]
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", "/log",
                  "--out", str(tmp_path / "out2.mcap")], capsys)
  assert rc == 2
  assert_one_error_line(io_.err, src, f"topic /log is {encoding}, not a ROS image",
                        f"topics: {TOPIC}")
  assert not (tmp_path / "out2.mcap").exists()


def test_mcap_output_decodes_with_mcaps_own_ros2_decoder(weights_file, tmp_path, capsys):
  """Foxglove reads MCAP's ros2msg schemas: mcap-ros2-support decodes every output message."""
  decoder = pytest.importorskip("mcap_ros2.decoder")
  from mcap.reader import make_reader
  src = str(tmp_path / "in.bag")
  write_bag(src, "ros1", encoding="bgr8")
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--out", str(out),
                  "--points"], capsys)
  assert rc == 0, io_.err
  with open(out, "rb") as f:
    msgs = {}
    for _, channel, _, msg in make_reader(f, decoder_factories=[decoder.DecoderFactory()]) \
        .iter_decoded_messages():
      msgs.setdefault(channel.topic, []).append(msg)
  assert {t: len(m) for t, m in msgs.items()} == {
      f"/hydrajax/{n}": FRAMES for n in ("segm", "segm_color", "depth", "camera_info", "points")}
  cloud = msgs["/hydrajax/points"][0]
  assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
      ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("label", 16, 2)]
  assert cloud.point_step == 20 and cloud.height == 1 and cloud.width == H * W
  assert cloud.header.frame_id == "cam_optical"


def test_points_are_the_depth_back_projected_with_camera_info_k(weights_file, variables,
                                                                tmp_path, capsys):
  src = str(tmp_path / "in.db3")
  frames = write_bag(str(tmp_path / "in2"), "ros2")
  os.replace(tmp_path / "in2" / "in2.db3", src)
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--out", str(out),
                  "--points", "--every", "2"], capsys)
  assert rc == 0, io_.err
  log = read_log(out)
  assert len(log["/hydrajax/points"]) == 2  # frames 0 and 2
  cloud = log["/hydrajax/points"][1][1]
  data = np.frombuffer(cloud.data.tobytes(), np.dtype(
      {"names": ["x", "y", "z", "rgb", "label"], "formats": ["<f4"] * 4 + ["u1"],
       "offsets": [0, 4, 8, 12, 16], "itemsize": 20}))
  out_ = hydrajax.apply(variables, frames[2])
  depth, labels = np.asarray(out_["depth"]), np.asarray(out_["segm"]).argmax(-1)
  v, u = np.mgrid[0:H, 0:W]
  fx, fy, cx, cy = K_IN
  np.testing.assert_allclose(data["z"], depth.reshape(-1), rtol=1e-5)
  np.testing.assert_allclose(data["x"], ((u - cx) * depth / fx).reshape(-1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(data["y"], ((v - cy) * depth / fy).reshape(-1), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(data["label"], labels.reshape(-1))
  rgb = data["rgb"].view(np.uint32)
  np.testing.assert_array_equal(np.stack([rgb >> 16, (rgb >> 8) & 255, rgb & 255], -1),
                                frames[2].reshape(-1, 3))


@pytest.mark.parametrize("encoding", ["bgr8", "mono16"])
def test_raw_encodings_read_as_rgb(encoding):
  ts = get_typestore(Stores.ROS2_HUMBLE)
  frame = _frames(1)[0]
  hdr = rosmsg.header(ts, 0, "c")
  if encoding == "bgr8":
    msg, want = rosmsg.image_msg(ts, hdr, frame[..., ::-1], "bgr8"), frame
  else:
    msg = rosmsg.image_msg(ts, hdr, frame[..., 0].astype("<u2") * 257, "mono16")
    want = np.repeat(frame[..., :1], 3, -1)
  np.testing.assert_array_equal(rosmsg.to_rgb(msg, TOPIC), want)


def test_missing_topic_lists_the_bags_image_topics(weights_file, tmp_path, capsys):
  src = str(tmp_path / "in.bag")
  write_bag(src, "ros1")
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", "/front/image",
                  "--out", str(out)], capsys)
  assert rc == 2
  assert_one_error_line(io_.err, src, "/front/image", "its image topics: /cam/image_raw")
  assert not out.exists()


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "yuv422", "32FC1"])
def test_unsupported_encoding_is_named_with_the_topic(encoding, weights_file, tmp_path, capsys):
  src = str(tmp_path / "in.mcap")
  frames = [np.zeros((H, W, 4 if encoding == "32FC1" else 2), np.uint8)]
  write_bag(src, "mcap", encoding=encoding, frames=frames)
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC,
                  "--out", str(tmp_path / "out.mcap")], capsys)
  assert rc == 2
  assert_one_error_line(io_.err, TOPIC, repr(encoding))
  assert sorted(os.listdir(tmp_path)) == ["in.mcap", "in_dir"]


def test_without_camera_info_segm_and_depth_are_written_and_points_refused(weights_file,
                                                                           tmp_path, capsys):
  src = str(tmp_path / "in.bag")
  write_bag(src, "ros1", camera_info=False)
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--out", str(out)],
                 capsys)
  assert rc == 0, io_.err
  assert sorted(read_log(out)) == ["/hydrajax/depth", "/hydrajax/segm", "/hydrajax/segm_color"]
  out2 = tmp_path / "out2.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--out", str(out2),
                  "--points"], capsys)
  assert rc == 2
  assert_one_error_line(io_.err, "--points needs the camera", src, "/cam/camera_info",
                        "--intrinsics", "--fov")
  assert not out2.exists()


def test_explicit_fov_beats_camera_info(weights_file, tmp_path, capsys):
  src = str(tmp_path / "in.bag")
  write_bag(src, "ros1")
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--out", str(out),
                  "--fov", "90"], capsys)
  assert rc == 0, io_.err
  assert "camera: intrinsics fx=32 fy=32 cx=31.5 cy=23.5 at 64x48 (--fov 90)" in io_.out
  np.testing.assert_allclose(read_log(out)["/hydrajax/camera_info"][0][1].k[0], 32.0)


def test_distortion_is_named_without_undistort_and_removed_with_it(weights_file, tmp_path,
                                                                  capsys):
  src = str(tmp_path / "in.bag")
  write_bag(src, "ros1", distortion=(-0.2, 0.05, 0.0, 0.0, 0.0))
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC,
                  "--out", str(tmp_path / "a.mcap")], capsys)
  assert rc == 0 and "has plumb_bob distortion" in io_.err
  rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC,
                  "--out", str(tmp_path / "b.mcap"), "--undistort"], capsys)
  assert rc == 0 and "distortion" not in io_.err
  info = read_log(tmp_path / "b.mcap")["/hydrajax/camera_info"][0][1]
  assert not np.asarray(info.d).any()


def test_undistort_map_is_the_plumb_bob_model():
  """A distorted image of a point lands, after undistortion, where the pinhole K puts it."""
  from hydrajax.inference import points as points_lib
  k = points_lib.Intrinsics(60.0, 60.0, 31.5, 23.5, W, H)
  d = np.array([-0.3, 0.1, 0.01, -0.01, 0.0])
  x, y = 0.3, -0.2  # normalized coordinates of the point
  r2 = x * x + y * y
  radial = 1 - 0.3 * r2 + 0.1 * r2 * r2
  xd = x * radial + 2 * 0.01 * x * y - 0.01 * (r2 + 2 * x * x)
  yd = y * radial + 0.01 * (r2 + 2 * y * y) + 2 * -0.01 * x * y
  image = np.zeros((H, W, 1), np.uint8)
  image[int(round(yd * 60 + 23.5)), int(round(xd * 60 + 31.5))] = 255
  out = rosmsg.Undistorter(k, d)(image)[..., 0]
  row, col = np.unravel_index(out.argmax(), out.shape)
  assert abs(row - (y * 60 + 23.5)) <= 1 and abs(col - (x * 60 + 31.5)) <= 1


def test_damaged_bag_keeps_the_frames_before_the_damage(weights_file, tmp_path, capsys):
  """A ROS 1 bag whose 21st message record is damaged: the 20 frames before it are in a valid
  OUT, the one error line names the bag and the last good message time, exit status 1."""
  src = tmp_path / "in.bag"
  write_bag(str(src), "ros1", frames=_frames(40), camera_info=False, chunk_bytes=30000)
  data = bytearray(src.read_bytes())
  records = [i for i in range(len(data)) if data.startswith(b"op=\x02", i)]  # message data
  data[records[20] - 8:records[20] + 4] = b"\xff" * 12
  src.write_bytes(bytes(data))
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", TOPIC,
                  "--out", str(out)], capsys)
  assert rc == 1, io_.err
  assert_one_error_line(io_.err, src, "after the message at bag time 1.900 s",
                        "the 20 frames before it are in")
  assert len(read_log(out)["/hydrajax/depth"]) == 20


def test_unreadable_bag_writes_nothing(weights_file, tmp_path, capsys):
  src = tmp_path / "in.bag"
  write_bag(str(src), "ros1")
  src.write_bytes(src.read_bytes()[:3000])
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", TOPIC,
                  "--out", str(out)], capsys)
  assert rc == 2
  assert_one_error_line(io_.err, str(src), "not a readable bag")
  assert not out.exists()


FOXGLOVE_TOPICS = {f"/hydrajax/{n}" for n in ("image", "segm", "segm_color", "depth",
                                                "camera_info", "points")}


def _foxglove_client(port, stop, want=(), until=0, subscribed=None):
  """A Foxglove WebSocket client on 127.0.0.1:`port` (connecting once the server is up) that
  subscribes once to each channel as it is advertised (no retry: a refused subscription is
  a status message, returned), until the server closes, `stop` is set, every topic of `want`
  has a message logged at `until` ns or later, or 60 s; `subscribed` (an Event) is set once
  it has sent its subscription to every topic of `want`. Returns ({topic: [(log time ns,
  arrival time.monotonic(), CDR payload)]}, {topic: the channel as advertised}, [the
  message of every status the server sent])."""
  import json
  import struct
  from websockets.exceptions import ConnectionClosed
  from websockets.sync.client import connect
  deadline, got, channels, statuses = time.monotonic() + 60, {}, {}, []

  def done():
    return want and all(got.get(topic, [(-1,)])[-1][0] >= until for topic in want)
  while True:
    try:
      ws = connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"], open_timeout=5,
                   close_timeout=1, max_size=None)
      break
    except OSError:
      if stop.is_set() or time.monotonic() > deadline:
        return got, {}, statuses
      time.sleep(0.01)
  with ws:
    while time.monotonic() < deadline and not done():
      try:
        message = ws.recv(timeout=0.1)
      except TimeoutError:
        if stop.is_set():
          break
        continue
      except ConnectionClosed:
        break
      now = time.monotonic()
      if isinstance(message, str):
        msg = json.loads(message)
        if msg["op"] == "advertise":
          channels.update({c["id"]: c for c in msg["channels"]})
          ws.send(json.dumps({"op": "subscribe", "subscriptions": [
              {"id": c["id"], "channelId": c["id"]} for c in msg["channels"]]}))
          if subscribed is not None and set(want) <= {c["topic"] for c in channels.values()}:
            subscribed.set()
        elif msg["op"] == "status":
          statuses.append(msg["message"])
      elif message[0] == 0x01:  # message data: subscription id, log time, payload
        sub, log_time = struct.unpack_from("<IQ", message, 1)
        got.setdefault(channels[sub]["topic"], []).append((log_time, now, bytes(message[13:])))
  return got, {c["topic"]: c for c in channels.values()}, statuses


def test_foxglove_bag_replay_sends_every_topic_at_the_bags_pace_up_to_the_last_frame(
    weights_file, tmp_path, capsys):
  """hydrajax-predict --bag IN --foxglove --port P: a client on 127.0.0.1 receives every
  topic stamped with the bag's log times, up to the bag's last frame (the command stops its
  server only once what it logged has been sent), and the frames arrive no faster than the
  bag's 0.1 s spacing (replayed at bag speed, not as fast as the network runs: one frame's
  network call takes a few tens of ms here)."""
  import socket
  import threading
  src = str(tmp_path / "in.mcap")
  write_bag(src, "mcap", frames=_frames(6))  # log times 1.0, 1.1, ... 1.5 s
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  stop, result = threading.Event(), []
  bag_times = [10**9 + t * 10**8 for t in range(6)]
  client = threading.Thread(target=lambda: result.append(
      _foxglove_client(port, stop, want=FOXGLOVE_TOPICS, until=bag_times[-1])))
  client.start()
  try:
    rc, io_ = _run(["--weights", weights_file, "--bag", src, "--topic", TOPIC, "--foxglove",
                    "--port", str(port), "--points"], capsys)
  finally:
    stop.set()
    client.join(30)
  assert rc == 0, io_.err
  assert f"foxglove: serving on ws://127.0.0.1:{port}" in io_.out
  (got, _, statuses), = result
  assert statuses == []
  assert set(got) == FOXGLOVE_TOPICS
  for topic, messages in got.items():
    stamps = [t for t, _, _ in messages]
    # consecutive frames to the bag's last (the client may connect after the first frames)
    assert len(stamps) >= 3 and stamps == bag_times[-len(stamps):], (topic, stamps)
    (first, first_at, _), (last, last_at, _) = messages[0], messages[-1]
    # as far apart as in the bag, less 0.15 s for a first one that reached the client late
    assert last_at - first_at >= (last - first) / 1e9 - 0.15, (topic, messages)


def test_foxglove_camera_serves_every_topic_to_a_client_subscribed_before_the_first_frame(
    weights_file, monkeypatch, capsys):
  """hydrajax-predict --camera N --foxglove --port P --fov 90 --points: a client that connects
  and subscribes to every topic before the camera (a stand-in for /dev/videoN) gives its
  first frame is served every topic over Foxglove's WebSocket protocol on 127.0.0.1, its
  subscriptions accepted once, CDR-decodable (the camera's own frame on /hydrajax/image), and
  the command ends with the camera, status 0. The stand-in gives no frame until then: with
  channels made only at the first frame, nothing would be advertised and no frame given."""
  import socket
  import threading
  from hydrajax.inference import camera
  frame, stop, subscribed, opened = _frames(1)[0], threading.Event(), threading.Event(), []

  def fake_camera(index):
    opened.append(index)

    def frames():  # from the client's subscription until the client has every topic
      if not subscribed.wait(10):
        return
      deadline = time.monotonic() + 60
      while not stop.is_set() and time.monotonic() < deadline:
        yield frame
    return frames(), 30.0
  monkeypatch.setattr(camera, "open_camera", fake_camera)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  result = []

  def client():
    try:
      result.append(_foxglove_client(port, threading.Event(), want=FOXGLOVE_TOPICS,
                                     subscribed=subscribed))
    finally:
      stop.set()
  thread = threading.Thread(target=client)
  thread.start()
  try:
    rc, io_ = _run(["--weights", weights_file, "--camera", "3", "--foxglove", "--port",
                    str(port), "--fov", "90", "--points"], capsys)
  finally:
    stop.set()
    thread.join(30)
  assert rc == 0, io_.err
  assert opened == [3]
  assert subscribed.is_set()
  (got, channels, statuses), = result
  assert statuses == []
  assert set(channels) == set(got) == FOXGLOVE_TOPICS
  assert {c["schemaEncoding"] for c in channels.values()} == {"ros2msg"}
  ts = get_typestore(Stores.ROS2_HUMBLE)
  image = ts.deserialize_cdr(got["/hydrajax/image"][0][2], rosmsg.IMAGE)
  assert (image.encoding, image.height, image.width) == ("rgb8", H, W)
  np.testing.assert_array_equal(np.asarray(image.data).reshape(H, W, 3), frame)
  depth = ts.deserialize_cdr(got["/hydrajax/depth"][0][2], rosmsg.IMAGE)
  assert (depth.encoding, depth.height, depth.width) == ("32FC1", H, W)
  cloud = ts.deserialize_cdr(got["/hydrajax/points"][0][2], rosmsg.POINTS)
  assert cloud.width == H * W and cloud.header.frame_id == "camera"


def test_foxglove_sink_close_sends_what_was_logged_to_a_subscribed_client():
  """Stopping foxglove-sdk's server drops the messages still queued for a client: close()
  first lets a subscribed client receive every message logged, here 12 MB logged at once
  just before it, the last included."""
  import threading
  from hydrajax.inference import roslog
  sink = roslog.FoxgloveSink(port=0, topics={"/big": rosmsg.IMAGE})
  stop, subscribed, result = threading.Event(), threading.Event(), []
  client = threading.Thread(target=lambda: result.append(
      _foxglove_client(sink.port, stop, want={"/big"}, until=4, subscribed=subscribed)))
  client.start()
  try:
    assert subscribed.wait(10)
    deadline = time.monotonic() + 10
    while not sink.has_subscribers() and time.monotonic() < deadline:
      time.sleep(0.005)
    frame = np.zeros((1000, 1000, 3), np.uint8)
    for t in range(1, 5):
      sink.write("/big", rosmsg.IMAGE, t, rosmsg.image_msg(
          sink.ts, rosmsg.header(sink.ts, t, "camera"), frame, "rgb8"))
  finally:
    sink.close()
    stop.set()
    client.join(30)
  (got, _, statuses), = result
  assert statuses == []
  assert [t for t, _, _ in got["/big"]] == [1, 2, 3, 4]


def test_foxglove_needs_a_camera_or_a_bag(weights_file, capsys):
  rc, io_ = _run(["--weights", weights_file, "--foxglove"], capsys)
  assert rc == 2
  assert_one_error_line(io_.err, "--foxglove needs --camera N or --bag IN")
