"""Config -> data sources: which dataset class reads `config.data_dir`, for which split.

The only place that maps `config.dataset` names to `hydrajax.data` classes, shared by
training, evaluation and distillation. Teacher labels (`config.teacher_dir`) wrap the
training source so that samples lacking a modality get the teacher's hard labels.
"""
from __future__ import annotations

from typing import Any

import ml_collections

DATASETS = ("synthetic", "nyud", "nyud_raw", "kitti", "kitti_semantics")


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """Human-readable class names of the dataset, if it has them."""
  if config.dataset == "synthetic":
    from hydrajax.data.synthetic import SYNTHETIC_CLASSES
    return SYNTHETIC_CLASSES
  if config.dataset == "kitti":
    from hydrajax.data.kitti import KITTI6_CLASSES
    return tuple(KITTI6_CLASSES)
  if config.dataset == "kitti_semantics":
    from hydrajax.data.kitti import CITYSCAPES_CLASSES
    return tuple(CITYSCAPES_CLASSES)
  return None


def build_source(config: ml_collections.ConfigDict, split: str, *,
                 with_teacher: bool = True) -> Any:
  """A random-access source (`len`, `[i]`, `key(i)`) of `split` ("train" or "val").

  Raises ValueError for an unknown dataset, and the source's own FileNotFoundError (naming
  the path) when `config.data_dir` does not hold the dataset.
  """
  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  if config.dataset == "synthetic":
    from hydrajax.data.synthetic import SyntheticScenes
    s = config.synthetic
    num = s.num_train if split == "train" else s.num_val
    source = SyntheticScenes(num, s.height, s.width, seed=s.seed + (split == "val"),
                             with_normals="normals" in config.tasks)
  elif config.dataset == "nyud":
    from hydrajax.data.nyud import NYUDv2
    _need_data_dir(config)
    source = NYUDv2(config.data_dir, split)
  elif config.dataset == "nyud_raw":
    return _nyud_raw(config, split, with_teacher)
  elif config.dataset == "kitti":
    return _kitti(config, split, with_teacher)
  elif config.dataset == "kitti_semantics":
    from hydrajax.data.kitti import KittiSemantics
    _need_data_dir(config)
    name = config.kitti.semantics_train if split == "train" else config.kitti.semantics_val
    source = KittiSemantics(config.data_dir, _path(config, name) if name else None)
  else:
    raise ValueError(f"config.dataset must be one of {DATASETS}, got {config.dataset!r}")
  return _with_teacher(config, source) if with_teacher and split == "train" else source


def _with_teacher(config: ml_collections.ConfigDict, source: Any) -> Any:
  if not config.teacher_dir:
    return source
  from hydrajax.data.teacher import TeacherLabels
  return TeacherLabels(source, config.teacher_dir)


def _nyud_raw(config: ml_collections.ConfigDict, split: str, with_teacher: bool) -> Any:
  """The paper's NYUD training set: the 795 labelled frames mixed with TFDS `nyu_depth_v2`'s
  depth-only raw frames (their segmentation from `teacher_dir`, where given), drawn with
  `config.nyud_raw.{labelled,raw}_weight`. Validation: the 654 labelled test frames."""
  from hydrajax.data import pipeline
  from hydrajax.data.nyud import NYUDv2
  from hydrajax.data.nyud_raw import NYUDv2Raw
  _need_data_dir(config)
  labelled = NYUDv2(config.data_dir, split)
  if split == "val":
    return labelled
  r = config.nyud_raw
  raw = NYUDv2Raw(r.tfds_split, data_dir=r.tfds_dir or None)
  parts = [labelled, raw]
  if with_teacher:
    parts = [_with_teacher(config, p) for p in parts]
  return pipeline.Mixture(parts, (r.labelled_weight, r.raw_weight))


def _path(config: ml_collections.ConfigDict, name: str) -> str:
  import os
  return os.path.join(config.data_dir, name)


def _kitti(config: ml_collections.ConfigDict, split: str, with_teacher: bool) -> Any:
  """KITTI-6 segmentation frames and KITTI depth frames, mixed (train) or concatenated
  (val); each lacks the other modality, which teacher labels fill for training."""
  import os

  from hydrajax.data import kitti, pipeline
  _need_data_dir(config)
  k = config.kitti
  lists = (k.segm_train, k.depth_train) if split == "train" else (k.segm_val, k.depth_val)
  path = lambda name: os.path.join(config.data_dir, name)
  divisor = config.depth_divisor or kitti.KITTI_DEPTH_DIVISOR
  parts = []
  if lists[0]:
    parts.append(kitti.Kitti6(config.data_dir, path(lists[0])))
  if lists[1]:
    parts.append(kitti.KittiDepth(config.data_dir, path(lists[1]), depth_divisor=divisor))
  if not parts:
    raise ValueError(f"config.kitti lists no {split} file (segm_{split} / depth_{split})")
  if split == "val":
    return Concat(parts)
  if with_teacher:
    parts = [_with_teacher(config, p) for p in parts]
  weights = (k.segm_weight, k.depth_weight) if len(parts) == 2 else None
  return parts[0] if len(parts) == 1 else pipeline.Mixture(parts, weights)


class Concat:
  """Several sources one after the other (an evaluation set made of parts)."""

  def __init__(self, parts: list):
    self.parts = list(parts)
    self.has_normals = all(getattr(p, "has_normals", False) for p in self.parts)

  def __len__(self) -> int:
    return sum(len(p) for p in self.parts)

  def _locate(self, index: int) -> tuple[Any, int]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    for p in self.parts:
      if index < len(p):
        return p, index
      index -= len(p)
    raise IndexError(index)

  def __getitem__(self, index: int) -> dict:
    part, i = self._locate(index)
    return part[i]

  def key(self, index: int) -> str:
    part, i = self._locate(index)
    return part.key(i)


def _need_data_dir(config: ml_collections.ConfigDict) -> None:
  if not config.data_dir:
    raise ValueError(f"config.dataset={config.dataset!r} needs --config.data_dir=PATH")
