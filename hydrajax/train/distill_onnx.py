"""Label a dataset's training frames with an ONNX teacher (hydrajax.train.onnx_teacher).

One frame at a time (memory bounded by one frame's outputs), in two passes: first the frames
with metric depth (a relative depth teacher is fitted on each and they pool pixels for the
dataset's fit; a metric teacher is checked against them), then the others. What a frame gets
follows `fill`: "missing" labels only the modalities it lacks entirely, "all" every modality
(training then fills each ignored / invalid pixel; real labels win where valid).

Resumable: a frame whose labels (and, for a relative depth teacher, its fit samples under
OUT/fit/) exist is skipped; a run stopped part way picks up where it stopped. The depth fit is
reported in OUT/depth_fit.json: per frame (its own fit's or the dataset fit's scale and shift,
AbsRel against its metric pixels) and for the dataset fit.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from hydrajax.data import teacher as teacher_lib
from hydrajax.train import onnx_teacher
from hydrajax.train import teacher_targets as targets

MAX_POOLED = 200_000  # pixels the dataset's depth fit uses at most (a seeded choice)


def file_digest(path: str) -> str:
  """sha256 of a file (the teacher's identity in the fit samples), hex, first 16 digits."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()[:16]


class Labeller:
  """Turns one frame's teacher outputs into the student's labels (see teacher_targets)."""

  def __init__(self, teacher: onnx_teacher.OnnxTeacher, tasks: set[str],
               table: np.ndarray | None, num_student: int, min_confidence: float):
    self.teacher, self.table, self.num_student = teacher, table, num_student
    self.min_confidence = min_confidence
    self.tasks = set()
    if teacher.segm_output and "segm" in tasks:
      self.tasks.add("segm")
    if teacher.depth_output and "depth" in tasks:
      self.tasks.add("depth")

  def segm(self, raw: dict, hw: tuple[int, int]) -> np.ndarray:
    out = raw[self.teacher.segm_output]
    if self.teacher.segm_kind == "segm_labels":
      return targets.labels_from_ids(onnx_teacher.resize_nearest(out, hw), self.table)
    merged = targets.merged_probabilities(targets.softmax(out), self.table, self.num_student)
    return targets.labels_from_merged(onnx_teacher.resize_bilinear(merged, hw),
                                      self.min_confidence)

  def depth_raw(self, raw: dict, hw: tuple[int, int]) -> np.ndarray:
    return onnx_teacher.resize_bilinear(raw[self.teacher.depth_output], hw)


def _frames(source: Any) -> list[tuple[Any, int]]:
  parts = list(getattr(source, "sources", None) or [source])
  return [(p, i) for p in parts for i in range(len(p))]


def label_frames(labeller: Labeller, source: Any, out_dir: str, *, fill: str = "missing",
                 overwrite: bool = False, progress: bool = True,
                 relative_ok: bool = False) -> dict:
  """Writes the teacher's labels for `source`'s frames to `out_dir`. Returns counts
  {"segm", "depth", "samples"} and, for a relative depth teacher, "fit" (the report) or,
  with no metric depth to fit to and `relative_ok`, "relative_depth" (its labels' space,
  hydrajax.data.teacher)."""
  import tqdm

  teacher, kind = labeller.teacher, labeller.teacher.depth_kind
  relative = "depth" in labeller.tasks and kind in ("inverse_depth_relative", "depth_relative")
  identity = file_digest(teacher.path) if relative else ""
  frames = _frames(source)
  plan = []  # (part, i, key, todo, metric pixel count)
  for part, i in tqdm.tqdm(frames, disable=not progress, unit="img", desc="reading labels"):
    sample, key = part[i], part.key(i)
    name = teacher_lib._filename(key)
    todo = set()
    for m in labeller.tasks:
      lacks = (np.asarray(sample[m]) == 255).all() if m == "segm" else not (
          np.asarray(sample[m]) > 0).any()
      if (fill == "all" or lacks) and (overwrite or not os.path.exists(
          os.path.join(out_dir, m, name))):
        todo.add(m)
    plan.append((part, i, key, todo, int((np.asarray(sample["depth"]) > 0).sum())))
  metric = [p for p in plan if p[4] > 0]
  unfitted = relative and not metric and any("depth" in p[3] for p in plan)
  if unfitted and not relative_ok:
    raise ValueError(f"teacher {teacher.path} gives {kind} and no training frame has metric "
                     f"depth to fit it to metres: add metric depth (even sparse) to some frames, "
                     f"use a metric teacher (depth_metric), or pass --depth-relative-ok to "
                     f"train on relative depth (a scale-and-shift-invariant loss)")
  space = ("inverse_depth" if kind == "inverse_depth_relative" else "depth") if unfitted else None
  teacher_lib.create_label_dir(out_dir, fill, relative_depth=space)
  fit_dir = os.path.join(out_dir, "fit")
  report = _load_report(out_dir, kind) if relative else None
  counts = {"segm": 0, "depth": 0, "samples": 0}
  checked = [kind != "depth_metric" or "depth" not in labeller.tasks]
  bar = tqdm.tqdm(total=len(plan), disable=not progress, unit="img", desc="labelling")

  def write(key: str, labels: dict) -> None:
    teacher_lib.write_teacher_labels(out_dir, key, **labels)
    counts["samples"] += bool(labels)
    for m in labels:
      counts[m] += 1

  # Pass 1: frames with metric depth.
  for part, i, key, todo, n_metric in metric:
    bar.update(1)
    cache = os.path.join(fit_dir, teacher_lib._filename(key)[:-4] + ".npz")
    need_fit = relative and (overwrite or not _cached(cache, identity))
    if not todo and not need_fit and checked[0]:
      continue
    sample = part[i]
    hw = sample["image"].shape[:2]
    raw = teacher.run(sample["image"])
    labels = {"segm": labeller.segm(raw, hw)} if "segm" in todo else {}
    if "depth" in labeller.tasks:
      r, depth = labeller.depth_raw(raw, hw), np.asarray(sample["depth"])
      if not checked[0]:
        targets.check_metric(r, depth, f"teacher {teacher.path} on {key}")
        checked[0] = True
      if relative:
        fit = _frame_fit(r, depth, kind, key, teacher.path, first=not report["frames"])
        if need_fit:
          _save_cache(cache, identity, r, depth, kind, key)
        if fit is not None:
          report["frames"][key] = fit
        if "depth" in todo and fit is not None:
          labels["depth"] = targets.to_metres(r, kind, fit["scale"], fit["shift"])
        elif "depth" in todo:  # too few metric pixels of its own: the dataset fit, pass 2
          plan.append((part, i, key, {"depth"}, 0))
          bar.total += 1
          labels.pop("depth", None)
      elif "depth" in todo:
        labels["depth"] = r
    write(key, labels)

  # Pass 2: frames without (enough) metric depth.
  dataset_fit = _dataset_fit(fit_dir, identity, kind, report) if relative and not space and any(
      "depth" in p[3] and p[4] == 0 for p in plan) else None
  for part, i, key, todo, n_metric in plan:
    if n_metric > 0:
      continue
    bar.update(1)
    if not todo:
      continue
    sample = part[i]
    hw = sample["image"].shape[:2]
    raw = teacher.run(sample["image"])
    labels = {"segm": labeller.segm(raw, hw)} if "segm" in todo else {}
    if "depth" in todo:
      r = labeller.depth_raw(raw, hw)
      if not checked[0]:
        targets.check_metric(r, None, f"teacher {teacher.path} on {key}")
        checked[0] = True
      if space:
        labels["depth"] = targets.relative_label(r)
      elif relative:
        labels["depth"] = targets.to_metres(r, kind, dataset_fit["scale"], dataset_fit["shift"])
        report["frames"][key] = {"fit": "dataset", "scale": dataset_fit["scale"],
                                 "shift": dataset_fit["shift"], "abs_rel": None}
      else:
        labels["depth"] = r
    write(key, labels)
  bar.close()
  if space:
    counts["relative_depth"] = space
  elif relative:
    targets.write_report(os.path.join(out_dir, "depth_fit.json"), report)
    counts["fit"] = report
  return counts


def _cached(path: str, identity: str) -> bool:
  if not os.path.isfile(path):
    return False
  try:
    with np.load(path) as z:
      return str(z["teacher"]) == identity
  except (OSError, ValueError, KeyError):
    return False


def _save_cache(path: str, identity: str, r: np.ndarray, depth: np.ndarray, kind: str,
                key: str) -> None:
  """A frame's sampled (teacher value, target) pairs for the dataset's fit."""
  from hydrajax.runtime import atomic

  seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
  x, y, d = targets.sample_pairs(r, depth, kind, seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.write_atomic(path, lambda f: np.savez(f, x=x, y=y, d=d, teacher=np.array(identity)))


def _frame_fit(r: np.ndarray, depth: np.ndarray, kind: str, key: str, path: str,
               first: bool) -> dict | None:
  """The frame's own fit {"fit": "frame", scale, shift, abs_rel, pixels}, or None when it
  has fewer than MIN_FIT_PIXELS metric pixels or its fit fails (it takes the dataset's)."""
  valid = depth > 0
  if valid.sum() < targets.MIN_FIT_PIXELS:
    return None
  try:
    scale, shift = targets.robust_affine_fit(r[valid], targets.fit_space(depth[valid], kind))
  except ValueError:
    return None
  if first:  # the first fit names a card whose kind runs the wrong way, before more labels
    targets.check_kind(scale, kind, f"teacher {path} on {key}")
  if scale <= 0:
    return None
  pred = targets.to_metres(r, kind, scale, shift)
  return {"fit": "frame", "scale": scale, "shift": shift, "pixels": int(valid.sum()),
          "abs_rel": targets.abs_rel(pred, depth)}


def _dataset_fit(fit_dir: str, identity: str, kind: str, report: dict) -> dict:
  """One fit over the pooled samples of every frame with metric depth (OUT/fit/*.npz of
  this teacher), recorded in `report["dataset"]`."""
  xs, ys, ds = [], [], []
  names = sorted(os.listdir(fit_dir)) if os.path.isdir(fit_dir) else []
  for name in names:
    with np.load(os.path.join(fit_dir, name)) as z:
      if str(z["teacher"]) == identity:
        xs.append(z["x"]), ys.append(z["y"]), ds.append(z["d"])
  x, y, d = (np.concatenate(a) for a in (xs, ys, ds))
  if len(x) > MAX_POOLED:
    keep = np.sort(np.random.default_rng(0).choice(len(x), MAX_POOLED, replace=False))
    x, y, d = x[keep], y[keep], d[keep]
  scale, shift = targets.robust_affine_fit(x, y)
  targets.check_kind(scale, kind, f"the dataset fit over {len(xs)} frames")
  fit = {"scale": scale, "shift": shift, "frames": len(xs), "pixels": int(len(x)),
         "abs_rel": targets.abs_rel(targets.to_metres(x, kind, scale, shift), d)}
  report["dataset"] = fit
  return fit


def _load_report(out_dir: str, kind: str) -> dict:
  """The last run's depth_fit.json (frames already labelled keep their entries)."""
  import json

  path = os.path.join(out_dir, "depth_fit.json")
  if os.path.isfile(path):
    try:
      with open(path) as f:
        report = json.load(f)
      if report.get("kind") == kind and isinstance(report.get("frames"), dict):
        return report
    except ValueError:
      pass
  return {"kind": kind, "dataset": None, "frames": {}}


def summary(counts: dict) -> str:
  """One line on the depth fit of `label_frames`' counts, or ""."""
  if counts.get("relative_depth"):
    return (f"depth: relative labels (affine in {counts['relative_depth'].replace('_', ' ')}, "
            f"scale and shift unknown), trained with a scale-and-shift-invariant loss")
  report = counts.get("fit")
  if not report:
    return ""
  own = [f["abs_rel"] for f in report["frames"].values() if f["fit"] == "frame"]
  pooled = sum(f["fit"] == "dataset" for f in report["frames"].values())
  parts = []
  if own:
    parts.append(f"{len(own)} frame(s) fitted on their own metric depth (AbsRel median "
                 f"{np.median(own):.4f}, max {max(own):.4f})")
  if report.get("dataset"):
    d = report["dataset"]
    parts.append(f"{pooled} frame(s) on the dataset fit (scale {d['scale']:.6g}, shift "
                 f"{d['shift']:.6g}; AbsRel {d['abs_rel']:.4f} over {d['pixels']} pixels of "
                 f"{d['frames']} frames)")
  return "depth fit: " + "; ".join(parts)
