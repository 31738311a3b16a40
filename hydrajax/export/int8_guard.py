"""The accuracy guard of the int8 exports (ONNX QDQ and OpenVINO NNCF): how far the int8
graph's outputs are from the float graph's on the calibration frames, and which layers to keep
float when they are too far.

Agreement, per export, over all pixels of all calibration frames:
  labels: the fraction of pixels whose argmax of "segm" is the float graph's;
  depth:  the RMS of (int8 depth - float depth) over the float graph's mean depth.
A graph passes when labels >= `Bounds.min_labels` and depth <= `Bounds.max_depth` (a task the
model lacks is not checked). How far quantization moves the outputs depends on the weights:
a briefly trained model (wide, unsettled activation ranges) loses far more than a converged
one, so the check runs on every export, whatever the model.

When the int8 graph fails, a per-layer sensitivity pass removes one activation quantizer at a
time (the layer whose output it quantizes then feeds its consumers in float), measures each
such graph on the first SENSITIVITY_FRAMES frames, and keeps the layers float in the order of
the agreement each restores, each kept only if the graph measured on all frames then agrees
better, until the graph passes, at most `max_float` of them (of twice as many tried). If that is not enough the export is refused (Int8AccuracyError), naming
the costliest layers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bounds:
  """min_labels: the least fraction of pixels whose label is the float graph's;
  max_depth: the largest RMS depth difference to the float graph, as a fraction of the float
  graph's mean depth."""
  min_labels: float = 0.97
  max_depth: float = 0.05

  def __post_init__(self):
    if not 0.0 <= self.min_labels <= 1.0:
      raise ValueError(f"the least label agreement must be in [0, 1], got {self.min_labels}")
    if not self.max_depth >= 0.0:
      raise ValueError(f"the largest depth difference must be >= 0, got {self.max_depth}")


@dataclasses.dataclass(frozen=True)
class Agreement:
  """labels: fraction of equal labels (None without "segm"); depth: RMS difference over the
  float mean depth (None without "depth")."""
  labels: float | None
  depth: float | None

  def badness(self, bounds: Bounds) -> float:
    """The worse of the two shortfalls, each 1 at its bound: <= 1 passes."""
    worst = 0.0
    if self.labels is not None:
      worst = max(worst, (1.0 - self.labels) / max(1.0 - bounds.min_labels, 1e-9))
    if self.depth is not None:
      worst = max(worst, self.depth / max(bounds.max_depth, 1e-9))
    return worst

  def passes(self, bounds: Bounds) -> bool:
    return ((self.labels is None or self.labels >= bounds.min_labels)
            and (self.depth is None or self.depth <= bounds.max_depth))

  def __str__(self) -> str:
    parts = []
    if self.labels is not None:
      parts.append(f"labels {100 * self.labels:.1f}% equal")
    if self.depth is not None:
      parts.append(f"depth RMS difference {100 * self.depth:.1f}% of the mean depth")
    return ", ".join(parts) or "no segm or depth output"


Run = Callable[[Any, np.ndarray], dict]  # (graph, one (1, H, W, 3) image) -> outputs by name


class Reference:
  """The float graph's labels and depth on the calibration frames."""

  def __init__(self, run: Run, graph: Any, images: np.ndarray):
    self.images = np.asarray(images)
    self.labels, self.depth = [], []
    for i in range(len(self.images)):
      out = run(graph, self.images[i:i + 1])
      self.labels.append(np.argmax(out["segm"], -1).astype(np.int32) if "segm" in out else None)
      self.depth.append(np.asarray(out["depth"], np.float64) if "depth" in out else None)

  def agreement(self, run: Run, graph: Any) -> Agreement:
    """`graph`'s agreement with the float graph over all calibration frames."""
    equal = total = 0
    sq = depth_sum = count = 0.0
    for i in range(len(self.images)):
      out = run(graph, self.images[i:i + 1])
      if self.labels[i] is not None:
        equal += int(np.sum(np.argmax(out["segm"], -1) == self.labels[i]))
        total += self.labels[i].size
      if self.depth[i] is not None:
        sq += float(np.sum((np.asarray(out["depth"], np.float64) - self.depth[i]) ** 2))
        depth_sum += float(np.sum(self.depth[i]))
        count += self.depth[i].size
    labels = equal / total if total else None
    depth = None
    if count:
      mean = depth_sum / count
      depth = float(np.sqrt(sq / count) / mean) if mean > 0 else float(sq > 0) * np.inf
    return Agreement(labels, depth)


class Int8AccuracyError(ValueError):
  """The int8 graph stays below the bounds whatever the layers kept float."""


SENSITIVITY_FRAMES = 8  # frames per single-layer measurement
MAX_FLOAT = 16          # layers the pass may keep float


@dataclasses.dataclass
class Result:
  graph: Any              # the int8 graph to write
  kept_float: tuple       # the layers the pass kept float, costliest first
  agreement: Agreement
  log: list[str]          # what was measured, one line each


def guarded(int8_graph: Any, run: Run, float_graph: Any, images: np.ndarray,
            quantizers: Sequence[str], without: Callable[[Any, Sequence[str]], Any],
            bounds: Bounds = Bounds(), label: Callable[[str], str] = str,
            max_float: int = MAX_FLOAT) -> Result:
  """Measure `int8_graph` against `float_graph` on `images` with `run`; below `bounds`,
  remove activation quantizers (`without(int8_graph, names)` -> a graph with those removed),
  ranked by measurement, until it passes. `label(name)` names a quantizer's layer in the
  log; Int8AccuracyError when `max_float` layers do not suffice."""
  reference = Reference(run, float_graph, images)
  n = len(reference.images)
  base = reference.agreement(run, int8_graph)
  log = [f"int8 vs float on {n} calibration frames: {base}"]
  if base.passes(bounds):
    return Result(int8_graph, (), base, log)
  few = Reference.__new__(Reference)
  k = min(SENSITIVITY_FRAMES, n)
  few.images, few.labels, few.depth = reference.images[:k], reference.labels[:k], \
      reference.depth[:k]
  scores = {q: few.agreement(run, without(int8_graph, [q])) for q in quantizers}
  ranked = sorted(quantizers, key=lambda q: scores[q].badness(bounds))
  log.append(f"per-layer sensitivity on {k} frames ({len(quantizers)} quantized layers), "
             f"costliest: " + "; ".join(f"{label(q)} float -> {scores[q]}"
                                        for q in ranked[:5]))
  # Greedy, in the ranked order: a layer stays float only if the whole graph then agrees
  # better (layers interact: one kept float may move what the next quantizer sees).
  agreement, chosen = base, []
  for q in ranked[:2 * max_float]:
    if len(chosen) == max_float:
      break
    trial = without(int8_graph, chosen + [q])
    measured = reference.agreement(run, trial)
    if measured.badness(bounds) >= agreement.badness(bounds):
      continue
    agreement = measured
    chosen.append(q)
    if agreement.passes(bounds):
      log.append(f"kept float ({len(chosen)} layers, by measurement): "
                 f"{', '.join(label(c) for c in chosen)}: {agreement}")
      return Result(trial, tuple(chosen), agreement, log)
  costs = "; ".join(f"{label(q)} float -> {scores[q]}" for q in ranked[:3]) or "none"
  raise Int8AccuracyError(
      f"the int8 graph is below the bounds (labels >= {100 * bounds.min_labels:g}%, depth "
      f"RMS difference <= {100 * bounds.max_depth:g}% of the mean depth) on {n} calibration "
      f"frames: all int8 {base}; costliest layers: {costs}; at best, with "
      f"{len(chosen)} of them float, {agreement}. Nothing written: calibrate on more or more typical frames, keep "
      f"more float (--keep-float), or loosen --int8-min-labels / --int8-max-depth")
