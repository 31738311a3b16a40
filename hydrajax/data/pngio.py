"""PNG reading and writing shared by the file-based sources, with errors that name the file.

Every reader raises `BadSampleError` (a ValueError) naming the path for a missing, truncated or
wrongly shaped file, so a bad frame is found at once and `skip_bad` can recognise it.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from hydrajax.runtime import atomic


class BadSampleError(ValueError):
  """A sample's file is missing, unreadable, or its size disagrees with the image."""


def check_exist(paths: Iterable[str], what: str) -> None:
  """Raises FileNotFoundError listing every missing path (checked once, at construction)."""
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    shown = "\n  ".join(missing[:50]) + ("\n  ..." if len(missing) > 50 else "")
    raise FileNotFoundError(f"{len(missing)} file(s) named in {what} do not exist:\n  {shown}")


def read_png(path: str) -> np.ndarray:
  """Decodes an image file to a numpy array (mode as stored: RGB, L, I;16, ...)."""
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode == "I;16B":
        return np.asarray(im).astype(np.uint16)
      return np.asarray(im)
  except FileNotFoundError as e:
    raise BadSampleError(f"missing file {path}") from e
  except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
    raise BadSampleError(f"cannot decode {path}: {e}") from e


def read_rgb(path: str) -> np.ndarray:
  """RGB image as uint8 (H, W, 3); grey or RGBA files are converted."""
  a = read_png(path)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] < 3:
    raise BadSampleError(f"{path}: expected an RGB image, got shape {a.shape}")
  return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def read_label(path: str, shape: Sequence[int]) -> np.ndarray:
  """Single-channel uint8 label map (H, W), checked against the image's (H, W)."""
  a = read_png(path)
  if a.ndim != 2 or a.dtype != np.uint8:
    raise BadSampleError(f"{path}: expected an 8-bit single-channel label PNG, got {a.dtype} {a.shape}")
  check_shape(path, a, shape)
  return a


def read_depth(path: str, divisor: float, shape: Sequence[int]) -> np.ndarray:
  """16-bit depth PNG as float32 metres (value / divisor), 0 = invalid, checked for size."""
  a = read_png(path)
  if a.ndim != 2 or a.dtype not in (np.uint16, np.int32, np.uint8):
    raise BadSampleError(f"{path}: expected a 16-bit single-channel depth PNG, got {a.dtype} {a.shape}")
  check_shape(path, a, shape)
  return a.astype(np.float32) / np.float32(divisor)


def read_normals(path: str, shape: Sequence[int]) -> np.ndarray:
  """Normals PNG (uint8 RGB, [-1, 1] -> [0, 255]) as float32 (H, W, 3); black (0,0,0) = invalid -> 0."""
  a = read_png(path)
  if a.ndim != 3 or a.shape[-1] < 3:
    raise BadSampleError(f"{path}: expected an RGB normals PNG, got shape {a.shape}")
  check_shape(path, a, shape)
  a = a[..., :3]
  n = a.astype(np.float32) / 127.5 - 1.0
  n[(a == 0).all(-1)] = 0.0
  return n


def encode_normals(normals: np.ndarray) -> np.ndarray:
  """Inverse of `read_normals`: float (H, W, 3) in [-1, 1] -> uint8, zero vectors -> black."""
  out = np.clip(np.round((normals + 1.0) * 127.5), 1, 255).astype(np.uint8)
  out[(normals == 0).all(-1)] = 0
  return out


def check_shape(path: str, array: np.ndarray, shape: Sequence[int]) -> None:
  """Raises naming `path` when the label's (H, W) differs from the image's."""
  if tuple(array.shape[:2]) != tuple(shape[:2]):
    raise BadSampleError(f"{path}: size {array.shape[:2]} differs from the image's {tuple(shape[:2])}")


def write_png_atomic(path: str, array: np.ndarray) -> None:
  """Writes a PNG via a temporary file and rename, so readers never see half a file.

  uint16 (H, W) arrays are written as 16-bit grey, uint8 as L or RGB.
  """
  image = Image.fromarray(np.ascontiguousarray(array))  # uint16 (H, W) -> mode "I;16"
  atomic.write_atomic(path, lambda f: image.save(f, format="PNG"))
