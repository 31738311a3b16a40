"""ROS messages <-> arrays: camera images in, segmentation, depth, point clouds and camera info
out, as `rosbags` message objects of ROS 1 or ROS 2 (hydrajax/inference/bag.py writes them).

Incoming `sensor_msgs/Image` in rgb8, bgr8, rgba8, bgra8, mono8 or their 16-bit variants
(scaled 65535 -> 255, as `pngio.to_rgb` scales 16-bit PNGs) and `sensor_msgs/CompressedImage`
in JPEG or PNG become (H, W, 3) RGB uint8. Outgoing depth is 32FC1 metres (REP 118), labels
mono8 (mono16 above 256 classes), point clouds x, y, z float32 metres in the camera's optical
frame (x right, y down, z forward), rgb packed into a float32 (PCL's convention, which RViz and
Foxglove read) and the class id `label`.

`--undistort` maps plumb_bob images to the pinhole camera of their K with the closed-form
distortion map OpenCV's initUndistortRectifyMap computes, sampled bilinearly by
`scipy.ndimage.map_coordinates` (scipy is already a dependency; OpenCV is not needed).
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image as PILImage

from hydrajax.data import pngio
from hydrajax.inference import points as points_lib

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTS = "sensor_msgs/msg/PointCloud2"
IMAGE_TYPES = (IMAGE, COMPRESSED)

# encoding -> (channels, bytes per channel, channel order)
RAW_ENCODINGS = {
    "rgb8": (3, 1, "rgb"), "bgr8": (3, 1, "bgr"), "rgba8": (4, 1, "rgb"),
    "bgra8": (4, 1, "bgr"), "mono8": (1, 1, "mono"),
    "rgb16": (3, 2, "rgb"), "bgr16": (3, 2, "bgr"), "rgba16": (4, 2, "rgb"),
    "bgra16": (4, 2, "bgr"), "mono16": (1, 2, "mono"),
}
COMPRESSED_FORMATS = ("JPEG", "PNG")
PLUMB_BOB = ("plumb_bob", "rational_polynomial")  # the models --undistort handles (5 or 8 terms)


class UnsupportedImage(ValueError):
  """An image message hydrajax cannot read (its encoding or format), named with its topic."""


def to_rgb(msg: Any, topic: str, max_pixels: int = pngio.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """A sensor_msgs/Image or CompressedImage -> (H, W, 3) RGB uint8; UnsupportedImage names
  the topic and the encoding (or format) for anything else, ValueError for a message whose
  data does not hold its stated size."""
  if hasattr(msg, "encoding"):
    return _raw_to_rgb(msg, topic, max_pixels)
  fmt = str(msg.format)
  if "compresseddepth" in fmt.lower().replace(" ", ""):
    raise UnsupportedImage(f"{topic}: CompressedImage format {fmt!r} (compressed depth) is not "
                           f"a camera image; give a colour or mono image topic")
  try:
    im = PILImage.open(io.BytesIO(bytes(msg.data)), formats=COMPRESSED_FORMATS)
  except Exception as e:  # noqa: BLE001 - PIL raises several types for unknown bytes
    raise UnsupportedImage(f"{topic}: CompressedImage format {fmt!r} is not JPEG or PNG "
                           f"({type(e).__name__})") from None
  with im:
    w, h = im.size
    if w * h > max_pixels:
      raise ValueError(f"{topic}: {w}x{h} images exceed the limit of {max_pixels} pixels "
                       "(--max-pixels)")
    try:
      im.load()
    except Exception as e:  # noqa: BLE001 - truncated JPEG/PNG data
      raise ValueError(f"{topic}: a corrupt {im.format} image ({e})") from None
    return pngio.to_rgb(im)


def _raw_to_rgb(msg: Any, topic: str, max_pixels: int) -> np.ndarray:
  encoding = str(msg.encoding)
  if encoding not in RAW_ENCODINGS:
    raise UnsupportedImage(f"{topic}: Image encoding {encoding!r} is not supported (give one "
                           f"of {', '.join(RAW_ENCODINGS)} or a JPEG/PNG CompressedImage)")
  channels, size, order = RAW_ENCODINGS[encoding]
  h, w, step = int(msg.height), int(msg.width), int(msg.step)
  if h * w > max_pixels:
    raise ValueError(f"{topic}: {w}x{h} images exceed the limit of {max_pixels} pixels "
                     "(--max-pixels)")
  data = np.asarray(msg.data, np.uint8)
  row = w * channels * size
  if h < 1 or w < 1 or step < row or data.size < step * (h - 1) + row:
    raise ValueError(f"{topic}: a {encoding} image of {w}x{h} (step {step}) with "
                     f"{data.size} bytes of data")
  rows = np.lib.stride_tricks.as_strided(data, (h, row), (step, 1))
  if size == 2:
    dtype = ">u2" if msg.is_bigendian else "<u2"
    wide = np.ascontiguousarray(rows).view(dtype).astype(np.int64)
    pixels = ((wide * 255 + 32767) // 65535).astype(np.uint8)
  else:
    pixels = rows
  pixels = pixels.reshape(h, w, channels)
  if order == "mono":
    return np.repeat(pixels, 3, axis=-1)
  rgb = pixels[..., :3]
  return np.ascontiguousarray(rgb[..., ::-1] if order == "bgr" else rgb)


# ---- camera info ----

def info_field(msg: Any, name: str) -> np.ndarray:
  """CameraInfo's k, d, r or p (lower case in ROS 2, upper case in ROS 1) as float64."""
  return np.asarray(getattr(msg, name, None) if hasattr(msg, name)
                    else getattr(msg, name.upper()), np.float64)


def intrinsics_of(info: Any, topic: str) -> points_lib.Intrinsics | None:
  """The pinhole intrinsics in a CameraInfo (None for an uncalibrated camera: K all zero)."""
  k = info_field(info, "k").reshape(3, 3)
  if not k.any():
    return None
  return points_lib.Intrinsics(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]),
                               int(info.width), int(info.height), f"CameraInfo on {topic}")


def distortion(info: Any) -> tuple[str, np.ndarray]:
  """(model, coefficients) of a CameraInfo; coefficients all zero mean none."""
  return str(info.distortion_model), info_field(info, "d")


@dataclasses.dataclass
class Undistorter:
  """Maps images of a plumb_bob (or rational_polynomial) camera to the pinhole camera of the
  same K: the sampling positions are computed once per image size."""
  k: points_lib.Intrinsics
  d: np.ndarray
  _coords: np.ndarray | None = None

  def __call__(self, image: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    h, w = image.shape[:2]
    if self._coords is None or self._coords.shape[1:] != (h, w):
      self._coords = self._map(h, w)
    return np.stack([ndimage.map_coordinates(image[..., c], self._coords, order=1,
                                             mode="constant", cval=0)
                     for c in range(image.shape[-1])], axis=-1)

  def _map(self, h: int, w: int) -> np.ndarray:
    """(2, H, W) source (row, column) in the distorted image of each undistorted pixel."""
    k = self.k.scaled(h, w)
    d = np.zeros(8)
    d[:min(8, self.d.size)] = self.d[:8]
    k1, k2, p1, p2, k3, k4, k5, k6 = d
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (u - k.cx) / k.fx, (v - k.cy) / k.fy
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([yd * k.fy + k.cy, xd * k.fx + k.cx])


# ---- outgoing messages ----

def header(ts: Any, stamp_ns: int, frame_id: str) -> Any:
  """std_msgs/Header of typestore `ts` (ROS 1's has a seq, left 0)."""
  cls = ts.types["std_msgs/msg/Header"]
  stamp = ts.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9,
                                                  nanosec=stamp_ns % 10**9)
  extra = {"seq": 0} if "seq" in cls.__dataclass_fields__ else {}
  return cls(**extra, stamp=stamp, frame_id=frame_id)


def image_msg(ts: Any, hdr: Any, array: np.ndarray, encoding: str) -> Any:
  """An (H, W) or (H, W, C) array as sensor_msgs/Image in `encoding` (little-endian)."""
  array = np.ascontiguousarray(array)
  h, w = array.shape[:2]
  return ts.types[IMAGE](header=hdr, height=h, width=w, encoding=encoding, is_bigendian=0,
                         step=array.nbytes // h, data=array.reshape(-1).view(np.uint8))


def labels_msg(ts: Any, hdr: Any, labels: np.ndarray) -> Any:
  """Class ids as mono8 (mono16 for ids above 255)."""
  if labels.max(initial=0) < 256:
    return image_msg(ts, hdr, labels.astype(np.uint8), "mono8")
  return image_msg(ts, hdr, labels.astype("<u2"), "mono16")


def depth_msg(ts: Any, hdr: Any, depth: np.ndarray) -> Any:
  """Depth in metres as 32FC1 (REP 118)."""
  return image_msg(ts, hdr, np.asarray(depth, "<f4"), "32FC1")


def camera_info_msg(ts: Any, hdr: Any, k: points_lib.Intrinsics, source: Any | None,
                    undistorted: bool) -> Any:
  """CameraInfo for images of k's size: the source message's fields (R, D, P's baseline)
  rescaled like K, or a plain pinhole camera when there is no source; D zeroed when the
  images were undistorted."""
  upper = "K" in ts.types[CAMERA_INFO].__dataclass_fields__
  model, d, r = "plumb_bob", np.zeros(5), np.eye(3)
  p = np.array([[k.fx, 0, k.cx, 0], [0, k.fy, k.cy, 0], [0, 0, 1, 0]], np.float64)
  if source is not None:
    model, d = distortion(source)
    r = info_field(source, "r").reshape(3, 3)
    src_p = info_field(source, "p").reshape(3, 4)
    if src_p.any():
      sx, sy = k.width / int(source.width), k.height / int(source.height)
      p = src_p * [[sx], [sy], [1]]
      p[0, 2], p[1, 2] = (src_p[0, 2] + 0.5) * sx - 0.5, (src_p[1, 2] + 0.5) * sy - 0.5
    if undistorted:
      d = np.zeros_like(d)
  kk = np.array([[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1]], np.float64)
  fields = {"D": d, "K": kk.reshape(-1), "R": r.reshape(-1), "P": p.reshape(-1)}
  roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                     width=0, do_rectify=False)
  return ts.types[CAMERA_INFO](
      header=hdr, height=k.height, width=k.width, distortion_model=model, binning_x=0,
      binning_y=0, roi=roi, **{(n if upper else n.lower()): v for n, v in fields.items()})


_POINT_FIELDS = (("x", 0, "FLOAT32"), ("y", 4, "FLOAT32"), ("z", 8, "FLOAT32"),
                 ("rgb", 12, "FLOAT32"), ("label", 16, "UINT8"))
POINT_STEP = 20  # x, y, z, rgb (4 bytes each), label (1), 3 bytes padding


def point_cloud_msg(ts: Any, hdr: Any, cloud: points_lib.PointCloud) -> Any:
  """An unordered (height 1) PointCloud2 of the valid points: x, y, z float32 metres, rgb
  (0x00RRGGBB as float32), label uint8 (uint16 above 255 classes)."""
  wide = cloud.labels is not None and cloud.labels.max(initial=0) > 255
  fields = [f if f[0] != "label" or not wide else ("label", 16, "UINT16")
            for f in _POINT_FIELDS]
  dtype = np.dtype({"names": [n for n, _, _ in fields],
                    "formats": ["<f4", "<f4", "<f4", "<f4", "<u2" if wide else "u1"],
                    "offsets": [o for _, o, _ in fields], "itemsize": POINT_STEP})
  n = len(cloud.xyz)
  data = np.zeros(n, dtype)
  for i, name in enumerate("xyz"):
    data[name] = cloud.xyz[:, i]
  if cloud.colors is not None:
    c = cloud.colors.astype(np.uint32)
    data["rgb"] = ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)
  if cloud.labels is not None:
    data["label"] = cloud.labels
  field_cls = ts.types["sensor_msgs/msg/PointField"]
  return ts.types[POINTS](
      header=hdr, height=1, width=n,
      fields=[field_cls(name=name, offset=o, datatype=getattr(field_cls, t), count=1)
              for name, o, t in fields],
      is_bigendian=False, point_step=POINT_STEP, row_step=POINT_STEP * n,
      data=data.view(np.uint8).reshape(-1), is_dense=True)
