"""NYUDv2 raw frames with depth only (~47k), from TFDS `nyu_depth_v2`, segm fully ignored.

The large depth-only set of the asymmetric-annotation setup: mix it with the 795 labelled
frames (`pipeline.Mixture`) and optionally fill its segmentation with teacher labels.
`tfds.data_source` reads TFDS's ArrayRecord files directly, without TensorFlow; preparing them
(`tfds build nyu_depth_v2`) does need TensorFlow, once, on any machine.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class NYUDv2Raw:
  """TFDS `nyu_depth_v2` as samples: image uint8 (480, 640, 3), depth float32 metres, segm 255.

  Args:
    split: TFDS split ("train" or "validation"), ignored if `data_source` is given.
    data_dir: TFDS data directory (default: TFDS's own).
    data_source: any random-access sequence of {"image", "depth"} dicts (e.g. a ready
      `tfds.data_source(...)`), instead of opening TFDS here.
  Keys are `"<split>_<index>"`: stable for a fixed TFDS version and split.
  """

  has_normals = False

  def __init__(self, split: str = "train", *, data_dir: str | None = None,
               data_source: Sequence[dict[str, Any]] | None = None):
    if data_source is None:
      import tensorflow_datasets as tfds

      data_source = tfds.data_source("nyu_depth_v2", split=split, data_dir=data_dir)
    self.split, self.data_source = split, data_source

  def __len__(self) -> int:
    return len(self.data_source)

  def key(self, index: int) -> str:
    return f"{self.split}_{index:06d}"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    record = self.data_source[index]
    image = np.asarray(record["image"], np.uint8)
    depth = np.asarray(record["depth"], np.float32)
    if depth.ndim == 3:  # (H, W, 1) in some TFDS versions
      depth = depth[..., 0]
    if depth.shape != image.shape[:2]:
      raise ValueError(f"nyu_depth_v2 {self.split}[{index}]: depth {depth.shape} vs image {image.shape}")
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return {"image": image, "segm": np.full(image.shape[:2], 255, np.uint8), "depth": depth}
