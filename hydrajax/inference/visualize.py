"""Turn predictions into pictures: colour-coded labels, colour-mapped depth, normals, and
side-by-side panels, and the files `predict` / `video` write per image. Pure numpy (no
matplotlib), uint8 RGB out.

    panel = side_by_side(image, colorize_segm(labels, palette_for(40)),
                         colorize_depth(depth, max_depth=8.0))
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from hydrajax.data import registry
from hydrajax.data.kitti import KITTI6_PALETTE  # noqa: F401 (public here too)
from hydrajax.data.palettes import NYUD_PALETTE, generic_palette, voc_colormap  # noqa: F401

# Palettes and depth colour clips (metres) by name: the datasets' own (hydrajax.data.registry)
# plus "generic".
PALETTES = registry.palettes()
DEFAULT_MAX_DEPTH = {**{n: registry.DATASETS[n].display_max_depth for n in PALETTES},
                     "generic": 10.0}
PALETTE_CHOICES = ("auto", *PALETTES, "generic")  # command lines' --palette
# Class count -> palette name for models that do not name their dataset ("auto").
_AUTO = {len(p): n for n, p in reversed(PALETTES.items())}

# Plasma-like colour map: matplotlib's `plasma` sampled at 0, 1/8, ..., 1, interpolated
# linearly in RGB (dark blue-violet for near, yellow for far).
_PLASMA_ANCHORS = np.array([
    [13, 8, 135], [76, 2, 161], [126, 3, 168], [169, 35, 149], [204, 71, 120],
    [229, 107, 93], [248, 148, 65], [253, 195, 40], [240, 249, 33]], np.float64)
_PLASMA_CHUNK = 1 << 18  # values per step of colormap_plasma (its float64 temporaries)


def palette_for(num_classes: int, name: str = "auto") -> np.ndarray:
  """The palette for a model: a name of PALETTES ('nyud' 40 classes, 'kitti' 6), 'generic',
  or 'auto' (chosen from num_classes)."""
  if name == "auto":
    name = _AUTO.get(num_classes, "generic")
  if name == "generic":
    return generic_palette(num_classes)
  if name not in PALETTES:
    raise ValueError(f"unknown palette {name!r}; choose from auto, generic, {', '.join(PALETTES)}")
  return PALETTES[name]


def colorize_segm(labels: np.ndarray, palette: np.ndarray,
                  ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
  """(..., H, W) integer class ids -> (..., H, W, 3) uint8 RGB. Ids outside
  [0, len(palette)) (e.g. 255 = unlabelled) get `ignore_color`."""
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  table = np.concatenate([np.asarray(palette, np.uint8),
                          np.asarray(ignore_color, np.uint8)[None]])
  index = np.where((labels >= 0) & (labels < len(palette)), labels, len(palette))
  return table[index]


def colormap_plasma(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1] (clipped), any shape -> (..., 3) uint8 plasma-like colours."""
  values = np.asarray(values)
  flat = values.reshape(-1)
  rgb = np.empty((flat.size, 3), np.uint8)
  # In chunks: the float64 temporaries of a whole 12-megapixel map would take ~1 GB.
  for start in range(0, flat.size, _PLASMA_CHUNK):
    rgb[start:start + _PLASMA_CHUNK] = _plasma(flat[start:start + _PLASMA_CHUNK])
  return rgb.reshape(values.shape + (3,))


def _plasma(values: np.ndarray) -> np.ndarray:
  """(n,) values -> (n, 3) uint8 plasma colours."""
  v = np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=0.0), 0.0, 1.0)
  pos = v * (len(_PLASMA_ANCHORS) - 1)
  i0 = np.minimum(np.floor(pos).astype(np.int64), len(_PLASMA_ANCHORS) - 2)
  w = (pos - i0)[..., None]
  rgb = _PLASMA_ANCHORS[i0] * (1 - w) + _PLASMA_ANCHORS[i0 + 1] * w
  return np.round(rgb).astype(np.uint8)


def colorize_depth(depth: np.ndarray, max_depth: float,
                   invalid_color: Sequence[int] | None = None) -> np.ndarray:
  """(..., H, W) depth in metres -> (..., H, W, 3) uint8, clipped to [0, max_depth] m
  (0 m darkest, max_depth brightest; the authors' display: 8 m NYUD, 80 m KITTI).
  With `invalid_color`, pixels <= 0 or non-finite (missing ground truth) get that colour."""
  if max_depth <= 0:
    raise ValueError(f"max_depth must be positive, got {max_depth}")
  depth = np.asarray(depth, np.float64)
  rgb = colormap_plasma(np.abs(depth) / max_depth)
  if invalid_color is not None:
    invalid = ~np.isfinite(depth) | (depth <= 0)
    rgb[invalid] = np.asarray(invalid_color, np.uint8)
  return rgb


def colorize_normals(normals: np.ndarray) -> np.ndarray:
  """(..., H, W, 3) unit normals in [-1, 1] -> uint8 RGB ((n + 1) / 2 * 255)."""
  n = np.nan_to_num(np.asarray(normals, np.float64))
  return np.round((np.clip(n, -1, 1) + 1) * 127.5).astype(np.uint8)


def side_by_side(*images: np.ndarray, gap: int = 4, background: int = 255) -> np.ndarray:
  """Join (H, W, 3) or (H, W) uint8 images left to right, `gap` pixels apart, top-aligned
  on a `background` canvas (images of different heights are allowed)."""
  if not images:
    raise ValueError("side_by_side needs at least one image")
  panels = []
  for img in images:
    img = np.asarray(img)
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
      raise ValueError(f"expected (H, W, 3) or (H, W) images, got shape {img.shape}")
    panels.append(img.astype(np.uint8))
  height = max(p.shape[0] for p in panels)
  width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
  canvas = np.full((height, width, 3), background, np.uint8)
  x = 0
  for p in panels:
    canvas[:p.shape[0], x:x + p.shape[1]] = p
    x += p.shape[1] + gap
  return canvas


def display_settings(num_classes: int, palette: str = "auto",
                     max_depth: float | None = None) -> tuple[np.ndarray, float]:
  """(palette array, depth clip in metres) for a model with `num_classes` (0: depth only):
  NYUD colours and 8 m for 40 classes, KITTI colours and 80 m for 6, a generic palette and
  10 m otherwise, unless overridden."""
  name = palette if palette != "auto" else _AUTO.get(num_classes, "generic")
  colours = palette_for(max(num_classes, 1), name)
  return colours, float(max_depth if max_depth is not None else DEFAULT_MAX_DEPTH[name])


def settings_for(variables: Mapping, palette: str = "auto", max_depth: float | None = None
                 ) -> tuple[np.ndarray, float]:
  """`display_settings` for a model, preferring with "auto" the palette and the dataset's
  depth clip stored in its weights' metadata (variables["meta"]: palette, dataset)."""
  from hydrajax import api

  meta = variables.get(api.META_KEY) or {}
  num_classes = api.model_config(variables)["num_classes"]
  colours, clip = display_settings(num_classes, palette, max_depth)
  if palette == "auto" and meta.get("palette") is not None:
    colours = np.asarray(meta["palette"], np.uint8)
  if max_depth is None and meta.get("dataset") in registry.DATASETS:
    clip = float(registry.DATASETS[meta["dataset"]].display_max_depth)
  return colours, clip


def render(image: np.ndarray, outputs: Mapping[str, np.ndarray], palette: np.ndarray,
           max_depth: float) -> dict[str, np.ndarray]:
  """Image-resolution outputs -> images to save, keyed by file suffix: "vis" (side by side),
  "segm" (label ids), "depth" (uint16 mm), "normals" (RGB). `outputs` are `hydrajax.apply`'s
  ("segm" logits (H, W, C)) or `full_res.dense_predictions`' ("segm" class ids (H, W))."""
  panels, files = [image], {}
  if "segm" in outputs:
    labels = np.asarray(outputs["segm"])
    if not np.issubdtype(labels.dtype, np.integer):
      labels = labels.argmax(-1)
    files["segm"] = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    panels.append(colorize_segm(labels, palette))
  if "depth" in outputs:
    depth = np.asarray(outputs["depth"], np.float64)
    files["depth"] = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    panels.append(colorize_depth(depth, max_depth))
  if "normals" in outputs:
    files["normals"] = colorize_normals(outputs["normals"])
    panels.append(files["normals"])
  files["vis"] = side_by_side(*panels)
  return files
