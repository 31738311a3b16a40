"""NYUDv2 (40 classes) in the authors' prepared layout, as a random-access source.

Layout (as written by `python -m hydrajax.data.prepare_nyud`):
  ROOT/rgb/NNNNNN.png     RGB uint8, 480x640
  ROOT/masks/NNNNNN.png   uint8 class ids 0..39, 255 = unlabelled
  ROOT/depth/NNNNNN.png   uint16, metres * 5000, 0 = no measurement
  ROOT/normals/NNNNNN.png optional: uint8 RGB, each component n in [-1, 1] stored as
                          round((n + 1) * 127.5); black (0, 0, 0) = invalid
  ROOT/train_list_depth.txt, ROOT/val_list_depth.txt: one frame per line, tab-separated
    paths relative to ROOT: rgb, masks, depth[, normals]. A column "-" means "not annotated"
    and yields the ignore-filled modality.
"""

from __future__ import annotations

import os

import numpy as np

from hydrajax.data import pngio

NYUD_NUM_CLASSES = 40
# The 40-class names in id order (Gupta et al.'s mapping of the 894 NYUDv2 labels).
NYUD40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "other structure", "other furniture", "other prop")
NYUD_DEPTH_SCALE = 5000.0  # PNG value per metre
LIST_FILES = {"train": "train_list_depth.txt", "val": "val_list_depth.txt", "test": "val_list_depth.txt"}


def read_list(list_file: str, root: str) -> list[list[str | None]]:
  """Parses a tab-separated list into rows of absolute paths (None for "-" columns)."""
  rows = []
  with open(list_file) as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\n\r")
      if not line.strip():
        continue
      cols = line.split("\t")
      if len(cols) < 2:
        raise ValueError(f"{list_file}:{n}: expected tab-separated paths, got {line!r}")
      rows.append([None if c in ("-", "") else os.path.join(root, c) for c in cols])
  return rows


class NYUDv2:
  """NYUDv2 frames from the prepared layout: image, segm (0..39, 255), depth (metres), [normals].

  Args:
    root: the prepared directory.
    split: "train" or "val" (= the 654 test images), or a path to another list file.
    depth_scale: PNG value per metre (5000 in the authors' files).
    with_normals: read the 4th column; default: if every row has one.
  Raises FileNotFoundError at construction listing every path in the list that is missing.
  """

  num_classes = NYUD_NUM_CLASSES

  def __init__(self, root: str, split: str = "train", *, depth_scale: float = NYUD_DEPTH_SCALE,
               with_normals: bool | None = None):
    list_file = split if os.path.isfile(split) else os.path.join(root, LIST_FILES.get(split, split))
    if not os.path.isfile(list_file):
      raise FileNotFoundError(f"NYUDv2 list file not found: {list_file}")
    self.root, self.list_file, self.depth_scale = root, list_file, depth_scale
    self.rows = read_list(list_file, root)
    if with_normals is None:
      with_normals = bool(self.rows) and all(len(r) >= 4 and r[3] for r in self.rows)
    self.has_normals = with_normals
    width = 4 if with_normals else 3
    self.rows = [(r + [None] * width)[:width] for r in self.rows]
    pngio.check_exist([p for r in self.rows for p in r if p], list_file)

  def __len__(self) -> int:
    return len(self.rows)

  def key(self, index: int) -> str:
    """The rgb file's name without extension, e.g. "000003": stable and filename-safe."""
    return os.path.splitext(os.path.basename(self.rows[index][0]))[0]

  def files(self, index: int) -> list[str]:
    """The files sample `index` is read from (rgb, masks, depth[, normals] that exist)."""
    return [p for p in self.rows[index] if p]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < len(self.rows):
      raise IndexError(index)
    rgb, masks, depth = self.rows[index][:3]
    image = pngio.read_rgb(rgb)
    hw = image.shape[:2]
    sample = {
        "image": image,
        "segm": pngio.read_label(masks, hw) if masks else np.full(hw, 255, np.uint8),
        "depth": pngio.read_depth(depth, self.depth_scale, hw) if depth else np.zeros(hw, np.float32),
    }
    if self.has_normals:
      normals = self.rows[index][3]
      sample["normals"] = pngio.read_normals(normals, hw) if normals else np.zeros(hw + (3,), np.float32)
    return sample
