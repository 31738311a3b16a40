"""KITTI sources: depth (annotated PNGs), semantics (Cityscapes ids) and KITTI-6 colour labels.

Each is a separate random-access source yielding the full sample dict, with the modality it
lacks fully ignored (segm 255 or depth 0), so they mix freely (`pipeline.Mixture`) and teacher
labels (`teacher.TeacherLabels`) can fill the gap.

File lists: one frame per line, paths relative to `root`, separated by a tab (or by spaces when
the line has no tab); a column "-" means "not annotated".
"""

from __future__ import annotations

import glob
import os

import numpy as np

from hydrajax.data import pngio

KITTI6_CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "car")

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# Cityscapes label id -> train id (0..18); every other id -> 255.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                         25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _id, _train in _CITYSCAPES_TRAIN_IDS.items():
  CITYSCAPES_ID_TO_TRAIN_ID[_id] = _train

KITTI_DEPTH_DIVISOR = 256.0  # the KITTI depth benchmark's PNG value per metre

# The authors' cmap_kitti.npy: sky, building, road, sidewalk, vegetation, car, void (black).
# Also the colour code of KITTI-6 label files (decoded with it below); RGB, row i = class i, the
# last row (void) -> 255.
KITTI6_PALETTE = np.array([[128, 128, 128], [128, 0, 0], [128, 64, 128], [0, 0, 192],
                           [128, 128, 0], [64, 0, 128], [0, 0, 0]], np.uint8)


def read_pairs(list_file: str, root: str, columns: int = 2) -> list[list[str | None]]:
  """Reads a list of `columns` paths per line (tab- or space-separated), joined to `root`."""
  rows = []
  with open(list_file) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      cols = line.split("\t") if "\t" in line else line.split()
      if not 1 <= len(cols) <= columns:
        raise ValueError(f"{list_file}:{n}: expected up to {columns} paths, got {line!r}")
      cols += ["-"] * (columns - len(cols))
      rows.append([None if c == "-" else os.path.join(root, c) for c in cols])
  return rows


def decode_kitti6(colours: np.ndarray, path: str = "<array>") -> np.ndarray:
  """Colour-coded KITTI-6 labels (H, W, 3) uint8 -> class ids 0..5, void -> 255 (H, W) uint8.

  An off-palette colour raises naming `path`: it means a wrong file, not a void pixel.
  """
  code = lambda rgb: (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
  keys = code(KITTI6_PALETTE)
  order = np.argsort(keys)
  pix = code(colours[..., :3])
  pos = np.clip(np.searchsorted(keys[order], pix), 0, len(keys) - 1)
  found = keys[order][pos] == pix
  if not found.all():
    bad = colours[..., :3][~found][0].tolist()
    raise pngio.BadSampleError(f"{path}: colour {bad} is not in the KITTI-6 palette ({(~found).sum()} pixels)")
  ids = order[pos].astype(np.uint8)
  ids[ids == len(KITTI6_CLASSES)] = 255
  return ids


class _KittiList:
  """Shared list handling: rows of (rgb, label) paths checked at construction, keys from rgb paths."""

  has_normals = False

  def __init__(self, root: str, rows: list[list[str | None]], what: str):
    self.root, self.rows = root, rows
    pngio.check_exist([p for r in rows for p in r if p], what)

  def __len__(self) -> int:
    return len(self.rows)

  def key(self, index: int) -> str:
    """The rgb path relative to root without extension, e.g. "2011_09_26_drive_0002_sync/.../0000000069"."""
    return os.path.splitext(os.path.relpath(self.rows[index][0], self.root))[0]

  def files(self, index: int) -> list[str]:
    """The files sample `index` is read from (image and label, if annotated)."""
    return [p for p in self.rows[index] if p]

  def _image(self, index: int):
    if not 0 <= index < len(self.rows):
      raise IndexError(index)
    image = pngio.read_rgb(self.rows[index][0])
    return image, image.shape[:2], self.rows[index][1]


class KittiDepth(_KittiList):
  """KITTI frames with annotated depth (uint16 PNG, metres = value / `depth_divisor`), segm ignored.

  `list_file` lines: `rgb_path depth_path` (e.g. the Eigen split; "-" for no ground truth).
  The benchmark's divisor is 256; the authors' prepared KITTI ground truth uses 800.
  """

  def __init__(self, root: str, list_file: str, *, depth_divisor: float = KITTI_DEPTH_DIVISOR):
    super().__init__(root, read_pairs(list_file, root), list_file)
    self.depth_divisor = depth_divisor

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image, hw, depth = self._image(index)
    return {
        "image": image,
        "segm": np.full(hw, 255, np.uint8),
        "depth": pngio.read_depth(depth, self.depth_divisor, hw) if depth else np.zeros(hw, np.float32),
    }


class KittiSemantics(_KittiList):
  """KITTI semantics benchmark: Cityscapes label-id PNGs mapped to the 19 train ids, depth ignored.

  Without `list_file`, pairs `root/training/image_2/*.png` with `root/training/semantic/*.png`.
  """

  num_classes = len(CITYSCAPES_CLASSES)

  def __init__(self, root: str, list_file: str | None = None):
    if list_file is None:
      images = sorted(glob.glob(os.path.join(root, "training", "image_2", "*.png")))
      if not images:
        raise FileNotFoundError(f"no images in {os.path.join(root, 'training', 'image_2')}")
      rows = [[p, os.path.join(root, "training", "semantic", os.path.basename(p))] for p in images]
      what = os.path.join(root, "training")
    else:
      rows, what = read_pairs(list_file, root), list_file
    super().__init__(root, rows, what)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image, hw, label = self._image(index)
    segm = CITYSCAPES_ID_TO_TRAIN_ID[pngio.read_label(label, hw)] if label else np.full(hw, 255, np.uint8)
    return {"image": image, "segm": segm, "depth": np.zeros(hw, np.float32)}


class Kitti6(_KittiList):
  """KITTI-6 segmentation (the paper's 100 images): colour-coded RGB labels -> ids 0..5, void 255.

  `list_file` lines: `rgb_path colour_label_path`; depth is ignored (a teacher may fill it).
  """

  num_classes = len(KITTI6_CLASSES)

  def __init__(self, root: str, list_file: str):
    super().__init__(root, read_pairs(list_file, root), list_file)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image, hw, label = self._image(index)
    if label:
      colours = pngio.read_png(label)
      if colours.ndim != 3 or colours.shape[-1] < 3:
        raise pngio.BadSampleError(f"{label}: expected an RGB colour-coded label, got {colours.shape}")
      pngio.check_shape(label, colours, hw)
      segm = decode_kitti6(colours, label)
    else:
      segm = np.full(hw, 255, np.uint8)
    return {"image": image, "segm": segm, "depth": np.zeros(hw, np.float32)}
