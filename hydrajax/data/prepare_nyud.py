"""Builds the NYUDv2 prepared layout (see nyud.py) from the official .mat files.

  python -m hydrajax.data.prepare_nyud --mat nyu_depth_v2_labeled.mat --splits splits.mat \\
      --mapping classMapping40.mat --out data/nyud

`nyu_depth_v2_labeled.mat` is MATLAB v7.3 (HDF5, read with h5py): `images` (1449, 3, 640, 480)
uint8, `depths` (1449, 640, 480) metres, `labels` (1449, 640, 480) 894 classes, 0 = unlabelled;
h5py sees MATLAB's column-major arrays with reversed axes, so each is transposed to H x W (x C).
`splits.mat` (`trainNdxs`, `testNdxs`, 1-based) and `classMapping40.mat` (`mapClass` 1x894,
values 1..40) are MATLAB v5 files in the official release (read with scipy) or HDF5 (h5py).
Frames are named by their 1-based index (000003.png ...). The output appears only when complete:
it is written into a temporary sibling directory that is renamed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import h5py
import numpy as np
from tqdm import tqdm

from hydrajax.data import pngio
from hydrajax.data.nyud import LIST_FILES, NYUD_DEPTH_SCALE


def load_mat_arrays(path: str, keys: list[str]) -> dict[str, np.ndarray]:
  """Reads `keys` from a MATLAB file: v5 via scipy.io.loadmat, v7.3 (HDF5) via h5py."""
  if h5py.is_hdf5(path):
    with h5py.File(path, "r") as f:
      return {k: np.asarray(f[k]) for k in keys}
  try:
    import scipy.io
  except ImportError as e:
    raise ImportError(f"{path} is a MATLAB v5 file: reading it needs scipy (pip install scipy)") from e
  mat = scipy.io.loadmat(path)
  missing = [k for k in keys if k not in mat]
  if missing:
    raise KeyError(f"{path} has no {missing}; keys: {sorted(k for k in mat if not k.startswith('__'))}")
  return {k: np.asarray(mat[k]) for k in keys}


def class_lut(map_class: np.ndarray) -> np.ndarray:
  """894-class ids (0 = unlabelled) -> 40-class ids 0..39, unlabelled -> 255 (uint8 (895,))."""
  mapping = np.asarray(map_class).ravel().astype(np.int64)
  if mapping.min() < 1 or mapping.max() > 40:
    raise ValueError(f"mapClass values must be in 1..40, got {mapping.min()}..{mapping.max()}")
  return np.concatenate([[255], mapping - 1]).astype(np.uint8)


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
  """Metres -> uint16 PNG values (metres * 5000, clipped at 13.1 m), 0 stays 0 (invalid)."""
  return np.clip(np.round(depth_m * NYUD_DEPTH_SCALE), 0, 65535).astype(np.uint16)


def _write_frame(out: str, name: str, image, depth, labels, lut) -> None:
  pngio.write_png_atomic(os.path.join(out, "rgb", name), np.ascontiguousarray(image.transpose(2, 1, 0)))
  pngio.write_png_atomic(os.path.join(out, "depth", name), encode_depth(depth.T))
  labels = labels.T.astype(np.int64)
  if labels.min() < 0 or labels.max() >= len(lut):
    raise ValueError(f"label ids must be in 0..{len(lut) - 1}, got {labels.min()}..{labels.max()}")
  pngio.write_png_atomic(os.path.join(out, "masks", name), lut[labels])


def prepare(mat: str, splits: str, mapping: str, out: str, progress: bool = True) -> dict[str, int]:
  """Writes rgb/, masks/, depth/ and the two list files into `out`; returns frames per split."""
  if os.path.exists(out):
    raise FileExistsError(f"{out} exists; remove it or choose another --out")
  split_idx = load_mat_arrays(splits, ["trainNdxs", "testNdxs"])
  lut = class_lut(load_mat_arrays(mapping, ["mapClass"])["mapClass"])
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp", dir=parent)
  try:
    counts = {}
    with h5py.File(mat, "r") as f:
      images, depths, labels = f["images"], f["depths"], f["labels"]
      n = images.shape[0]
      for split, key in (("train", "trainNdxs"), ("val", "testNdxs")):
        idx = np.asarray(split_idx[key]).ravel().astype(np.int64)
        if idx.min() < 1 or idx.max() > n:
          raise ValueError(f"{splits}:{key} must be 1-based indices in 1..{n}")
        lines = []
        for i in tqdm(idx, desc=f"NYUDv2 {split}", disable=not progress):
          name = f"{i:06d}.png"
          _write_frame(tmp, name, images[i - 1], depths[i - 1], labels[i - 1], lut)
          lines.append(f"rgb/{name}\tmasks/{name}\tdepth/{name}\n")
        with open(os.path.join(tmp, LIST_FILES[split]), "w") as lf:
          lf.writelines(lines)
        counts[split] = len(lines)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return counts


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
  parser.add_argument("--splits", required=True, help="splits.mat (trainNdxs / testNdxs)")
  parser.add_argument("--mapping", required=True, help="classMapping40.mat (mapClass)")
  parser.add_argument("--out", required=True, help="output directory (must not exist)")
  args = parser.parse_args(argv)
  counts = prepare(args.mat, args.splits, args.mapping, args.out)
  print(f"wrote {counts} frames to {args.out}")


if __name__ == "__main__":
  main()
