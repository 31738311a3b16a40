"""hydrajax-predict --bag on bags whose recorder was killed: a ROS 1 bag left unindexed and cut
mid-chunk (`X.bag.active`), an MCAP file without summary or footer, a ROS 2 sqlite3 directory
without metadata.yaml, and a ROS 2 sqlite3 bag whose .db3 file is itself cut or damaged. Built
here with rosbags and mcap, cut, run through the tool, and the output read back."""
import os
import struct

import pytest

from tests.helpers.cli import assert_one_error_line
from tests.test_bag import TOPIC, _fields, _frames, _run, read_log, write_bag

pytest.importorskip("rosbags")
pytest.importorskip("mcap")

N = 6  # frames written before the cut


def _stamps(log):
  return [(t, m.header.stamp.sec, m.header.stamp.nanosec) for t, m in log["/hydrajax/depth"]]


def _want(k):
  """Log times and header stamps of the first k frames of write_bag."""
  return [(10**9 + i * 10**8, i, 7) for i in range(k)]


def _cut_in_frame(data, frames, k):
  """`data` up to the middle of frame k's pixels (stored verbatim: chunks uncompressed)."""
  at = data.index(frames[k].tobytes()[:256])
  return data[:at + 128]


def _unindex_ros1(data):
  """A ROS 1 bag as a killed `rosbag record` leaves it: index_pos 0 in the bag header."""
  data = bytearray(data)
  i = data.index(b"index_pos=") + len(b"index_pos=")
  data[i:i + 8] = bytes(8)
  return data


def _ros1_chunks(data):
  """Offsets of the chunk records' headers (their length field)."""
  return [i - 4 for i in range(len(data)) if data.startswith(b"op=\x05", i)]


def _run_bag(src, weights_file, tmp_path, capsys, *extra):
  out = tmp_path / "out.mcap"
  rc, io_ = _run(["--weights", weights_file, "--bag", str(src), "--topic", TOPIC,
                  "--out", str(out), *extra], capsys)
  return rc, io_, out


def _assert_kept(src, k, why, weights_file, tmp_path, capsys):
  """The tool on `src`, cut in frame k: frames 0..k-1 in OUT, exit 1, one error line naming
  the bag, `why` and frame k-1's log time."""
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys)
  assert rc == 1, io_.err
  last = 10**9 + (k - 1) * 10**8
  assert_one_error_line(io_.err, src, "cut short", why, f"after the message at bag time "
                        f"{(k - 1) / 10:.3f} s ({last} ns)", f"the {k} frames before it are in")
  assert _stamps(read_log(out)) == _want(k)


@pytest.mark.parametrize("unterminated", [False, True], ids=["cut", "unterminated_chunk"])
def test_unindexed_ros1_bag_cut_mid_message_keeps_the_complete_frames(
    unterminated, weights_file, tmp_path, capsys):
  """Frames 0-3 complete, frame 4 cut in its pixels, no index records; with
  `unterminated` the last chunk's sizes are still 0, as rosbag record writes them first."""
  full = tmp_path / "full.bag"
  frames = write_bag(str(full), "ros1", frames=_frames(N), camera_info=False,
                     chunk_bytes=20000)
  data = _cut_in_frame(_unindex_ros1(full.read_bytes()), frames, 4)
  if unterminated:
    last = _ros1_chunks(data)[-1]
    header_len = struct.unpack_from("<I", data, last)[0]
    size_at = data.index(b"size=", last) + len(b"size=")
    data[size_at:size_at + 4] = bytes(4)
    data[last + 4 + header_len:last + 8 + header_len] = bytes(4)  # the data length
  src = tmp_path / "in.bag.active"
  src.write_bytes(bytes(data))
  _assert_kept(src, 4, "not indexed", weights_file, tmp_path, capsys)


def test_unindexed_but_complete_ros1_bag_gives_every_frame_and_says_so(weights_file,
                                                                       tmp_path, capsys):
  src = tmp_path / "in.bag.active"
  write_bag(str(tmp_path / "full.bag"), "ros1", frames=_frames(3))
  src.write_bytes(bytes(_unindex_ros1((tmp_path / "full.bag").read_bytes())))
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys)
  assert rc == 1, io_.err
  assert_one_error_line(io_.err, src, "not indexed", "bag time 0.200 s",
                        "the 3 frames before it are in")
  log = read_log(out)
  assert _stamps(log) == _want(3)
  assert len(log["/hydrajax/camera_info"]) == 3  # the CameraInfo was found by the scan too


def test_unindexed_ros1_bag_with_copy_input_copies_its_topics_into_mcap(weights_file,
                                                                       tmp_path, capsys):
  """The scan's raw ROS 1 messages (record data, without the record header) converted to
  CDR: read back from the MCAP file with the input's log times and fields."""
  full = tmp_path / "full.bag"
  write_bag(str(full), "ros1", frames=_frames(2), extra_topic=True)
  src = tmp_path / "in.bag.active"
  src.write_bytes(bytes(_unindex_ros1(full.read_bytes())))
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys, "--copy-input")
  assert rc == 1 and "not indexed" in io_.err and "warning" not in io_.err, io_.err
  log = read_log(out)
  for name, msgs in read_log(full).items():
    assert [(t, _fields(m)) for t, m in log[name]] == [(t, _fields(m)) for t, m in msgs], name


@pytest.mark.parametrize("layout", ["file", "ros2_dir"])
def test_mcap_without_summary_cut_mid_message_keeps_the_complete_frames(layout, weights_file,
                                                                       tmp_path, capsys):
  """An MCAP file as a killed ros2 bag record leaves it: chunks, no summary or footer, the
  last chunk cut (one message per chunk, so frames 0-2 are whole); bare, or in its bag
  directory without metadata.yaml."""
  from mcap.reader import make_reader
  from mcap.writer import CompressionType, Writer
  full = tmp_path / "full.mcap"
  frames = write_bag(str(full), "mcap", frames=_frames(N), camera_info=False)
  rechunked = tmp_path / "rechunked.mcap"
  with open(full, "rb") as f, open(rechunked, "wb") as o:
    reader = make_reader(f)
    writer = Writer(o, chunk_size=1024, compression=CompressionType.NONE)
    writer.start(profile="ros2", library="test")
    summary = reader.get_summary()
    schemas = {s.id: writer.register_schema(s.name, s.encoding, s.data)
               for s in summary.schemas.values()}
    channels = {c.id: writer.register_channel(c.topic, c.message_encoding,
                                              schemas[c.schema_id], c.metadata)
                for c in summary.channels.values()}
    for _, channel, msg in reader.iter_messages():
      writer.add_message(channels[channel.id], msg.log_time, msg.data, msg.publish_time)
    writer.finish()
  src = tmp_path / "in.mcap" if layout == "file" else tmp_path / "rosbag2_run"
  if layout == "ros2_dir":
    src.mkdir()
  (src / "rosbag2_run_0.mcap" if layout == "ros2_dir" else src).write_bytes(
      _cut_in_frame(rechunked.read_bytes(), frames, 3))
  _assert_kept(src, 3, "no summary or footer", weights_file, tmp_path, capsys)


def test_sqlite3_bag_without_metadata_yaml_is_read_whole(weights_file, tmp_path, capsys):
  src = tmp_path / "in"
  write_bag(str(src), "ros2", frames=_frames(3))
  os.remove(src / "metadata.yaml")
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys)
  assert rc == 0, io_.err
  assert _stamps(read_log(out)) == _want(3)


def test_bag_cut_before_its_first_message_writes_nothing(weights_file, tmp_path, capsys):
  full = tmp_path / "full.bag"
  frames = write_bag(str(full), "ros1", frames=_frames(2), camera_info=False)
  src = tmp_path / "in.bag.active"
  src.write_bytes(bytes(_cut_in_frame(_unindex_ros1(full.read_bytes()), frames, 0)))
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys)
  assert rc == 2
  assert_one_error_line(io_.err, src, "not a readable bag", "no complete message")
  assert not out.exists()


@pytest.mark.parametrize("field", ["header", "data"])
def test_hostile_record_size_in_an_unindexed_bag_stops_the_scan_there(field, tmp_path):
  """A message record whose header or data length claims ~4 GiB: the scan stops before it
  (nothing of that size is read or allocated), the messages before it are read."""
  from hydrajax.inference import bagscan
  full = tmp_path / "full.bag"
  frames = write_bag(str(full), "ros1", frames=_frames(3), camera_info=False,
                     chunk_bytes=10**6)
  data = _unindex_ros1(full.read_bytes())
  # frame 2's record: header length, header, data length, then the serialized Image, whose
  # pixels follow 52 bytes of header, size and encoding fields
  data_len_at = data.index(frames[2].tobytes()[:256]) - 52 - 4
  header_len_at = next(p for p in range(data_len_at - 4, 0, -1)
                       if struct.unpack_from("<I", data, p)[0] == data_len_at - p - 4
                       and b"op=\x02" in data[p:data_len_at])
  at = header_len_at if field == "header" else data_len_at
  data[at:at + 4] = struct.pack("<I", 0xFFFFFFF0)
  src = tmp_path / "in.bag"
  src.write_bytes(bytes(data))
  reader = bagscan.open_scanned(str(src))
  got = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()]
  assert [bytes(m.data) for m in got] == [f.tobytes() for f in frames[:2]]
  assert reader.cut.startswith("cut short (not indexed; its last record is incomplete")


@pytest.mark.parametrize("damage,k", [("cut", 4), ("page", 5)])
def test_damaged_sqlite3_bag_keeps_the_frames_before_the_damage(damage, k, weights_file,
                                                                 tmp_path, capsys):
  """A ROS 2 sqlite3 bag of 8 frames whose .db3 file (26 pages of 4 KiB, each frame's row
  spilling over two or three) rosbags cannot open, read row by row up to the damage. "cut":
  cut after page 19 (75% of it); sqlite takes a file shorter than the page count in its
  header as malformed, and read with that check off, frames 0-3 are whole and frame 4's data
  runs past the cut. "page": page 24, the b-tree leaf holding frame 5's row, overwritten
  with 0xA5; frames 0-4 are read, frame 5's row is malformed."""
  src = tmp_path / "in"
  write_bag(str(src), "ros2", frames=_frames(8), camera_info=False)
  db3 = src / "in.db3"
  data = bytearray(db3.read_bytes())
  assert len(data) == 26 * 4096
  if damage == "cut":
    del data[19 * 4096:]
  else:
    data[23 * 4096:24 * 4096] = b"\xa5" * 4096
  db3.write_bytes(bytes(data))
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys)
  assert rc == 1, io_.err
  assert_one_error_line(io_.err, src, "in.db3 cut short or damaged", "malformed",
                        f"after the message at bag time {(k - 1) / 10:.3f} s "
                        f"({10**9 + (k - 1) * 10**8} ns)", f"the {k} frames before it are in")
  assert _stamps(read_log(out)) == _want(k)


def test_sqlite3_bag_with_unreadable_topics_table_writes_nothing(weights_file, tmp_path,
                                                                 capsys):
  """Page 4, the topics table's only page, overwritten with 0xA5: no connection is known."""
  src = tmp_path / "in"
  write_bag(str(src), "ros2", frames=_frames(2), camera_info=False)
  db3 = src / "in.db3"
  data = bytearray(db3.read_bytes())
  data[3 * 4096:4 * 4096] = b"\xa5" * 4096
  db3.write_bytes(bytes(data))
  rc, io_, out = _run_bag(src, weights_file, tmp_path, capsys)
  assert rc == 2
  assert_one_error_line(io_.err, src, "not a readable bag", "malformed")
  assert not out.exists()
