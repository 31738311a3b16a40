"""Any ONNX graph as a teacher: a card says how to call it and what its outputs mean.

A teacher card (a JSON object; `--teacher-card FILE`, else the graph's metadata under
CARD_METADATA_KEY):

  {"input": {"layout": "NCHW",           # or "NHWC"
             "dtype": "float32",         # or "float16", "uint8" (raw pixels: no scale/mean/std)
             "channels": "RGB",          # or "BGR"
             "scale": 255.0,             # float inputs: pixel / scale, then (x - mean) / std
             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
             "size": [518, 518]},        # fixed (H, W); or "multiple_of": 14, "long_side": 518
   "outputs": {"depth": {"kind": "inverse_depth_relative"},
               "logits": {"kind": "segm_logits", "layout": "NCHW", "classes": ["wall", ...]}}}

Output kinds: `depth_metric` (metres), `inverse_depth_relative` (a / depth + b, a and b
unknown: Depth-Anything's relative models), `depth_relative` (a * depth + b), `segm_logits`
(per-class scores, softmax taken here), `segm_labels` (class ids). Depth outputs may be
(N, H, W), (N, 1, H, W) or (N, H, W, 1); any output resolution is resized to the frame's.
Without "size" the graph's own fixed input size is used. The card is checked against the
graph at load: a layout, dtype, size, output name, rank or class count that does not fit
stops with one line naming the card and the graph.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from hydrajax.inference import full_res, onnx_runner

CARD_METADATA_KEY = "hydrajax_teacher_card"
DEPTH_KINDS = ("depth_metric", "inverse_depth_relative", "depth_relative")
SEGM_KINDS = ("segm_logits", "segm_labels")
KINDS = DEPTH_KINDS + SEGM_KINDS
_DTYPES = {"float32": ("tensor(float)", np.float32), "float16": ("tensor(float16)", np.float16),
           "uint8": ("tensor(uint8)", np.uint8)}
_INPUT_KEYS = {"name", "layout", "dtype", "channels", "scale", "mean", "std", "size",
               "multiple_of", "long_side"}
_OUTPUT_KEYS = {"kind", "classes", "layout"}


class CardError(ValueError):
  """The card does not describe the graph (or is malformed); the message names both."""


_one_line = onnx_runner.one_line


def read_card(graph_path: str, card_path: str = "") -> tuple[dict, str]:
  """(card, where it came from): `card_path`'s JSON, else the graph's metadata."""
  if card_path:
    try:
      with open(card_path) as f:
        return json.load(f), card_path
    except ValueError as e:
      raise CardError(f"teacher card {card_path}: not JSON ({_one_line(e)})") from None
  import onnx
  try:
    proto = onnx.load(graph_path, load_external_data=False)
  except Exception as e:  # noqa: BLE001 - protobuf's and onnx's own error types
    raise ValueError(f"teacher {graph_path}: not an ONNX graph ({_one_line(e)})") from None
  props = {p.key: p.value for p in proto.metadata_props}
  if CARD_METADATA_KEY not in props:
    raise CardError(f"teacher {graph_path}: no card in its metadata ({CARD_METADATA_KEY!r}); "
                    f"pass --teacher-card CARD.json (docs/datasets.md shows the common ones)")
  try:
    return json.loads(props[CARD_METADATA_KEY]), f"{graph_path} metadata"
  except ValueError as e:
    raise CardError(f"teacher {graph_path}: metadata {CARD_METADATA_KEY!r} is not JSON "
                    f"({_one_line(e)})") from None


def _dim(d: Any) -> int | None:
  """A static dimension, or None for a symbolic / unknown one."""
  return d if isinstance(d, int) and d > 0 else None


class OnnxTeacher:
  """An ONNX graph and its card. `predict(image)` -> {output name: (H, W) float32 depth or
  (H, W, C) float32 class probabilities or (H, W) int32 class ids}, at the image's size.

  Attributes: `outputs` {name: {"kind", "classes"?, "layout"?}}, `depth_output` and
  `segm_output` (names or None), `classes` (the segmentation output's class names).
  """

  def __init__(self, graph_path: str, card_path: str = "", *, threads: int | None = None):
    if not os.path.isfile(graph_path):
      raise FileNotFoundError(f"teacher graph not found: {graph_path}")
    card, where = read_card(graph_path, card_path)
    self.path, self.where = graph_path, where
    self.session = onnx_runner.cpu_session(graph_path, threads)
    self._check(card)

  def _fail(self, message: str) -> CardError:
    return CardError(f"teacher card ({self.where}) does not fit {self.path}: {message}")

  def _check(self, card: Any) -> None:
    if not isinstance(card, dict) or not isinstance(card.get("input"), dict) or not (
        isinstance(card.get("outputs"), dict) and card["outputs"]):
      raise self._fail('expected {"input": {...}, "outputs": {NAME: {"kind": ...}, ...}}')
    spec = card["input"]
    unknown = set(spec) - _INPUT_KEYS
    if unknown:
      raise self._fail(f"unknown input key(s) {sorted(unknown)} (known: {sorted(_INPUT_KEYS)})")
    inputs = {i.name: i for i in self.session.get_inputs()}
    name = spec.get("name") or (next(iter(inputs)) if len(inputs) == 1 else None)
    if name not in inputs:
      raise self._fail(f"input {spec.get('name')!r}: the graph's inputs are {sorted(inputs)}")
    graph_in = inputs[name]
    self.input_name = name
    self.layout = spec.get("layout", "NCHW")
    if self.layout not in ("NCHW", "NHWC"):
      raise self._fail(f"input layout must be NCHW or NHWC, got {self.layout!r}")
    dtype = spec.get("dtype", "float32")
    if dtype not in _DTYPES:
      raise self._fail(f"input dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if graph_in.type != _DTYPES[dtype][0]:
      raise self._fail(f"input dtype {dtype} but the graph's {name!r} is {graph_in.type}")
    self.dtype = _DTYPES[dtype][1]
    shape = [_dim(d) for d in graph_in.shape]
    if len(shape) != 4:
      raise self._fail(f"input {name!r} has shape {graph_in.shape}: expected rank 4 "
                       f"({self.layout})")
    c_axis, hw_axes = (1, (2, 3)) if self.layout == "NCHW" else (3, (1, 2))
    if shape[c_axis] not in (None, 3):
      raise self._fail(f"layout {self.layout} puts channels on axis {c_axis}, but the graph's "
                       f"input {name!r} is {graph_in.shape}")
    self.channels = spec.get("channels", "RGB")
    if self.channels not in ("RGB", "BGR"):
      raise self._fail(f"input channels must be RGB or BGR, got {self.channels!r}")
    self._normalisation(spec, dtype)
    self._size(spec, [shape[a] for a in hw_axes], graph_in.shape)
    self._check_outputs(card["outputs"])

  def _normalisation(self, spec: dict, dtype: str) -> None:
    if dtype == "uint8":
      if any(k in spec for k in ("scale", "mean", "std")):
        raise self._fail("a uint8 input takes raw pixels: drop scale / mean / std")
      self.scale, self.mean, self.std = 1.0, np.zeros(3), np.ones(3)
      return
    try:
      self.scale = float(spec.get("scale", 255.0))
      self.mean = np.asarray(spec.get("mean", [0.0, 0.0, 0.0]), np.float64)
      self.std = np.asarray(spec.get("std", [1.0, 1.0, 1.0]), np.float64)
    except (TypeError, ValueError):
      raise self._fail("input scale must be a number, mean and std 3 numbers") from None
    if self.mean.shape != (3,) or self.std.shape != (3,) or not (self.std > 0).all() or not (
        self.scale > 0):
      raise self._fail(f"input mean and std must be 3 numbers (std > 0) and scale > 0, got "
                       f"mean={spec.get('mean')} std={spec.get('std')} scale={spec.get('scale')}")

  def _size(self, spec: dict, graph_hw: list, graph_shape: Any) -> None:
    fixed_graph = all(graph_hw)
    self.size = self.multiple_of = self.long_side = None
    if "size" in spec:
      size = spec["size"]
      if not (isinstance(size, list) and len(size) == 2 and all(
          isinstance(s, int) and s > 0 for s in size)):
        raise self._fail(f"input size must be [H, W], got {size!r}")
      if any(g is not None and g != s for g, s in zip(graph_hw, size)):
        raise self._fail(f"input size {size} but the graph's input is {graph_shape} "
                         f"({self.layout})")
      self.size = tuple(size)
    elif "multiple_of" in spec or "long_side" in spec:
      m, long = spec.get("multiple_of", 1), spec.get("long_side")
      if not (isinstance(m, int) and m > 0 and isinstance(long, int) and long >= m):
        raise self._fail(f"multiple_of and long_side must be integers (long_side >= "
                         f"multiple_of), got {m!r}, {long!r}")
      if fixed_graph:
        raise self._fail(f"multiple_of / long_side, but the graph's input size is fixed: "
                         f"{graph_shape}; give \"size\": {graph_hw}")
      self.multiple_of, self.long_side = m, long
    elif fixed_graph:
      self.size = tuple(graph_hw)
    else:
      raise self._fail(f"the graph's input {graph_shape} has no fixed size: give \"size\": "
                       f"[H, W] or \"multiple_of\" and \"long_side\"")

  def _check_outputs(self, outputs: dict) -> None:
    graph_out = {o.name: o.shape for o in self.session.get_outputs()}
    self.outputs, self.depth_output, self.segm_output, self.classes = {}, None, None, None
    for name, spec in outputs.items():
      if name not in graph_out:
        raise self._fail(f"output {name!r}: the graph's outputs are {sorted(graph_out)}")
      if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise self._fail(f"output {name!r}: kind must be one of {', '.join(KINDS)}, got "
                         f"{spec.get('kind') if isinstance(spec, dict) else spec!r}")
      unknown = set(spec) - _OUTPUT_KEYS
      if unknown:
        raise self._fail(f"output {name!r}: unknown key(s) {sorted(unknown)}")
      kind, shape = spec["kind"], graph_out[name]
      if kind in DEPTH_KINDS:
        if self.depth_output:
          raise self._fail(f"two depth outputs: {self.depth_output!r} and {name!r}")
        self.depth_output = name
        if len(shape) not in (3, 4) or (len(shape) == 4 and 1 not in (shape[1], shape[3])):
          raise self._fail(f"output {name!r} ({kind}) has shape {shape}: expected (N, H, W) "
                           f"or one channel")
      else:
        if self.segm_output:
          raise self._fail(f"two segmentation outputs: {self.segm_output!r} and {name!r}")
        self.segm_output = name
        classes = spec.get("classes")
        if not (isinstance(classes, list) and classes and all(
            isinstance(c, str) for c in classes)):
          raise self._fail(f"output {name!r} ({kind}) needs \"classes\": the teacher's class "
                           f"names in id order")
        if len(set(classes)) != len(classes):
          raise self._fail(f"output {name!r}: class names listed twice")
        self.classes = list(classes)
        layout = spec.get("layout", "NCHW")
        if layout not in ("NCHW", "NHWC"):
          raise self._fail(f"output {name!r}: layout must be NCHW or NHWC, got {layout!r}")
        if kind == "segm_logits":
          c = _dim(shape[1 if layout == "NCHW" else 3]) if len(shape) == 4 else -1
          if c is not None and c != len(classes):
            raise self._fail(f"output {name!r} (segm_logits, {layout}) has shape {shape}: "
                             f"expected {len(classes)} classes on the channel axis")
        elif len(shape) not in (3, 4):
          raise self._fail(f"output {name!r} (segm_labels) has shape {shape}: expected (N, H, W)")
      self.outputs[name] = dict(spec)

  @property
  def depth_kind(self) -> str | None:
    return self.outputs[self.depth_output]["kind"] if self.depth_output else None

  @property
  def segm_kind(self) -> str | None:
    return self.outputs[self.segm_output]["kind"] if self.segm_output else None

  def input_size(self, hw: tuple[int, int]) -> tuple[int, int]:
    """The graph's input (H, W) for a frame of size `hw`."""
    if self.size:
      return self.size
    h, w = hw
    f = self.long_side / max(h, w)
    m = self.multiple_of
    return (max(m, int(round(h * f / m)) * m), max(m, int(round(w * f / m)) * m))

  def preprocess(self, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the graph's (1, ...) input."""
    x = full_res.resize_image(image, self.input_size(image.shape[:2]))
    if self.channels == "BGR":
      x = x[..., ::-1]
    if self.dtype != np.uint8:
      x = ((x.astype(np.float32) / np.float32(self.scale) - self.mean.astype(np.float32))
           / self.std.astype(np.float32))
    if self.layout == "NCHW":
      x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], self.dtype)

  def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """The card's outputs for one frame, squeezed to (h, w) depth / labels or (h, w, C)
    logits, at the graph's output resolution."""
    names = list(self.outputs)
    try:
      values = self.session.run(names, {self.input_name: self.preprocess(image)})
    except Exception as e:  # noqa: BLE001 - onnxruntime's own types
      raise ValueError(f"teacher {self.path}: onnxruntime failed running it ({_one_line(e)})"
                       ) from None
    result = {}
    for name, value in zip(names, values):
      spec, value = self.outputs[name], np.asarray(value)
      if value.ndim == 4 and spec["kind"] != "segm_logits":
        value = value[:, 0] if value.shape[1] == 1 else value[..., 0]
      elif value.ndim == 4 and spec.get("layout", "NCHW") == "NCHW":
        value = value.transpose(0, 2, 3, 1)
      ok = (value.ndim == 4 and value.shape[-1] == len(self.classes)
            if spec["kind"] == "segm_logits" else value.ndim == 3)
      if not ok or value.shape[0] != 1:
        raise self._fail(f"output {name!r} ({spec['kind']}) came out as {values[names.index(name)].shape} "
                         f"for one frame")
      result[name] = value[0]
    return result


def resize_bilinear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """(h, w) or (h, w, C) float -> (H, W[, C]) float32, bilinear with half-pixel centres (as
  jax.image.resize, without antialiasing) through two small interpolation matrices."""
  if x.shape[:2] == tuple(hw):
    return np.asarray(x, np.float32)

  def matrix(n_in: int, n_out: int) -> np.ndarray:
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1 - (pos - lo))
    np.add.at(m, (np.arange(n_out), hi), pos - lo)
    return m

  ry, rx = matrix(x.shape[0], hw[0]), matrix(x.shape[1], hw[1])
  x = np.asarray(x, np.float32)
  return np.einsum("Hh,hw...,Ww->HW...", ry, x, rx, optimize=True)


def resize_nearest(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """(h, w) labels -> (H, W), nearest pixel centre."""
  rows = np.minimum(((np.arange(hw[0]) + 0.5) * x.shape[0] / hw[0]).astype(int), x.shape[0] - 1)
  cols = np.minimum(((np.arange(hw[1]) + 0.5) * x.shape[1] / hw[1]).astype(int), x.shape[1] - 1)
  return x[rows][:, cols]
