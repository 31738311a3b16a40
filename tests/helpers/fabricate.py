"""Files fabricated in the real dataset formats, for tests that read datasets end to end."""
import os
import pathlib

import numpy as np
from PIL import Image

from hydrajax.data.kitti import KITTI6_PALETTE
from tests.helpers import legacy_py2


def png(path, array):
  """Write `array` as a PNG, creating its directory."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def nyud(root, n=4, h=64, w=96, *, first=0, normals=False, splits=("train", "val")):
  """The prepared NYUD layout: rgb/, masks/, depth/ (and normals/) with a list file per split
  (the same frames). Frame m (file f"{m:06d}.png", m = first..first+n-1): random RGB; masks of
  class m % 40 with row 0 ignored (255); depth m + 1 metres (millimetres x 5, the layout's
  scale) with row 1 invalid (0); normals (0, 0, -1) with row 2 invalid (black)."""
  from hydrajax.data import pngio
  root = str(root)
  rng = np.random.default_rng(0)
  lines = []
  for m in range(first, first + n):
    name = f"{m:06d}.png"
    png(f"{root}/rgb/{name}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    masks = np.full((h, w), m % 40, np.uint8)
    masks[0] = 255
    png(f"{root}/masks/{name}", masks)
    depth = np.full((h, w), 5000 * (m + 1), np.uint16)
    depth[1] = 0
    png(f"{root}/depth/{name}", depth)
    cols = [f"rgb/{name}", f"masks/{name}", f"depth/{name}"]
    if normals:
      vectors = np.zeros((h, w, 3), np.float32)
      vectors[..., 2] = -1.0
      vectors[2] = 0.0
      png(f"{root}/normals/{name}", pngio.encode_normals(vectors))
      cols.append(f"normals/{name}")
    lines.append("\t".join(cols))
  for split in splits:
    with open(os.path.join(root, f"{split}_list_depth.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")


def corrupt_nyud(root):
  """Frame 1's image truncated, frame 3's mask of another size."""
  with open(f"{root}/rgb/000001.png", "r+b") as f:
    f.truncate(40)
  png(f"{root}/masks/000003.png", np.zeros((8, 20), np.uint8))


def nyud_with_bad_labels(root, h=16, w=20):
  """The NYUD layout (6 frames) whose mask 2 holds labels 41 and 45 (beyond 40 classes)."""
  nyud(root, n=6, h=h, w=w)
  mask = np.full((h, w), 255, np.uint8)
  mask[:4], mask[4:8] = 45, 41
  png(os.path.join(str(root), "masks", "000002.png"), mask)


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


def bad_weights(tmp_path, weights_file):
  """{case: (path, words the error must contain)} of files that are not usable weights."""
  text = tmp_path / "notes.npz"
  text.write_text("not weights")
  cut = tmp_path / "cut.npz"
  cut.write_bytes(pathlib.Path(weights_file).read_bytes()[:4000])
  ckpt = tmp_path / "model.ckpt"
  legacy_py2.save_state_dict(str(ckpt), {"layer1.0.weight": np.zeros((32, 3, 3, 3), np.float32)})
  other = tmp_path / "other.npz"
  np.savez(other, a=np.zeros(3))
  with np.load(weights_file) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["params/head_segm/segm/bias"] = np.zeros(7, np.float32)  # the kernel has 40
  shapes = tmp_path / "shapes.npz"
  np.savez(shapes, **arrays)
  return {"text": (text, "not a zip archive"), "truncated": (cut, "not a hydrajax weights"),
          "pytorch": (ckpt, "python -m hydrajax.convert.official"),
          "other-arrays": (other, "no '__meta__' entry"),
          "wrong-shape": (shapes, "wrong shape (1): params/head_segm/segm/kernel")}
