"""TensorBoard event files written without TensorFlow, read back record by record."""
import json
import math
import os
import struct

import pytest

from hydrajax import writer


def test_crc32c_matches_the_standard_check_value():
  assert writer.crc32c(b"123456789") == 0xE3069283
  assert writer.crc32c(b"") == 0


def test_event_file_round_trips_scalars_steps_and_checksums(tmp_path):
  with writer.MetricWriter(tmp_path) as w:
    w.write(1, {"train/loss": 2.5, "val/miou": 0.25})
    w.write(7, {"train/loss": float("nan")})
    w.write(2 ** 40, {"x": -1.0})
    path = w.events_path
  events = [writer.decode_event(p) for p in writer.read_tfrecords(path)]
  assert events[0]["file_version"] == "brain.Event:2"
  assert [e["step"] for e in events[1:]] == [1, 7, 2 ** 40]
  assert events[1]["scalars"] == {"train/loss": 2.5, "val/miou": 0.25}
  assert math.isnan(events[2]["scalars"]["train/loss"])
  assert events[3]["scalars"] == {"x": -1.0}
  assert all(e["wall_time"] > 1e9 for e in events)
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert lines[0] == {"step": 1, "train/loss": 2.5, "val/miou": 0.25}
  assert lines[1] == {"step": 7, "train/loss": None}


def test_corrupted_record_is_reported_with_its_offset(tmp_path):
  path = tmp_path / "events"
  record = writer.tfrecord(writer.encode_event(1.0, 3, {"a": 1.0}))
  path.write_bytes(record + record[:-1] + bytes([record[-1] ^ 1]))
  with pytest.raises(ValueError, match=f"byte {len(record)}"):
    list(writer.read_tfrecords(path))


def test_negative_steps_encode_as_int64():
  payload = writer.encode_event(0.5, -3, {"v": 4.0})
  event = writer.decode_event(payload)
  assert event["step"] == -3 and event["scalars"] == {"v": 4.0}
  assert struct.unpack("<d", payload[1:9])[0] == 0.5
