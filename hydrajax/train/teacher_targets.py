"""From a teacher's outputs to the student's labels: classes mapped (and masked where the
teacher is unsure), relative depth fitted to metres.

Segmentation: a class map sends teacher class names to the student's names, many to one;
unmapped teacher classes become ignore (255). With logits, the teacher's softmax is summed
over the classes sent to the same student class (and over the unmapped ones), each pixel
takes the largest sum, and a pixel whose largest sum is below `min_confidence`, or whose
largest sum is the unmapped classes', is ignored.

Depth: a relative output r is brought to metres by an affine fit in the teacher's space,
target = scale * r + shift with target = 1 / depth (`inverse_depth_relative`) or depth
(`depth_relative`), over the pixels with metric depth: per frame where the frame has
enough of them, else one fit over the pooled pixels of all such frames. The fit is a least
squares fit refitted on the pixels within 3 robust standard deviations (1.4826 * the median
absolute residual) of it, so stray LiDAR points or edges do not move it.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

IGNORE = 255
MIN_FIT_PIXELS = 20      # fewer metric pixels in a frame: it takes the dataset's fit
SAMPLES_PER_FRAME = 2048  # metric pixels a frame contributes to the dataset's fit
_ROBUST_ROUNDS = 2


def read_class_map(path: str) -> dict[str, str]:
  """{teacher class: student class} from a JSON object, or a text file of two columns
  (tab-, comma- or whitespace-separated; `#` starts a comment)."""
  with open(path) as f:
    text = f.read()
  if path.endswith(".json"):
    try:
      mapping = json.loads(text)
    except ValueError as e:
      raise ValueError(f"class map {path}: not JSON ({' '.join(str(e).split())})") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
      raise ValueError(f"class map {path}: expected a JSON object of teacher class -> class "
                       f"name strings")
    return mapping
  mapping = {}
  for number, line in enumerate(text.splitlines(), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    for sep in ("\t", ",", None):
      parts = [p.strip() for p in line.split(sep)] if sep else line.split()
      if len(parts) == 2 and all(parts):
        break
    else:
      raise ValueError(f"class map {path} line {number}: expected two columns (teacher class, "
                       f"class), got {line!r}")
    if parts[0] in mapping:
      raise ValueError(f"class map {path} line {number}: teacher class {parts[0]!r} mapped twice")
    mapping[parts[0]] = parts[1]
  if not mapping:
    raise ValueError(f"class map {path}: no entries")
  return mapping


def class_table(teacher_classes: Sequence[str], student_classes: Sequence[str],
                mapping: dict[str, str] | None, where: str = "class map") -> np.ndarray:
  """(len(teacher_classes),) int32: each teacher class id's student id, or IGNORE.

  Without `mapping`, classes of the same name are matched; at least one must be.
  """
  student = {name: i for i, name in enumerate(student_classes)}
  if mapping is None:
    table = np.array([student.get(c, IGNORE) for c in teacher_classes], np.int32)
    if (table == IGNORE).all():
      raise ValueError(f"no teacher class has a name of the dataset's classes (teacher: "
                       f"{', '.join(teacher_classes[:5])}, ...; dataset: "
                       f"{', '.join(student_classes[:5])}, ...): pass --class-map")
    return table
  teacher = {name: i for i, name in enumerate(teacher_classes)}
  for t, s in mapping.items():
    if t not in teacher:
      raise ValueError(f"{where}: {t!r} is not a teacher class (the card lists "
                       f"{len(teacher_classes)}: {', '.join(teacher_classes[:8])}, ...)")
    if s not in student:
      raise ValueError(f"{where}: {t!r} -> {s!r}, which is not a class of the dataset "
                       f"({', '.join(student_classes)})")
  return np.array([student[mapping[c]] if c in mapping else IGNORE for c in teacher_classes],
                  np.int32)


def softmax(logits: np.ndarray) -> np.ndarray:
  """(..., C) logits -> probabilities, float32."""
  z = np.asarray(logits, np.float32)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def merged_probabilities(probs: np.ndarray, table: np.ndarray, num_student: int) -> np.ndarray:
  """(h, w, C_teacher) softmax -> (h, w, num_student + 1): summed per student class; the
  last channel is the unmapped classes' share."""
  columns = np.where(table == IGNORE, num_student, table)
  onehot = np.zeros((len(table), num_student + 1), np.float32)
  onehot[np.arange(len(table)), columns] = 1.0
  flat = np.asarray(probs, np.float32).reshape(-1, len(table)) @ onehot
  return flat.reshape(*probs.shape[:-1], num_student + 1)


def labels_from_merged(merged: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
  """(H, W, K + 1) merged probabilities -> (H, W) uint8 student ids, IGNORE where the largest
  share is the unmapped classes' or below `min_confidence`."""
  best = merged.argmax(-1)
  sure = merged.max(-1) >= min_confidence
  unmapped = best == merged.shape[-1] - 1
  return np.where(sure & ~unmapped, best, IGNORE).astype(np.uint8)


def labels_from_ids(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
  """(H, W) teacher class ids -> student ids (ids outside the teacher's classes: IGNORE)."""
  ids = np.asarray(ids).astype(np.int64)
  inside = (ids >= 0) & (ids < len(table))
  return np.where(inside, table[np.where(inside, ids, 0)], IGNORE).astype(np.uint8)


# ---- depth --------------------------------------------------------------------------------

def fit_space(depth: np.ndarray, kind: str) -> np.ndarray:
  """Metric depth (> 0) in the teacher's space: 1 / depth for inverse kinds, else depth."""
  return 1.0 / depth if kind == "inverse_depth_relative" else depth


def robust_affine_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  """(scale, shift) with y ~ scale * x + shift, float64 least squares refitted on the points
  within 3 robust standard deviations; raises ValueError when x is constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = np.ones(x.shape, bool)
  scale = shift = 0.0
  for _ in range(_ROBUST_ROUNDS + 1):
    xs, ys = x[keep], y[keep]
    xm, ym = xs.mean(), ys.mean()
    var = ((xs - xm) ** 2).sum()
    if not var > 1e-12 * max(1.0, (xs ** 2).sum()):
      raise ValueError("the teacher's output is constant over the metric pixels")
    scale = float(((xs - xm) * (ys - ym)).sum() / var)
    shift = float(ym - scale * xm)
    residual = np.abs(y - (scale * x + shift))
    sigma = 1.4826 * np.median(residual[keep])
    new_keep = residual <= max(3.0 * sigma, 1e-9 * np.abs(y).max())
    if new_keep.sum() < max(2, keep.sum() // 2) or (new_keep == keep).all():
      break
    keep = new_keep
  return scale, shift


def to_metres(r: np.ndarray, kind: str, scale: float, shift: float) -> np.ndarray:
  """Relative output -> metres through the fit; 0 (invalid) where the fit is not positive."""
  t = scale * np.asarray(r, np.float64) + shift
  with np.errstate(divide="ignore"):
    depth = np.where(t > 0, 1.0 / np.where(t > 0, t, 1.0), 0.0) if (
        kind == "inverse_depth_relative") else np.maximum(t, 0.0)
  return depth.astype(np.float32)


def relative_label(r: np.ndarray) -> np.ndarray:
  """A relative output as a storable label: its finite values mapped affinely onto [1, 255]
  (positive, so 0 stays invalid; scale and shift mean nothing to a relative label), the rest
  0. A constant frame has no label (all 0). (H, W) float32."""
  r = np.asarray(r, np.float64)
  finite = np.isfinite(r)
  if not finite.any() or r[finite].max() <= r[finite].min():
    return np.zeros(r.shape, np.float32)
  lo, hi = r[finite].min(), r[finite].max()
  return np.where(finite, 1.0 + 254.0 * (np.where(finite, r, lo) - lo) / (hi - lo),
                  0.0).astype(np.float32)


def abs_rel(pred: np.ndarray, depth: np.ndarray) -> float:
  """Mean |pred - depth| / depth over depth > 0 (pred 0 counts as a full miss)."""
  valid = depth > 0
  return float(np.mean(np.abs(pred[valid] - depth[valid]) / depth[valid]))


def check_kind(scale: float, kind: str, where: str) -> None:
  """A fit whose scale is not positive means the output runs the other way than declared."""
  if scale <= 0:
    other = "depth_relative" if kind == "inverse_depth_relative" else "inverse_depth_relative"
    raise ValueError(f"{where}: the fitted scale is {scale:.3g}: the output falls where "
                     f"{'inverse depth' if kind == 'inverse_depth_relative' else 'depth'} "
                     f"rises; the card's kind {kind!r} looks wrong (maybe {other!r})")


def check_metric(pred: np.ndarray, depth: np.ndarray, where: str) -> None:
  """Stops when a `depth_metric` output is not metres: millimetres, inverse depth, or far
  off the frame's own metric depth (pixels depth > 0), or implausible without any."""
  valid = (depth > 0) & (pred > 0) if depth is not None else pred > 0
  if not valid.any():
    raise ValueError(f"{where}: depth_metric output has no positive value")
  p = pred[valid].astype(np.float64)
  if depth is None:
    if np.median(p) > 300.0:
      raise ValueError(f"{where}: depth_metric output has median {np.median(p):.4g}: "
                       f"millimetres, not metres? (scale it in the graph)")
    return
  d = depth[valid].astype(np.float64)
  if len(p) >= 3 and np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(d)))[0, 1] < 0:
    raise ValueError(f"{where}: depth_metric output falls where the frame's metric depth "
                     f"rises: inverse depth, not metres? (kind inverse_depth_relative)")
  ratio = float(np.median(p / d))
  if not 1 / 3 <= ratio <= 3:
    unit = " (millimetres?)" if 300 <= ratio <= 3000 else ""
    raise ValueError(f"{where}: depth_metric output is {ratio:.4g} times the frame's metric "
                     f"depth{unit}: not metres as declared")


def sample_pairs(r: np.ndarray, depth: np.ndarray, kind: str, seed: int) -> tuple:
  """Up to SAMPLES_PER_FRAME (teacher value, target in the teacher's space) pairs of a
  frame's metric pixels, chosen by `seed`."""
  valid = np.flatnonzero(depth.reshape(-1) > 0)
  if len(valid) > SAMPLES_PER_FRAME:
    valid = np.sort(np.random.default_rng(seed).choice(valid, SAMPLES_PER_FRAME, replace=False))
  d = depth.reshape(-1)[valid].astype(np.float64)
  return (r.reshape(-1)[valid].astype(np.float64), fit_space(d, kind), d)


def write_report(path: str, report: dict) -> None:
  from hydrajax.runtime import atomic
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  atomic.write_bytes_atomic(path, (json.dumps(report, indent=1) + "\n").encode())
