"""Teacher labels (hard knowledge distillation): fill the modality a sample lacks.

On-disk format of a teacher directory DIR (written by `write_teacher_labels`, read by
`TeacherLabels`):
  DIR/teacher.json        {"format": 1, "depth_divisor": 256.0, "fill": "missing"}
  DIR/segm/<key>.png      uint8 class ids, 255 = ignore (the teacher's argmax)
  DIR/depth/<key>.png     uint16, metres * 256 (KITTI's convention: 3.9 mm steps up to 256 m,
                          enough for both NYUD and KITTI), 0 = invalid
`<key>` is the wrapped source's `source.key(i)`, with "/" replaced by "__". The index of which
keys have labels is the directory listing itself, read once at construction, so several
distillation processes can write into one directory without sharing an index file.

A relative depth teacher with no metric depth to fit it to (`hydrajax-distill
--depth-relative-ok`) writes depth labels known only up to scale and shift, recorded as
"relative_depth": "depth" (affine in depth) or "inverse_depth" (affine in 1 / depth) in
teacher.json; each frame's values are mapped to [1, 255] (any positive affine map serves).
Samples given such a label carry "depth_relative" (uint8: RELATIVE_CODES, 0 = metric), for
which training uses a scale-and-shift-invariant loss (hydrajax.train.losses.ssi_terms).

"fill" says where the labels count: "missing" (a modality the sample lacks entirely) or
"all" (also every ignored / invalid pixel of a sample's own labels: sparse LiDAR depth
densified, unlabelled borders filled). Real labels always win where they are valid.
"""

from __future__ import annotations

import json
import os

import numpy as np

from hydrajax.runtime import atomic
from hydrajax.data import pngio

TEACHER_FORMAT = 1
TEACHER_DEPTH_DIVISOR = 256.0
MODALITIES = ("segm", "depth")
FILLS = ("missing", "all")
# teacher.json "relative_depth" -> the per-sample "depth_relative" code (the loss's codes,
# hydrajax.train.losses: 1 relative depth, 2 relative inverse depth; 0 metric).
RELATIVE_CODES = {"depth": 1, "inverse_depth": 2}


def _filename(key: str) -> str:
  return key.replace("/", "__").replace(os.sep, "__") + ".png"


def create_label_dir(directory: str, fill: str | None = None,
                     relative_depth: str | None = None) -> None:
  """Makes `directory` a teacher label directory (its teacher.json), if it is not one yet;
  `fill` ("missing" or "all", see the module docstring) is recorded, "all" once given stays.
  `relative_depth` ("depth" or "inverse_depth") marks its depth labels as relative; a
  directory holding the other kind of depth labels is refused (ValueError naming it)."""
  path = os.path.join(directory, "teacher.json")
  meta = {"format": TEACHER_FORMAT, "depth_divisor": TEACHER_DEPTH_DIVISOR, "fill": "missing"}
  if relative_depth is not None and relative_depth not in RELATIVE_CODES:
    raise ValueError(f"relative_depth must be one of {tuple(RELATIVE_CODES)}, "
                     f"got {relative_depth!r}")
  if os.path.exists(path):
    with open(path) as f:
      meta = json.load(f)
    has_depth = os.path.isdir(os.path.join(directory, "depth")) and os.listdir(
        os.path.join(directory, "depth"))
    if relative_depth is not None and meta.get("relative_depth") != relative_depth and has_depth:
      raise ValueError(f"{path}: its depth labels are "
                       f"{meta.get('relative_depth') or 'metric'}, not relative "
                       f"({relative_depth}): write to another directory")
    if (fill != "all" or meta.get("fill") == "all") and (
        relative_depth is None or meta.get("relative_depth") == relative_depth):
      return
  if relative_depth is not None:
    meta["relative_depth"] = relative_depth
  if fill is not None and fill not in FILLS:
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
  meta["fill"] = "all" if "all" in (fill, meta.get("fill")) else "missing"
  atomic.write_bytes_atomic(path, json.dumps(meta).encode())


def write_teacher_labels(directory: str, key: str, segm: np.ndarray | None = None,
                         depth: np.ndarray | None = None) -> None:
  """Stores a teacher's hard labels for one sample: segm uint8 (H, W), depth float (H, W) metres.

  Files are written atomically; an existing label for the key is replaced.
  """
  create_label_dir(directory)
  if segm is not None:
    segm = np.asarray(segm)
    if segm.ndim != 2 or segm.min() < 0 or segm.max() > 255:
      raise ValueError(f"teacher segm for {key!r} must be (H, W) ids in 0..255, got {segm.shape}")
    pngio.write_png_atomic(os.path.join(directory, "segm", _filename(key)), segm.astype(np.uint8))
  if depth is not None:
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2:
      raise ValueError(f"teacher depth for {key!r} must be (H, W) metres, got {depth.shape}")
    value = np.clip(np.round(np.nan_to_num(depth) * TEACHER_DEPTH_DIVISOR), 0, 65535).astype(np.uint16)
    pngio.write_png_atomic(os.path.join(directory, "depth", _filename(key)), value)


class TeacherLabels:
  """Wraps a source; where a sample's segm is all 255 or its depth all 0, uses the teacher's.

  Only a fully ignored modality is replaced: real annotations always win. Samples with no
  teacher file keep the ignored modality (count them with `missing(source)` first if that
  matters). The wrapped source must have `key(i)`.
  """

  def __init__(self, source, directory: str):
    meta_path = os.path.join(directory, "teacher.json")
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"not a teacher label directory (no teacher.json): {directory}")
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("format") != TEACHER_FORMAT:
      raise ValueError(f"{meta_path}: unsupported teacher format {meta.get('format')}")
    self.source, self.directory = source, directory
    self.depth_divisor = float(meta["depth_divisor"])
    self.fill = meta.get("fill", "missing")
    if self.fill not in FILLS:
      raise ValueError(f"{meta_path}: fill must be one of {FILLS}, got {self.fill!r}")
    self.relative_code = RELATIVE_CODES.get(meta.get("relative_depth"), 0)
    if meta.get("relative_depth") is not None and not self.relative_code:
      raise ValueError(f"{meta_path}: relative_depth must be one of {tuple(RELATIVE_CODES)}, "
                       f"got {meta['relative_depth']!r}")
    self.has_normals = getattr(source, "has_normals", False)
    self.has_relative_depth = bool(self.relative_code)
    self.num_classes = getattr(source, "num_classes", None)
    self.available = {}
    for modality in MODALITIES:
      sub = os.path.join(directory, modality)
      names = os.listdir(sub) if os.path.isdir(sub) else []
      self.available[modality] = {n for n in names if n.endswith(".png")}

  def __len__(self) -> int:
    return len(self.source)

  def key(self, index: int) -> str:
    return self.source.key(index)

  def files(self, index: int) -> list[str]:
    """The wrapped sample's files plus the teacher's label files for it."""
    name = _filename(self.source.key(index))
    own = self.source.files(index) if hasattr(self.source, "files") else []
    return own + [os.path.join(self.directory, m, name) for m in MODALITIES
                  if name in self.available[m]]

  def missing(self) -> dict[str, int]:
    """Teacher files expected but absent, per modality (reads every sample: slow, for checks)."""
    counts = dict.fromkeys(MODALITIES, 0)
    for i in range(len(self.source)):
      sample, name = self.source[i], _filename(self.source.key(i))
      counts["segm"] += bool((sample["segm"] == 255).all() and name not in self.available["segm"])
      counts["depth"] += bool((sample["depth"] == 0).all() and name not in self.available["depth"])
    return counts

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    sample = dict(self.source[index])
    name = _filename(self.source.key(index))
    hw = sample["image"].shape[:2]
    segm, depth = np.asarray(sample["segm"]), np.asarray(sample["depth"])
    if name in self.available["segm"]:
      own = segm != 255
      if not own.any() or self.fill == "all":
        taught = pngio.read_label(os.path.join(self.directory, "segm", name), hw)
        sample["segm"] = np.where(own, segm, taught).astype(segm.dtype)
    relative = False
    if name in self.available["depth"]:
      own = depth > 0
      # Relative labels only replace a depth map with no valid pixel: one map, one kind.
      if not own.any() or (self.fill == "all" and not self.relative_code):
        taught = pngio.read_depth(os.path.join(self.directory, "depth", name),
                                  self.depth_divisor, hw)
        sample["depth"] = np.where(own, depth, taught).astype(depth.dtype)
        relative = bool(self.relative_code)
    if self.relative_code:
      sample["depth_relative"] = np.uint8(self.relative_code if relative else 0)
    return sample
