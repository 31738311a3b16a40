"""Files fabricated in the real dataset formats, for tests that read datasets end to end."""
import os

import numpy as np
from PIL import Image

from hydrajax.inference.visualize import KITTI6_PALETTE


def png(path, array):
  """Write `array` as a PNG, creating its directory."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def nyud(root, n=4, h=64, w=96):
  """The prepared NYUD layout: rgb/, masks/, depth/ and both list files (same frames)."""
  rng = np.random.default_rng(0)
  lines = []
  for i in range(n):
    name = f"{i:06d}.png"
    png(f"{root}/rgb/{name}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    png(f"{root}/masks/{name}", rng.choice([0, 5, 39, 255], (h, w)).astype(np.uint8))
    png(f"{root}/depth/{name}", rng.integers(0, 40000, (h, w)).astype(np.uint16))
    lines.append(f"rgb/{name}\tmasks/{name}\tdepth/{name}")
  for split in ("train", "val"):
    (root / f"{split}_list_depth.txt").write_text("\n".join(lines) + "\n")


def kitti(root, h=64, w=96):
  """KITTI-6 colour labels and KITTI depth PNGs with configs/kitti.py's list files."""
  rng = np.random.default_rng(1)
  segm, depth = [], []
  for i in range(2):
    png(f"{root}/img/s{i}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    png(f"{root}/lab/s{i}.png", KITTI6_PALETTE[rng.integers(0, 7, (h, w))])
    segm.append(f"img/s{i}.png\tlab/s{i}.png")
    png(f"{root}/img/d{i}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    png(f"{root}/gt/d{i}.png", rng.integers(0, 80 * 256, (h, w)).astype(np.uint16))
    depth.append(f"img/d{i}.png\tgt/d{i}.png")
  for split in ("train", "val"):
    (root / f"kitti6_{split}.txt").write_text("\n".join(segm) + "\n")
  (root / "eigen_train.txt").write_text("\n".join(depth) + "\n")
  (root / "eigen_test.txt").write_text("\n".join(depth) + "\n")


def kitti_semantics(root, h=64, w=96):
  """The KITTI semantics benchmark layout (training/image_2, training/semantic with Cityscapes
  label ids) and configs/kitti_semantics.py's list files."""
  rng = np.random.default_rng(2)
  lines = []
  for i in range(2):
    png(f"{root}/training/image_2/{i:06d}_10.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    png(f"{root}/training/semantic/{i:06d}_10.png", rng.choice([0, 7, 8, 26], (h, w)).astype(np.uint8))
    lines.append(f"training/image_2/{i:06d}_10.png\ttraining/semantic/{i:06d}_10.png")
  for split in ("train", "val"):
    (root / f"semantics_{split}.txt").write_text("\n".join(lines) + "\n")


def folder(root, n=4, h=64, w=96, classes=("floor", "wall", "chair")):
  """A folder dataset (hydrajax/data/folder.py): classes.txt, train/ frames with both labels,
  one with segm only and one with depth only (millimetre PNGs), no val/ (a seeded split)."""
  rng = np.random.default_rng(3)
  os.makedirs(root, exist_ok=True)
  (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
  for i in range(n):
    png(f"{root}/train/images/f{i}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    if i != n - 1:
      png(f"{root}/train/segm/f{i}.png",
          rng.choice([0, 1, len(classes) - 1, 255], (h, w)).astype(np.uint8))
    if i != n - 2:
      png(f"{root}/train/depth/f{i}.png", rng.integers(0, 9000, (h, w)).astype(np.uint16))
