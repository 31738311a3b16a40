"""The accuracy guard of the int8 exports (ONNX QDQ and OpenVINO NNCF): how far the int8
graph's outputs are from the float graph's on the calibration frames, and which parts of the
graph to keep float when they are too far.

Agreement, per export, over all pixels of all calibration frames:
  labels: the fraction of pixels whose argmax of "segm" is the float graph's;
  depth:  the RMS of (int8 depth - float depth) over the float graph's mean depth.
A graph passes when labels >= `Bounds.min_labels` and depth <= `Bounds.max_depth` (a task the
model lacks is not checked). How far quantization moves the outputs depends on the weights:
a briefly trained model (wide, unsettled activation ranges) loses far more than a converged
one, so the check runs on every export, whatever the model.

When the all-int8 graph fails, a sensitivity pass quantizes it once per candidate part
(FLOAT_PARTS of quantize.py present in the graph) with that part kept float, ranks the parts
by the agreement each restores, and keeps the best ones float, in that order, until the graph
passes. If none suffices the export is refused (Int8AccuracyError), naming what each part
costs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

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
  """The int8 graph stays below the bounds whatever the candidate parts kept float."""


@dataclasses.dataclass
class Result:
  graph: Any              # the int8 graph written
  keep_float: tuple       # the parts kept float (the user's, then the pass's)
  agreement: Agreement
  log: list[str]          # what was measured, one line each


def guarded(quantize: Callable[[Sequence[str]], Any], run: Run, float_graph: Any,
            images: np.ndarray, candidates: Iterable[str], bounds: Bounds = Bounds(),
            keep_float: Sequence[str] = ()) -> Result:
  """Quantize (`quantize(keep_float_parts) -> int8 graph`), measure against `float_graph`
  on `images` with `run`, and keep further `candidates` parts float (ranked by measurement)
  until the graph passes `bounds`; Int8AccuracyError when no choice does."""
  reference = Reference(run, float_graph, images)
  keep = tuple(keep_float)
  n = len(reference.images)
  graph = quantize(keep)
  base = reference.agreement(run, graph)
  what = f"with {','.join(keep)} float" if keep else "all int8"
  log = [f"int8 vs float on {n} calibration frames ({what}): {base}"]
  if base.passes(bounds):
    return Result(graph, keep, base, log)
  trials = {}
  for part in [p for p in candidates if p not in keep]:
    trial = quantize(keep + (part,))
    trials[part] = (reference.agreement(run, trial), trial)
    log.append(f"  {part} kept float: {trials[part][0]}")
  ranked = sorted(trials, key=lambda p: trials[p][0].badness(bounds))
  chosen, agreement = keep, base
  for k, part in enumerate(ranked):
    chosen = chosen + (part,)
    if k == 0:
      agreement, graph = trials[part]
    else:
      graph = quantize(chosen)
      agreement = reference.agreement(run, graph)
      log.append(f"  {','.join(chosen)} kept float: {agreement}")
    if agreement.passes(bounds):
      log.append(f"kept float: {','.join(chosen[len(keep):])} (measured the costliest)")
      return Result(graph, chosen, agreement, log)
  costs = "; ".join(f"{p} float -> {trials[p][0]}" for p in ranked) or "no part to keep float"
  raise Int8AccuracyError(
      f"the int8 graph is below the bounds (labels >= {100 * bounds.min_labels:g}%, depth "
      f"RMS difference <= {100 * bounds.max_depth:g}% of the mean depth) on {n} calibration "
      f"frames: all int8 {base}; {costs}; with {','.join(chosen) or 'nothing'} float "
      f"{agreement}. Nothing written: calibrate on more or more typical frames, or loosen "
      f"--int8-min-labels / --int8-max-depth")


def present_parts(names_of: Callable[[Sequence[str]], list], parts: Iterable[str]) -> list[str]:
  """The parts for which `names_of([part])` finds nodes in the graph."""
  return [p for p in parts if names_of([p])]
