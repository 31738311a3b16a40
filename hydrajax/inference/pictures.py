"""The evaluation picture: one row per example, image | true segm | predicted segm |
true depth | predicted depth, with titles and a legend, in hydrajax.inference.visualize's
colourings (the dataset's palette and depth colour map)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hydrajax.runtime import atomic
from hydrajax.inference import visualize


def colorize_segm(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
  """(H, W) class ids -> RGB uint8 with `palette` (default: the generic one; 255 = ignore
  and ids past the palette are black)."""
  if palette is None:
    palette = visualize.palette_for(256, "generic")
  return visualize.colorize_segm(labels, palette)


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
  """Metres -> RGB uint8, clipped to [0, max_depth] (default: the largest value)."""
  depth = np.asarray(depth, np.float32)
  top = max_depth or float(depth.max()) or 1.0
  return visualize.colorize_depth(depth, top)


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def legend(ids: Sequence[int], palette: np.ndarray, names: Sequence[str], width: int,
           size: int = 12) -> np.ndarray:
  """A white strip, `width` pixels wide, with a colour swatch and the name of each class id
  in `ids`, wrapped over as many lines as needed."""
  font, line, pad = _font(size), size + 6, 4
  items = [(np.asarray(palette[i], np.uint8), names[i] if i < len(names) else str(i))
           for i in ids if i < len(palette)]
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  places, x, y = [], pad, pad
  for colour, name in items:
    w = size + 4 + int(measure.textlength(name, font=font)) + 3 * pad
    if x + w > width and x > pad:
      x, y = pad, y + line
    places.append((x, y, colour, name))
    x += w
  strip = Image.new("RGB", (width, y + line + pad), "white")
  draw = ImageDraw.Draw(strip)
  for x, y, colour, name in places:
    draw.rectangle([x, y + 2, x + size, y + size + 2], fill=tuple(int(c) for c in colour),
                   outline="black")
    draw.text((x + size + 4, y + 1), name, fill="black", font=font)
  return np.asarray(strip)


def _title_row(titles: Sequence[str], widths: Sequence[int], gap: int) -> np.ndarray:
  """A white strip with each column's title, sized to the cells."""
  size = int(np.clip(min(widths) // 9, 10, 28))
  font = _font(size)
  strip = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), size + 8), "white")
  draw = ImageDraw.Draw(strip)
  x = 0
  for title, w in zip(titles, widths):
    draw.text((x + 2, 3), title, fill="black", font=font)
    x += w + gap
  return np.asarray(strip)


def save_grid(path: str, samples: Sequence[dict], max_depth: float | None = None,
              palette: np.ndarray | None = None, class_names: Sequence[str] | None = None
              ) -> None:
  """Write a PNG grid of `samples` (dicts from hydrajax.evaluate.loop) atomically, one row per
  example under a row of column titles; depth colours span 0..max_depth (default: the
  largest true depth of all rows), given in the title. Segmentation in `palette` (default
  generic); with `class_names`, a legend of the classes shown under the grid."""
  gap = 4
  rows, titles = [], []
  top = max_depth or max([float(np.max(s.get("depth", 0))) for s in samples] + [1e-3])
  for s in samples:
    cells = [np.asarray(s["image"], np.uint8)]
    titles = ["image"]
    if "segm" in s:
      cells += [colorize_segm(s["segm"], palette), colorize_segm(s["pred_segm"], palette)]
      titles += ["true segm", "pred segm"]
    if "depth" in s:
      cells += [colorize_depth(s["depth"], top), colorize_depth(s["pred_depth"], top)]
      titles += [f"true depth 0-{top:.3g} m", "pred depth"]
    spacer = np.full((cells[0].shape[0], gap, 3), 255, np.uint8)
    rows.append(np.concatenate([x for c in cells for x in (c, spacer)][:-1], axis=1))
  if samples:
    rows.insert(0, _title_row(titles, [c.shape[1] for c in cells], gap))
  width = max(r.shape[1] for r in rows)
  if class_names and any("segm" in s for s in samples):
    shown = sorted({int(v) for s in samples if "segm" in s
                    for v in np.unique(np.concatenate([np.ravel(s["segm"]),
                                                       np.ravel(s["pred_segm"])]))})
    colours = palette if palette is not None else visualize.palette_for(256, "generic")
    rows.append(legend([i for i in shown if i < len(class_names)], colours, class_names,
                       width))
  rows = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255)
          for r in rows]
  grid = np.concatenate(rows, axis=0)
  atomic.write_atomic(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
