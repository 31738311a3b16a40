"""Per-sample numpy transforms for training and evaluation.

A sample is a dict: `image` uint8 (H, W, 3), `segm` uint8 (H, W) with 255 = ignore, `depth`
float32 (H, W) metres with 0 = invalid, optionally `normals` float32 (H, W, 3) with 0 =
invalid. Random transforms take a `np.random.Generator` (Grain's `random_map` supplies one per
element). Images stay uint8: the model normalises on device.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from PIL import Image

Sample = dict[str, np.ndarray]

# Fill values used where a transform invents pixels (padding): all of them mean "ignore".
PAD_VALUES: Mapping[str, float] = {"image": 0, "segm": 255, "depth": 0.0, "normals": 0.0}
IGNORE_SEGM = 255


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
  """Source index of each output pixel for nearest resizing (pixel centres, like PIL)."""
  scale = size_in / size_out
  return np.minimum(((np.arange(size_out) + 0.5) * scale).astype(np.int64), size_in - 1)


def resize(sample: Sample, height: int, width: int) -> Sample:
  """Resizes a sample to (height, width): image bilinear, labels nearest.

  Depth VALUES are unchanged here (see `scale` for the metric correction). Nearest sampling
  keeps classes, the invalid-depth zeros and unit normals exact.
  """
  h, w = sample["image"].shape[:2]
  if (h, w) == (height, width):
    return dict(sample)
  rows, cols = _nearest_index(h, height), _nearest_index(w, width)
  out = {}
  for name, value in sample.items():
    if name == "image":
      out[name] = np.asarray(Image.fromarray(value).resize((width, height), Image.BILINEAR))
    elif value.ndim >= 2 and value.shape[:2] == (h, w):
      out[name] = value[rows[:, None], cols[None, :]]
    else:
      out[name] = value
  return out


def scale(sample: Sample, factor: float) -> Sample:
  """Rescales a sample by `factor` and divides depth by it.

  Zooming in by s makes the scene look s times closer, so metric depth targets are divided
  by s (as in the authors' training code).
  """
  h, w = sample["image"].shape[:2]
  out = resize(sample, max(1, round(h * factor)), max(1, round(w * factor)))
  if "depth" in out:
    out["depth"] = (out["depth"] / np.float32(factor)).astype(np.float32)
  return out


def pad_to(sample: Sample, height: int, width: int) -> Sample:
  """Pads bottom/right up to at least (height, width) with the ignore values of PAD_VALUES."""
  h, w = sample["image"].shape[:2]
  ph, pw = max(0, height - h), max(0, width - w)
  if ph == 0 and pw == 0:
    return dict(sample)
  out = {}
  for name, value in sample.items():
    if value.ndim >= 2 and value.shape[:2] == (h, w):
      pad = [(0, ph), (0, pw)] + [(0, 0)] * (value.ndim - 2)
      out[name] = np.pad(value, pad, constant_values=PAD_VALUES.get(name, 0))
    else:
      out[name] = value
  return out


def pad_to_multiple(sample: Sample, multiple: int = 32) -> Sample:
  """Pads bottom/right so that H and W are multiples of `multiple` (padding is ignored)."""
  h, w = sample["image"].shape[:2]
  return pad_to(sample, -(-h // multiple) * multiple, -(-w // multiple) * multiple)


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
  """Crops the window [top:top+height, left:left+width] of every per-pixel array."""
  h, w = sample["image"].shape[:2]
  return {
      name: value[top : top + height, left : left + width] if value.ndim >= 2 and value.shape[:2] == (h, w) else value
      for name, value in sample.items()
  }


def random_crop(sample: Sample, rng: np.random.Generator, height: int, width: int) -> Sample:
  """Crops a random (height, width) window, padding first with ignore values if smaller."""
  sample = pad_to(sample, height, width)
  h, w = sample["image"].shape[:2]
  top = int(rng.integers(0, h - height + 1))
  left = int(rng.integers(0, w - width + 1))
  return crop(sample, top, left, height, width)


def hflip(sample: Sample) -> Sample:
  """Mirrors left-right; the x component of surface normals changes sign."""
  h, w = sample["image"].shape[:2]
  out = {}
  for name, value in sample.items():
    if value.ndim >= 2 and value.shape[:2] == (h, w):
      value = value[:, ::-1]
      if name == "normals":
        value = value * np.array([-1.0, 1.0, 1.0], value.dtype)
      value = np.ascontiguousarray(value)
    out[name] = value
  return out


def random_hflip(sample: Sample, rng: np.random.Generator, p: float = 0.5) -> Sample:
  """Mirrors with probability p."""
  return hflip(sample) if rng.random() < p else sample


def scale_and_crop(sample: Sample, factor: float, top: int, left: int, height: int, width: int) -> Sample:
  """`crop(scale(sample, factor), top, left, ...)` padded to (height, width), computed directly.

  Only the window is resampled (PIL's `box`), so a 2x zoom costs no more than the crop: the
  labels are exactly those of scale-then-crop and the image matches it up to rounding.
  """
  h, w = sample["image"].shape[:2]
  sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
  wh, ww = min(height, sh - top), min(width, sw - left)
  rows = _nearest_index(h, sh)[top : top + wh]
  cols = _nearest_index(w, sw)[left : left + ww]
  box = (left * w / sw, top * h / sh, (left + ww) * w / sw, (top + wh) * h / sh)
  out = {}
  for name, value in sample.items():
    if name == "image":
      out[name] = np.asarray(Image.fromarray(value).resize((ww, wh), Image.BILINEAR, box=box))
    elif value.ndim >= 2 and value.shape[:2] == (h, w):
      out[name] = value[rows[:, None], cols[None, :]]
    else:
      out[name] = value
  if "depth" in out:
    out["depth"] = (out["depth"] / np.float32(factor)).astype(np.float32)
  return pad_to(out, height, width)


class TrainTransform:
  """Random scale -> random crop (with ignore padding) -> random horizontal flip.

  A picklable callable `(sample, rng) -> sample` for Grain's `random_map`; the output arrays
  have shape (crop_h, crop_w, ...) and C-contiguous memory.
  """

  def __init__(self, crop_size: int | tuple[int, int], scale_range=(0.5, 2.0), flip: bool = True):
    self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    self.scale_range = tuple(scale_range)
    self.flip = flip

  def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample | None:
    if sample is None:  # a bad sample skipped upstream
      return None
    # Same draws and result as `scale` by a uniform factor then random_crop, without
    # resampling the whole zoomed image (up to 4x the pixels at scale 2).
    lo, hi = self.scale_range
    factor = 1.0 if lo == hi == 1.0 else float(rng.uniform(lo, hi))
    h, w = sample["image"].shape[:2]
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    height, width = self.crop_size
    top = int(rng.integers(0, max(sh, height) - height + 1))
    left = int(rng.integers(0, max(sw, width) - width + 1))
    sample = scale_and_crop(sample, factor, top, left, height, width)
    if self.flip:
      sample = random_hflip(sample, rng)
    # (np.ascontiguousarray would make a per-sample scalar, e.g. "depth_relative", 1-d.)
    return {k: np.ascontiguousarray(v) if np.ndim(v) else np.asarray(v)
            for k, v in sample.items()}
