"""Config -> data sources: which dataset class reads `config.data_dir`, for which split.

The only place that maps `config.dataset` names to `hydrajax.data` classes, shared by
training, evaluation and distillation. Teacher labels (`config.teacher_dir`) wrap the
training source so that samples lacking a modality get the teacher's hard labels.
"""
from __future__ import annotations

from typing import Any

import ml_collections

DATASETS = ("synthetic", "nyud", "kitti")


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """Human-readable class names of the dataset, if it has them."""
  if config.dataset == "synthetic":
    from hydrajax.data.synthetic import SYNTHETIC_CLASSES
    return SYNTHETIC_CLASSES
  if config.dataset == "kitti":
    try:
      from hydrajax.data.kitti import KITTI_CLASSES
      return tuple(KITTI_CLASSES)
    except ImportError:
      return None
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
  elif config.dataset == "kitti":
    from hydrajax.data import kitti
    _need_data_dir(config)
    kwargs = {"depth_divisor": config.depth_divisor} if config.depth_divisor else {}
    source = kitti.KITTI(config.data_dir, split, **kwargs)
  else:
    raise ValueError(f"config.dataset must be one of {DATASETS}, got {config.dataset!r}")
  if with_teacher and split == "train" and config.teacher_dir:
    from hydrajax.data.teacher import TeacherLabels
    source = TeacherLabels(source, config.teacher_dir)
  return source


def _need_data_dir(config: ml_collections.ConfigDict) -> None:
  if not config.data_dir:
    raise ValueError(f"config.dataset={config.dataset!r} needs --config.data_dir=PATH")
