"""Metric logs: JSON lines (`metrics.jsonl`) and TensorBoard event files (via tensorboardX,
which writes TensorBoard's format without TensorFlow)."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and to a TensorBoard event file in `workdir`.

  Every `write` is flushed, so a killed run keeps what it logged. Only the host with
  `enabled=True` (process 0) writes.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.enabled = enabled
    self.workdir = os.fspath(workdir)
    self._jsonl = self._events = None
    if not enabled:
      return
    from tensorboardX.event_file_writer import EventsWriter

    os.makedirs(self.workdir, exist_ok=True)
    self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a")
    # tensorboardX's synchronous writer (SummaryWriter queues events for a thread, so a
    # killed run would lose them). Its file name has the time in seconds and the host: the
    # suffix keeps a restart within the same second from overwriting the file ("wb").
    self._events = EventsWriter(os.path.join(self.workdir, "events"),
                                filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Log {name: value} at `step`; non-finite values are kept in JSON as null."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step), **{k: (v if math.isfinite(v) else None)
                                    for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2

    wall_time = time.time()
    for tag, value in values.items():
      self._events.write_event(event_pb2.Event(wall_time=wall_time, step=int(step),
                                               summary=summary.scalar(tag, value)))
    self._events.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._events.close()
    self._jsonl = self._events = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
