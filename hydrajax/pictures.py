"""The evaluation picture: one row per example, image | true segm | predicted segm |
true depth | predicted depth. Uses hydrajax.visualize's colourings when present (the
project's shared palette), else a small built-in palette and a grey-to-yellow depth ramp."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from hydrajax import visualize


def colorize_segm(labels: np.ndarray) -> np.ndarray:
  """(H, W) class ids -> RGB uint8 with the generic palette (255 = ignore is black)."""
  return visualize.colorize_segm(labels, visualize.palette_for(256, "generic"))


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
  """Metres -> RGB uint8, clipped to [0, max_depth] (default: the largest value)."""
  depth = np.asarray(depth, np.float32)
  top = max_depth or float(depth.max()) or 1.0
  return visualize.colorize_depth(depth, top)


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
