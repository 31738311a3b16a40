"""Metric point clouds from predicted depth: pinhole back-projection and binary PLY files.

    cloud = hydrajax.points(depth, Intrinsics(518.8579, 519.4696, 325.5824, 253.7362, 640, 480),
                            colors=image, labels=labels)
    points.write_ply("scene.ply", cloud, palette)

Camera frame (OpenCV's): x right, y down, z forward along the optical axis, in metres; a pixel
(u, v) with depth z (the network's depth is the distance along the optical axis, as Kinect's
and KITTI's ground truth) goes to ((u - cx) z / fx, (v - cy) z / fy, z), with pixel centres
at integer coordinates.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any, Mapping

import numpy as np

from hydrajax import api
from hydrajax.runtime import atomic


# The largest |x/z| or |y/z| a pixel's ray may have: tan of a half field of view within
# 1e-4 degrees of 180, beyond any real pinhole camera; points stay far inside float32.
MAX_RAY_SLOPE = 1e6


@dataclasses.dataclass(frozen=True)
class Intrinsics:
  """Pinhole intrinsics in pixels (fx, fy focal lengths, cx, cy principal point) of images
  `width` x `height` pixels; `source` says where they came from (printed by the CLI)."""
  fx: float
  fy: float
  cx: float
  cy: float
  width: int
  height: int
  source: str = ""

  def __post_init__(self):
    values = (self.fx, self.fy, self.cx, self.cy)
    if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
      raise ValueError(f"intrinsics need finite fx, fy > 0 and finite cx, cy, got "
                       f"fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy}")
    if self.width < 1 or self.height < 1:
      raise ValueError(f"intrinsics need an image size >= 1x1, got {self.width}x{self.height}")
    # The image's farthest pixel from the principal point, in focal lengths (x/z, y/z of its
    # ray): a focal length far below the image's size (e.g. a subnormal 5e-320) overflows it,
    # and every point with it.
    reach = max((abs(self.cx) + self.width) / self.fx, (abs(self.cy) + self.height) / self.fy)
    if not reach <= MAX_RAY_SLOPE:
      raise ValueError(f"intrinsics fx={self.fx}, fy={self.fy} are too small for a "
                       f"{self.width}x{self.height} image with cx={self.cx}, cy={self.cy}: its "
                       f"pixels would lie up to {reach:.3g} focal lengths off the optical axis "
                       f"(a field of view of 180 degrees); fx, fy are pixels, near the image's "
                       f"width for most cameras")

  def scaled(self, height: int, width: int) -> "Intrinsics":
    """The same camera for the image resized to (height, width): focal lengths scale with
    the size, the principal point keeps its place in the half-pixel convention of a resize
    (the image's edges, at -0.5 and size - 0.5, stay the edges)."""
    if (height, width) == (self.height, self.width):
      return self
    sx, sy = width / self.width, height / self.height
    return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy,
                               cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5,
                               width=width, height=height)

  def describe(self) -> str:
    return (f"fx={self.fx:.4g} fy={self.fy:.4g} cx={self.cx:.4g} cy={self.cy:.4g} at "
            f"{self.width}x{self.height}" + (f" ({self.source})" if self.source else ""))


# Dataset defaults, at the size the cameras recorded.
NYUD_KINECT = Intrinsics(518.8579, 519.4696, 325.5824, 253.7362, 640, 480,
                         "NYUDv2 Kinect defaults")
# KITTI raw 2011_09_26, camera 2 (left colour), rectified: its P2 matrix.
KITTI_P2 = Intrinsics(721.5377, 721.5377, 609.5593, 172.854, 1242, 375,
                      "KITTI 2011_09_26 P2 defaults")
DATASET_DEFAULTS = {40: NYUD_KINECT, 6: KITTI_P2}  # by number of classes


def from_fov(fov_degrees: float, height: int, width: int) -> Intrinsics:
  """Square-pixel intrinsics of a `width` x `height` image whose horizontal field of view is
  `fov_degrees`, principal point at the centre."""
  if not 0 < fov_degrees < 180:
    raise ValueError(f"--fov must be a horizontal field of view in degrees in (0, 180), "
                     f"got {fov_degrees}")
  f = (width / 2) / math.tan(math.radians(fov_degrees) / 2)
  return Intrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height,
                    f"--fov {fov_degrees:g}")


def parse_intrinsics(text: str, height: int, width: int) -> Intrinsics:
  """"fx,fy,cx,cy" (pixels, at the image's own size) -> Intrinsics."""
  try:
    fx, fy, cx, cy = (float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"--intrinsics must be four numbers fx,fy,cx,cy in pixels, got "
                     f"{text!r}") from None
  return Intrinsics(fx, fy, cx, cy, width, height, f"--intrinsics {text}")


def from_mapping(value: Mapping[str, Any], source: str) -> Intrinsics:
  """{"fx", "fy", "cx", "cy", "width", "height"} (e.g. weights metadata) -> Intrinsics;
  a missing or non-numeric key raises ValueError naming it and `source`."""
  keys = ("fx", "fy", "cx", "cy", "width", "height")
  missing = [k for k in keys if k not in value]
  if missing:
    raise ValueError(f"{source}: intrinsics lack {', '.join(missing)} (need {', '.join(keys)})")
  try:
    return Intrinsics(*(float(value[k]) for k in keys[:4]), int(value["width"]),
                      int(value["height"]), source)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: bad intrinsics {dict(value)}: {e}") from None


@dataclasses.dataclass
class CameraChoice:
  """Where an image's intrinsics come from: the CLI's `--intrinsics` text or `--fov` degrees
  (both for the image's own size), else `stored` (weights metadata) or `default` (the
  dataset's camera), rescaled by `points`. Each distinct choice is printed once."""
  intrinsics: str | None = None
  fov: float | None = None
  stored: Intrinsics | None = None
  default: Intrinsics | None = None
  printed: set = dataclasses.field(default_factory=set)
  last: Intrinsics | None = None  # the latest choice

  def for_image(self, height: int, width: int) -> Intrinsics:
    if self.intrinsics is not None:
      k = parse_intrinsics(self.intrinsics, height, width)
    elif self.fov is not None:
      k = from_fov(self.fov, height, width)
    else:
      k = self.stored or self.default
    if k.describe() not in self.printed:
      self.printed.add(k.describe())
      print(f"point clouds: intrinsics {k.describe()}")
    self.last = k
    aspect = (width / height) / (k.width / k.height)
    if not 0.95 < aspect < 1.05 and (k.describe(), height, width) not in self.printed:
      self.printed.add((k.describe(), height, width))
      print(f"warning: those intrinsics are for {k.width}x{k.height} images, stretched to "
            f"{width}x{height} (another aspect ratio, so probably another camera): give "
            f"--intrinsics or --fov for it", file=sys.stderr)
    return k


def camera_choice(variables: Mapping[str, Any] | Any, intrinsics: str | None = None,
                  fov: float | None = None, weights_path: str = "weights",
                  fallback_fov: float | None = None) -> CameraChoice:
  """The camera for a model's point clouds: explicit arguments first, then the intrinsics in
  `variables["meta"]` (weights metadata), then the dataset default for its class count,
  then `fallback_fov` degrees; with none of them, ValueError saying what to give."""
  # Checked before any image is processed.
  if intrinsics is not None:
    parse_intrinsics(intrinsics, 1, 1)
  if fov is not None:
    from_fov(fov, 1, 1)
  # Weights carry metadata; an exported graph (onnx_runner.OnnxModel) only its class count.
  is_weights = isinstance(variables, Mapping)
  stored = (variables.get(api.META_KEY) or {}).get("intrinsics") if is_weights else None
  stored = from_mapping(stored, f"{weights_path} metadata") if stored else None
  num_classes = (api.model_config(variables) if is_weights else variables.config())["num_classes"]
  default = DATASET_DEFAULTS.get(num_classes)
  if intrinsics is None and fov is None and stored is None and default is None:
    if fallback_fov is not None:
      return CameraChoice(None, fallback_fov, None, None)
    raise ValueError(f"--points needs the camera: give --intrinsics fx,fy,cx,cy or --fov DEG "
                     f"({weights_path} stores no intrinsics and {num_classes} classes match "
                     f"no dataset default)")
  return CameraChoice(intrinsics, fov, stored, default)


@dataclasses.dataclass
class PointCloud:
  """xyz: (N, 3) float32 metres in the camera frame; colors: (N, 3) uint8 or None;
  labels: (N,) class ids or None; pixels: (N, 2) int (row, column) each point came from."""
  xyz: np.ndarray
  colors: np.ndarray | None
  labels: np.ndarray | None
  pixels: np.ndarray


def points(depth: Any, intrinsics: Intrinsics, *, colors: Any = None, labels: Any = None,
           stride: int = 1) -> PointCloud:
  """Back-project a depth map to metric 3D points (pinhole model).

  Args:
    depth: (H, W) metres along the optical axis; 0, negative or non-finite pixels are dropped.
    intrinsics: of the image the depth belongs to, at any size: rescaled to (H, W).
    colors: optional (H, W, 3) uint8 RGB, one per pixel (e.g. the input image).
    labels: optional (H, W) integer class ids, or (H, W, C) logits (argmax taken).
    stride: keep every stride-th row and column (fewer points, same coordinates).
  Returns:
    a PointCloud with one point per valid kept pixel, in row-major pixel order.
  """
  depth = np.asarray(depth)
  if depth.ndim != 2:
    raise ValueError(f"depth must be one (H, W) map in metres, got shape {depth.shape}")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  h, w = depth.shape
  k = intrinsics.scaled(h, w)
  rows, cols = np.arange(0, h, stride), np.arange(0, w, stride)
  z = depth[::stride, ::stride].astype(np.float64)
  valid = np.isfinite(z) & (z > 0)
  r, c = np.nonzero(valid)
  z = z[r, c]
  u, v = cols[c].astype(np.float64), rows[r].astype(np.float64)
  xyz = np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=-1).astype(np.float32)
  if not np.isfinite(xyz).all():
    raise ValueError(f"depth up to {z.max():.3g} m with intrinsics {k.describe()} gives points "
                     f"beyond float32's range")
  pixels = np.stack([rows[r], cols[c]], axis=-1)
  out_colors = out_labels = None
  if colors is not None:
    colors = np.asarray(colors)
    if colors.shape[:2] != (h, w) or colors.ndim != 3 or colors.shape[-1] != 3:
      raise ValueError(f"colors must be (H, W, 3) = {(h, w, 3)} like depth, got {colors.shape}")
    out_colors = np.asarray(colors[pixels[:, 0], pixels[:, 1]], np.uint8)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.ndim == 3:
      labels = labels.argmax(-1)
    if labels.shape != (h, w) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must be (H, W) = {(h, w)} integer ids or (H, W, C) logits, "
                       f"got {labels.shape} {labels.dtype}")
    out_labels = labels[pixels[:, 0], pixels[:, 1]]
  return PointCloud(xyz, out_colors, out_labels, pixels)


def ply_data(cloud: PointCloud, palette: np.ndarray | None = None):
  """A plyfile.PlyData (binary little-endian) with one `vertex` element: x, y, z float32,
  red, green, blue uint8 (the image's colour), `label` (uint16 class id) and class_red,
  class_green, class_blue (the class's palette colour) where labels are given."""
  import plyfile
  fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
  columns = {"x": cloud.xyz[:, 0], "y": cloud.xyz[:, 1], "z": cloud.xyz[:, 2]}
  if cloud.colors is not None:
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    columns.update(red=cloud.colors[:, 0], green=cloud.colors[:, 1], blue=cloud.colors[:, 2])
  if cloud.labels is not None:
    fields.append(("label", "u2"))
    columns["label"] = cloud.labels
    if palette is not None:
      palette = np.asarray(palette, np.uint8)
      inside = (cloud.labels >= 0) & (cloud.labels < len(palette))
      class_rgb = np.where(inside[:, None], palette[np.where(inside, cloud.labels, 0)], 0)
      fields += [("class_red", "u1"), ("class_green", "u1"), ("class_blue", "u1")]
      columns.update(class_red=class_rgb[:, 0], class_green=class_rgb[:, 1],
                     class_blue=class_rgb[:, 2])
  vertex = np.empty(len(cloud.xyz), dtype=fields)
  for name, column in columns.items():
    vertex[name] = column
  element = plyfile.PlyElement.describe(vertex, "vertex")
  return plyfile.PlyData([element], text=False, byte_order="<",
                         comments=["hydrajax point cloud: metres, camera frame x right, "
                                   "y down, z forward",
                                   "red/green/blue: image colour; label: class id; "
                                   "class_red/green/blue: class colour"])


def write_ply(path: str | os.PathLike, cloud: PointCloud,
              palette: np.ndarray | None = None) -> None:
  """Write `cloud` as a binary PLY (see `ply_data`) atomically."""
  data = ply_data(cloud, palette)
  atomic.write_atomic(os.fspath(path), data.write)
