"""Every dataset hydrajax knows, one `Dataset` entry each: adding a dataset = adding an entry.

An entry says how to build its train / val sources from a config and what the rest of the
project needs to know about it: class names and palette (config check, evaluation's
per-class IoU, pictures), the depth files' scale (value per metre), the default evaluation
crop (a name of hydrajax.evaluate.metrics.CROPS) and depth cap (metres), the depth colour
clip of pictures, whether it has surface normals. `hydrajax.data.sources.build_source` wraps
what `build` returns (teacher labels, checks) the same way for every dataset.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import ml_collections
import numpy as np

from hydrajax.data.palettes import NYUD_PALETTE, generic_palette

ConfigFn = Callable[[ml_collections.ConfigDict], Any]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset. `classes` / `palette` are fixed values or functions of the config (a
  folder's come from its classes file); `build(config, split)` returns a source, or a
  `pipeline.Mixture` of parts (each wrapped on its own) or `pipeline.Concat`.

  depth_scale: depth file value per metre (None: generated, float metres or per config).
  eval_crop, max_depth: the default evaluation protocol (crop name; cap in metres, 0 none).
  display_max_depth: depth colour clip of pictures, metres.
  has_normals: True / False, or None when it depends on the files.
  """
  name: str
  build: Callable[[ml_collections.ConfigDict, str], Any]
  classes: tuple[str, ...] | None | ConfigFn = None
  palette: np.ndarray | None | ConfigFn = None
  depth_scale: float | None = None
  eval_crop: str = "none"
  max_depth: float = 0.0
  display_max_depth: float = 10.0
  has_normals: bool | None = False
  needs_data_dir: bool = True


def _synthetic(config: ml_collections.ConfigDict, split: str) -> Any:
  from hydrajax.data.synthetic import SyntheticScenes
  s = config.synthetic
  num = s.num_train if split == "train" else s.num_val
  return SyntheticScenes(num, s.height, s.width, seed=s.seed + (split == "val"),
                         with_normals="normals" in config.tasks)


def _nyud(config: ml_collections.ConfigDict, split: str) -> Any:
  from hydrajax.data.nyud import NYUDv2
  return NYUDv2(config.data_dir, split)


def _nyud_raw(config: ml_collections.ConfigDict, split: str) -> Any:
  """The paper's NYUD training set: the 795 labelled frames mixed with TFDS `nyu_depth_v2`'s
  depth-only raw frames (their segmentation from `teacher_dir`, where given), drawn with
  `config.nyud_raw.{labelled,raw}_weight`. Validation: the 654 labelled test frames."""
  from hydrajax.data import pipeline
  from hydrajax.data.nyud import NYUDv2
  from hydrajax.data.nyud_raw import NYUDv2Raw
  labelled = NYUDv2(config.data_dir, split)
  if split == "val":
    return labelled
  r = config.nyud_raw
  raw = NYUDv2Raw(r.tfds_split, data_dir=r.tfds_dir or None)
  return pipeline.Mixture([labelled, raw], (r.labelled_weight, r.raw_weight))


def _kitti(config: ml_collections.ConfigDict, split: str) -> Any:
  """KITTI-6 segmentation frames and KITTI depth frames, mixed (train) or concatenated
  (val); each lacks the other modality, which teacher labels fill for training."""
  from hydrajax.data import kitti, pipeline
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
  if len(parts) == 1:
    return parts[0]
  if split == "val":
    return pipeline.Concat(parts)
  return pipeline.Mixture(parts, (k.segm_weight, k.depth_weight))


def _kitti_semantics(config: ml_collections.ConfigDict, split: str) -> Any:
  from hydrajax.data.kitti import KittiSemantics
  name = config.kitti.semantics_train if split == "train" else config.kitti.semantics_val
  return KittiSemantics(config.data_dir, os.path.join(config.data_dir, name) if name else None)


def _folder(config: ml_collections.ConfigDict, split: str) -> Any:
  from hydrajax.data import folder
  return folder.from_config(config, split)


def _folder_classes(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  from hydrajax.data import folder
  info = folder.read_classes(config.data_dir)
  return info.names if info else None


def _folder_palette(config: ml_collections.ConfigDict) -> np.ndarray | None:
  from hydrajax.data import folder
  info = folder.read_classes(config.data_dir)
  return info.palette if info else None


def _entries() -> dict[str, Dataset]:
  from hydrajax.data.kitti import (CITYSCAPES_CLASSES, KITTI6_CLASSES, KITTI6_PALETTE,
                                   KITTI_DEPTH_DIVISOR)
  from hydrajax.data.nyud import NYUD40_CLASSES, NYUD_DEPTH_SCALE
  from hydrajax.data.synthetic import SYNTHETIC_CLASSES
  nyud = dict(classes=NYUD40_CLASSES, palette=NYUD_PALETTE,
              depth_scale=NYUD_DEPTH_SCALE, max_depth=10.0, display_max_depth=8.0)
  kitti = dict(depth_scale=KITTI_DEPTH_DIVISOR, eval_crop="garg", max_depth=80.0,
               display_max_depth=80.0)
  entries = [
      Dataset("synthetic", _synthetic, classes=SYNTHETIC_CLASSES, has_normals=True,
              needs_data_dir=False),
      Dataset("nyud", _nyud, has_normals=None, **nyud),
      Dataset("nyud_raw", _nyud_raw, **nyud),
      Dataset("kitti", _kitti, classes=KITTI6_CLASSES, palette=KITTI6_PALETTE[:6], **kitti),
      Dataset("kitti_semantics", _kitti_semantics, classes=CITYSCAPES_CLASSES, **kitti),
      Dataset("folder", _folder, classes=_folder_classes, palette=_folder_palette,
              has_normals=False),
  ]
  return {e.name: e for e in entries}


DATASETS: dict[str, Dataset] = _entries()


def get(name: str) -> Dataset:
  """The entry of `name`; ValueError listing the known names otherwise."""
  if name not in DATASETS:
    raise ValueError(f"config.dataset must be one of {tuple(DATASETS)}, got {name!r}")
  return DATASETS[name]


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """The class names of the config's dataset (ids in order), or None when it has none."""
  classes = get(config.dataset).classes
  return classes(config) if callable(classes) else classes


def palette(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """(C, 3) uint8 colours of the config's dataset's classes, or None (a generic palette)."""
  colours = get(config.dataset).palette
  return colours(config) if callable(colours) else colours


def palettes() -> dict[str, np.ndarray]:
  """{dataset name: palette} of the datasets with their own fixed colours (a dataset that
  shares another's colours, e.g. nyud_raw, is listed once, under the first name)."""
  out: dict[str, np.ndarray] = {}
  for e in DATASETS.values():
    if isinstance(e.palette, np.ndarray) and not any(p is e.palette for p in out.values()):
      out[e.name] = e.palette
  return out


def metadata(config: ml_collections.ConfigDict) -> dict:
  """What weights trained on the config's dataset carry besides the architecture (the
  EXTRA_META keys of hydrajax.weights): dataset, class_names and palette for the model's
  num_classes (ids past the dataset's named by number, generic colours), the folder's
  intrinsics (width and height from its first training image when not given)."""
  out: dict[str, Any] = {"dataset": config.dataset}
  n = config.num_classes if "segm" in config.tasks else 0
  if n:
    names = list(class_names(config) or ())[:n]
    out["class_names"] = names + [str(i) for i in range(len(names), n)]
    colours = palette(config)
    fill = generic_palette(n)
    out["palette"] = np.concatenate([np.asarray(colours, np.uint8)[:n], fill[len(colours):]]
                                    ) if colours is not None else fill
  if config.dataset == "folder":
    from hydrajax.data import folder
    out["intrinsics"] = folder.camera(config.data_dir)
  return out
