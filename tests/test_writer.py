"""Metric logs, read back with TensorBoard's own event reader (the `tensorboard` package)."""
import glob
import json
import math
import os

from tensorboard.backend.event_processing import event_accumulator

from hydrajax.train import writer


def _scalars(workdir):
  acc = event_accumulator.EventAccumulator(str(workdir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_reads_scalars_at_their_steps_and_jsonl_has_them(tmp_path):
  with writer.MetricWriter(tmp_path) as w:
    w.write(1, {"train/loss": 2.5, "val/miou": 0.25})
    w.write(7, {"train/loss": float("nan")})
    w.write(2 ** 40, {"x": -1.0})
  assert len(glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))) == 1
  scalars = _scalars(tmp_path)
  assert set(scalars) == {"train/loss", "val/miou", "x"}
  (step1, loss1), (step7, loss7) = scalars["train/loss"]
  assert (step1, loss1, step7) == (1, 2.5, 7) and math.isnan(loss7)
  assert scalars["val/miou"] == [(1, 0.25)]
  assert scalars["x"] == [(2 ** 40, -1.0)]
  lines = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert lines[0] == {"step": 1, "train/loss": 2.5, "val/miou": 0.25}
  assert lines[1] == {"step": 7, "train/loss": None}


def test_every_write_is_readable_before_close(tmp_path):
  w = writer.MetricWriter(tmp_path)
  w.write(3, {"a": 1.5})
  assert _scalars(tmp_path) == {"a": [(3, 1.5)]}  # flushed: a killed run keeps it
  w.close()


def test_disabled_writer_writes_nothing(tmp_path):
  with writer.MetricWriter(tmp_path / "off", enabled=False) as w:
    w.write(1, {"a": 1.0})
  assert not os.path.exists(tmp_path / "off")


def test_a_restarted_writer_keeps_the_earlier_file(tmp_path):
  with writer.MetricWriter(tmp_path) as w:
    w.write(1, {"a": 1.0})
  with writer.MetricWriter(tmp_path) as w:  # a resumed run, very likely in the same second
    w.write(2, {"a": 2.0})
  assert _scalars(tmp_path) == {"a": [(1, 1.0), (2, 2.0)]}
  assert len(open(os.path.join(tmp_path, "metrics.jsonl")).readlines()) == 2
