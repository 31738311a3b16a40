"""The evaluation picture: one row per example, image | true segm | predicted segm |
true depth | predicted depth. Uses hydrajax.visualize's colourings when present (the
project's shared palette), else a small built-in palette and a grey-to-yellow depth ramp."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image


def _palette(n: int = 256) -> np.ndarray:
  """Distinct colours per class id (PASCAL-style bit interleaving); 255 -> black."""
  pal = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i + 1, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = (r, g, b)
  pal[255] = 0
  return pal


def colorize_segm(labels: np.ndarray) -> np.ndarray:
  try:
    from hydrajax.visualize import colorize_segm as shared
    return np.asarray(shared(labels), np.uint8)
  except ImportError:
    return _palette()[np.asarray(labels, np.uint8)]


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
  """Metres -> RGB uint8 (near dark, far bright); 0 (invalid) is black."""
  try:
    from hydrajax.visualize import colorize_depth as shared
    return np.asarray(shared(depth, max_depth=max_depth), np.uint8)
  except ImportError:
    pass
  depth = np.asarray(depth, np.float32)
  top = max_depth or float(depth.max()) or 1.0
  t = np.clip(depth / top, 0.0, 1.0)
  rgb = np.stack([t, t ** 0.7 * 0.85, 0.35 * (1.0 - t)], axis=-1)
  rgb[depth <= 0] = 0.0
  return (rgb * 255).astype(np.uint8)


def save_grid(path: str, samples: Sequence[dict], max_depth: float | None = None) -> None:
  """Write a PNG grid of `samples` (dicts from hydrajax.evaluate) atomically."""
  rows = []
  for s in samples:
    top = max_depth or float(max(np.max(s.get("depth", 0)), 1e-3))
    cells = [np.asarray(s["image"], np.uint8)]
    if "segm" in s:
      cells += [colorize_segm(s["segm"]), colorize_segm(s["pred_segm"])]
    if "depth" in s:
      cells += [colorize_depth(s["depth"], top), colorize_depth(s["pred_depth"], top)]
    gap = np.full((cells[0].shape[0], 4, 3), 255, np.uint8)
    rows.append(np.concatenate([x for c in cells for x in (c, gap)][:-1], axis=1))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
  grid = np.concatenate(rows, axis=0)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.png"
  Image.fromarray(grid).save(tmp)
  os.replace(tmp, path)
