"""The evaluation picture: one row per example, image | true segm | predicted segm |
true depth | predicted depth. Uses hydrajax.inference.visualize's colourings when present (the
project's shared palette), else a small built-in palette and a grey-to-yellow depth ramp."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hydrajax.runtime import atomic
from hydrajax.inference import visualize


def colorize_segm(labels: np.ndarray) -> np.ndarray:
  """(H, W) class ids -> RGB uint8 with the generic palette (255 = ignore is black)."""
  return visualize.colorize_segm(labels, visualize.palette_for(256, "generic"))


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
  """Metres -> RGB uint8, clipped to [0, max_depth] (default: the largest value)."""
  depth = np.asarray(depth, np.float32)
  top = max_depth or float(depth.max()) or 1.0
  return visualize.colorize_depth(depth, top)


def _title_row(titles: Sequence[str], widths: Sequence[int], gap: int) -> np.ndarray:
  """A white strip with each column's title, sized to the cells."""
  size = int(np.clip(min(widths) // 9, 10, 28))
  try:
    font = ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    font = ImageFont.load_default()
  strip = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), size + 8), "white")
  draw = ImageDraw.Draw(strip)
  x = 0
  for title, w in zip(titles, widths):
    draw.text((x + 2, 3), title, fill="black", font=font)
    x += w + gap
  return np.asarray(strip)


def save_grid(path: str, samples: Sequence[dict], max_depth: float | None = None) -> None:
  """Write a PNG grid of `samples` (dicts from hydrajax.evaluate.loop) atomically, one row per
  example under a row of column titles; depth colours span 0..max_depth (default: the
  largest true depth of all rows), given in the title."""
  gap = 4
  rows, titles = [], []
  top = max_depth or max([float(np.max(s.get("depth", 0))) for s in samples] + [1e-3])
  for s in samples:
    cells = [np.asarray(s["image"], np.uint8)]
    titles = ["image"]
    if "segm" in s:
      cells += [colorize_segm(s["segm"]), colorize_segm(s["pred_segm"])]
      titles += ["true segm", "pred segm"]
    if "depth" in s:
      cells += [colorize_depth(s["depth"], top), colorize_depth(s["pred_depth"], top)]
      titles += [f"true depth 0-{top:.3g} m", "pred depth"]
    spacer = np.full((cells[0].shape[0], gap, 3), 255, np.uint8)
    rows.append(np.concatenate([x for c in cells for x in (c, spacer)][:-1], axis=1))
  if samples:
    rows.insert(0, _title_row(titles, [c.shape[1] for c in cells], gap))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255)
          for r in rows]
  grid = np.concatenate(rows, axis=0)
  atomic.write_atomic(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
