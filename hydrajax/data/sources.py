"""Config -> data sources: the registry entry of `config.dataset` reads `config.data_dir`.

Shared by training, evaluation and distillation (the entries: hydrajax/data/registry.py).
Teacher labels (`config.teacher_dir`) wrap the training source so that samples lacking a
modality get the teacher's hard labels.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from hydrajax.data import registry

DATASETS = tuple(registry.DATASETS)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """Human-readable class names of the dataset, if it has them (hydrajax.data.registry)."""
  return registry.class_names(config)


def build_source(config: ml_collections.ConfigDict, split: str, *,
                 with_teacher: bool = True) -> Any:
  """A random-access source (`len`, `[i]`, `key(i)`) of `split` ("train" or "val").

  The dataset's registry entry builds it; training parts then get the teacher's labels
  (`config.teacher_dir`) and every part its checks (`CheckedSource`). Raises ValueError for
  an unknown dataset, and the source's own FileNotFoundError (naming the path) when
  `config.data_dir` does not hold the dataset.
  """
  from hydrajax.data import pipeline

  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  entry = registry.get(config.dataset)
  if entry.needs_data_dir and not config.data_dir:
    raise ValueError(f"config.dataset={config.dataset!r} needs --config.data_dir=PATH")
  source = entry.build(config, split)
  wrap = lambda s: _checked(config, _with_teacher(config, s) if (
      with_teacher and split == "train") else s, split)
  if isinstance(source, pipeline.Mixture):
    return pipeline.Mixture([wrap(p) for p in source.sources], source.weights)
  return wrap(source)


def _checked(config: ml_collections.ConfigDict, source: Any, split: str) -> Any:
  """`source` with errors naming files and labels checked against the config (see
  CheckedSource); raises ValueError if training wants normals the data does not have
  (evaluation does not score normals)."""
  if (split == "train" and "normals" in config.tasks
      and not getattr(source, "has_normals", False)):
    raise ValueError(f"config.tasks={tuple(config.tasks)} includes 'normals', but the "
                     f"{config.dataset!r} data in {config.data_dir or '(generated)'} has no "
                     f"surface normals (NYUD: a 4th column in the list files)")
  num_classes = None
  if "segm" in config.tasks:  # 0: the dataset's own count (a folder's classes file)
    num_classes = config.num_classes or len(registry.class_names(config) or ())
  return CheckedSource(source, num_classes)


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
    self.has_relative_depth = getattr(source, "has_relative_depth", False)

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
