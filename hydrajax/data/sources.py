"""Config -> data sources: which dataset class reads `config.data_dir`, for which split.

The only place that maps `config.dataset` names to `hydrajax.data` classes, shared by
training, evaluation and distillation. Teacher labels (`config.teacher_dir`) wrap the
training source so that samples lacking a modality get the teacher's hard labels.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

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
  if with_teacher and split == "train":
    source = _with_teacher(config, source)
  return _checked(config, source, split)


def _checked(config: ml_collections.ConfigDict, source: Any, split: str) -> Any:
  """`source` with errors naming files and labels checked against the config (see
  CheckedSource); raises ValueError if training wants normals the data does not have
  (evaluation does not score normals)."""
  if (split == "train" and "normals" in config.tasks
      and not getattr(source, "has_normals", False)):
    raise ValueError(f"config.tasks={tuple(config.tasks)} includes 'normals', but the "
                     f"{config.dataset!r} data in {config.data_dir or '(generated)'} has no "
                     f"surface normals (NYUD: a 4th column in the list files)")
  return CheckedSource(source, config.num_classes if "segm" in config.tasks else None)


class CheckedSource:
  """A source whose read errors name the sample's files, and whose segmentation labels
  must lie in [0, num_classes) or be the ignore value 255 (unless num_classes is None).

  Both raise BadSampleError: a label outside the classes is a mismatch of data and config
  that the loss would silently ignore. The check is one comparison per uint8 pixel, cheap
  next to decoding the PNG.
  """

  def __init__(self, source: Any, num_classes: int | None):
    self.source, self.num_classes = source, num_classes
    self.has_normals = getattr(source, "has_normals", False)

  def __len__(self) -> int:
    return len(self.source)

  def key(self, index: int) -> str:
    return self.source.key(index)

  def __getitem__(self, index: int) -> dict:
    from hydrajax.data import pngio, transforms

    try:
      sample = self.source[index]
    except (IndexError, pngio.BadSampleError):  # the end of the source; already named
      raise
    except Exception as e:  # noqa: BLE001 - any failure to read a sample: say which one
      raise pngio.BadSampleError(f"{describe(self.source, index)}: cannot read the sample "
                                 f"({type(e).__name__}: {e})") from e
    if self.num_classes is None:
      return sample
    segm = np.asarray(sample["segm"])
    bad = (segm >= self.num_classes) & (segm != transforms.IGNORE_SEGM)
    if bad.any():
      values = np.unique(segm[bad]).tolist()
      shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
      raise pngio.BadSampleError(
          f"{describe(self.source, index)}: segmentation labels {shown} are outside [0, "
          f"{self.num_classes}) and not the ignore value {transforms.IGNORE_SEGM} "
          f"(config.num_classes={self.num_classes}): fix the labels or the config")
    return sample


def files_of(source: Any, index: int) -> list[str]:
  """The files sample `index` is read from ([] for generated data)."""
  files = getattr(source, "files", None)
  return list(files(index)) if files is not None else []


def describe(source: Any, index: int) -> str:
  """The files of sample `index` (or its key) for error messages."""
  files = files_of(source, index)
  if files:
    return ", ".join(files)
  key = getattr(source, "key", None)
  return f"sample {key(index)!r}" if key is not None else f"sample {index}"


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
    return _checked(config, Concat(parts), split)
  if with_teacher:
    parts = [_with_teacher(config, p) for p in parts]
  parts = [_checked(config, p, split) for p in parts]
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

  def files(self, index: int) -> list[str]:
    part, i = self._locate(index)
    return files_of(part, i)


def _need_data_dir(config: ml_collections.ConfigDict) -> None:
  if not config.data_dir:
    raise ValueError(f"config.dataset={config.dataset!r} needs --config.data_dir=PATH")
