"""Image reading and PNG writing shared by the file-based sources and inference, with errors
that name the file.

Every reader raises `BadSampleError` (a ValueError) naming the path for a missing, truncated,
oversized or wrongly shaped file, so a bad frame is found at once and `skip_bad` can recognise
it. `load_rgb` is the one function that turns any image file (PNG, JPEG, TIFF, ...; palette,
CMYK, grey, 16-bit, EXIF-rotated) into the RGB uint8 array the network takes.
"""

from __future__ import annotations

import os
import struct
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# The plugins of FORMATS (importing one registers it in Image.OPEN).
from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, PpmImagePlugin  # noqa: F401
from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401

from hydrajax.runtime import atomic


class BadSampleError(ValueError):
  """A sample's file is missing, unreadable, or its size disagrees with the image."""


def check_exist(paths: Iterable[str], what: str) -> None:
  """Raises FileNotFoundError listing every missing path (checked once, at construction)."""
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    shown = "\n  ".join(missing[:50]) + ("\n  ..." if len(missing) > 50 else "")
    raise FileNotFoundError(f"{len(missing)} file(s) named in {what} do not exist:\n  {shown}")


# Width * height above which a file is refused before its pixels are decoded: ~11600 x 11600,
# above a 108-megapixel phone photo (an RGB copy is 3 bytes a pixel, the outputs ~10).
DEFAULT_MAX_PIXELS = 2 ** 27

# The formats hydrajax reads (photos, label and depth maps), by Pillow's format names. Pillow
# otherwise tries every plugin it has whatever the file is called: PostScript named
# `upload.png` would go to Ghostscript (EPS), and rarely used parsers would see every upload.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "PPM", "WEBP")

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _identify(path: str) -> Image.Image:
  """The image at `path` opened (header only) by the Pillow plugin of one of FORMATS that
  accepts its first bytes, as Image.open(path, formats=FORMATS) opens it but without
  Image.open's check against `Image.MAX_IMAGE_PIXELS`: that limit is process-wide, and raising
  it for one call would lift it for the whole program; `open_image` checks its own limit."""
  with open(path, "rb") as f:
    prefix = f.read(16)
  for name in FORMATS:
    factory, accept = Image.OPEN[name]
    accepted = accept is None or accept(prefix)
    if not accepted or isinstance(accepted, str):  # a str: the format's plugin is not built
      continue
    try:
      return factory(path)
    except (SyntaxError, IndexError, TypeError, struct.error):
      continue  # not this format after all, as Image.open goes on
  raise UnidentifiedImageError(f"not an image of the formats hydrajax reads "
                               f"({', '.join(FORMATS)})")


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
  """The image file at `path`, of one of FORMATS, opened with its size checked from the
  header before any pixel is decoded (BadSampleError naming the file above `max_pixels`).
  Leaves Pillow's process-wide `Image.MAX_IMAGE_PIXELS` as it is. Close it (a context
  manager) after use."""
  if max_pixels < 1:
    raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
  path = os.fspath(path)
  im = _identify(path)
  w, h = im.size
  if w * h > max_pixels:
    im.close()
    raise BadSampleError(f"{path}: {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                         "(raise max_pixels / --max-pixels to read it)")
  return im


def read_png(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Decodes an image file to a numpy array (mode as stored: RGB, L, I;16, ...)."""
  try:
    with open_image(path, max_pixels) as im:
      im.load()
      if im.mode == "I;16B":
        return np.asarray(im).astype(np.uint16)
      return np.asarray(im)
  except FileNotFoundError as e:
    raise BadSampleError(f"missing file {path}") from e
  except BadSampleError:
    raise
  except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
    raise BadSampleError(f"cannot decode {path}: {e}") from e


def to_rgb(image: Image.Image) -> np.ndarray:
  """A decoded PIL image of any mode -> (H, W, 3) RGB uint8. 16-bit grey ("I;16", "I") is
  scaled (65535 -> 255, not wrapped); palette, CMYK, grey and alpha modes go through PIL's
  own conversion (alpha dropped)."""
  if image.mode in _SIXTEEN_BIT:
    a = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == "F":
    raise ValueError("a 32-bit float image has no fixed range; save it as 8- or 16-bit")
  if image.mode in ("P", "PA"):  # the palette may carry transparency
    image = image.convert("RGBA")
  return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def load_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Read any image file as (H, W, 3) RGB uint8, its EXIF orientation applied (phone photos
  upright). Raises BadSampleError naming the file: missing, a directory, not an image,
  truncated or corrupt, or above `max_pixels` (checked from the header)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise BadSampleError(f"{path}: a directory, not an image file")
  if not os.path.isfile(path):
    raise BadSampleError(f"{path}: no such file")
  try:
    with open_image(path, max_pixels) as im:
      im.load()
      return to_rgb(ImageOps.exif_transpose(im))
  except BadSampleError:
    raise
  except MemoryError as e:
    raise BadSampleError(f"{path}: out of memory decoding it") from e
  except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
    raise BadSampleError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def read_rgb(path: str) -> np.ndarray:
  """RGB image as uint8 (H, W, 3), converted from any mode as `load_rgb` does."""
  if not os.path.isfile(path):
    raise BadSampleError(f"missing file {path}")
  return load_rgb(path)


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
