"""Class colour tables: the PASCAL-VOC map, the generic palette built from it, NYUD's."""
from __future__ import annotations

import numpy as np


def voc_colormap(n: int = 256) -> np.ndarray:
  """(n, 3) uint8 PASCAL-VOC bit-interleaved colour map (row i = colour of id i)."""
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap[i] = (r, g, b)
  return cmap


def generic_palette(num_classes: int) -> np.ndarray:
  """(num_classes, 3) uint8 distinct colours (VOC map without black) for other datasets."""
  return voc_colormap(num_classes + 1)[1:]


# The authors' NYUD notebook colours label l with CMAP[l + 1] of the VOC map (255 wraps to
# black), so class i's colour is row i + 1: identical to the published cmap_nyud.npy.
NYUD_PALETTE = voc_colormap(41)[1:]
