"""Static int8 quantization of the exported ONNX graph (onnxruntime.quantization, QDQ).

Weights int8 per output channel (symmetric), activations uint8 with ranges calibrated
(min/max) on real images run through the float graph. The whole graph is quantized (Conv,
Clip, MaxPool, Add, Resize, ...): quantizing only the convolutions gains little, as every
float op between them then pays a Quantize/Dequantize pair. Nodes whose quantization costs
accuracy stay float (`KEEP_FLOAT`, chosen by measurement, see docs/export.md).

Before quantizing, every Resize given by `sizes` is rewritten to constant `scales` (+ the
`axes` attribute): onnxruntime's full graph optimisation otherwise fails on the quantized
graph's Resize nodes ("Number of elements of input 'sizes' (0) does not match the number of
axes"). The rewrite keeps the output shapes and the sampling positions (the scale is the
float32 nearest to out / in with floor(in * scale) = out).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np

# Parts of the graph that may stay float, by name (`float_nodes` maps them to ONNX nodes).
FLOAT_PARTS = ("segm_head", "depth_head", "normals_head", "output_resize", "input")
KEEP_FLOAT: tuple[str, ...] = ()  # the default, all int8: see docs/export.md for the measurements
CALIBRATE_DEFAULT = 32  # images


def _scale_for(n_in: int, n_out: int) -> np.float32:
  """The float32 scale s nearest to n_out / n_in with floor(n_in * s) == n_out whether the
  product is taken in float32 (onnxruntime) or float64 (ONNX shape inference)."""
  s = np.float32(n_out / n_in)
  ok = lambda s: (np.floor(np.float64(n_in) * np.float64(s)) == n_out
                  and np.floor(np.float32(n_in) * s) == n_out)
  up = s
  for _ in range(64):
    if ok(up):
      return up
    up = np.nextafter(up, np.float32(np.inf), dtype=np.float32)
  raise ValueError(f"no float32 Resize scale maps {n_in} to {n_out} pixels")


def _drop_unused_initializers(graph: Any) -> None:
  referenced = {i for n in graph.node for i in n.input}
  for t in list(graph.initializer):
    if t.name not in referenced:
      graph.initializer.remove(t)


def resize_sizes_to_scales(model: Any) -> Any:
  """A copy of `model` (onnx.ModelProto) whose Resize nodes given by constant `sizes` use
  constant `scales` instead (same `axes`, same output shapes). Raises ValueError naming the
  node when an input shape is not static."""
  import onnx
  from onnx import numpy_helper
  model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
  graph = model.graph
  inits = {t.name: t for t in graph.initializer}
  shapes = {}
  for v in [*graph.input, *graph.value_info, *graph.output]:
    shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None
                      for d in v.type.tensor_type.shape.dim]
  used = {}
  for node in graph.node:
    if node.op_type != "Resize" or len(node.input) < 4 or node.input[3] not in inits:
      continue
    sizes = numpy_helper.to_array(inits[node.input[3]]).tolist()
    rank = len(shapes.get(node.input[0], []))
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), list(range(rank)))
    in_shape = shapes.get(node.input[0])
    if in_shape is None or any(in_shape[a] is None for a in axes):
      raise ValueError(f"Resize node {node.name}: input {node.input[0]} has no static shape "
                       f"on axes {axes}; cannot use constant scales")
    scales = np.ones(rank, np.float32)  # all axes: onnxruntime's layout optimiser
    for a, n in zip(axes, sizes):       # mis-indexes scales given with `axes`
      scales[a] = _scale_for(in_shape[a], n)
    for i, a in enumerate(node.attribute):
      if a.name == "axes":
        del node.attribute[i]
        break
    key = scales.tobytes()
    if key not in used:
      name = f"{node.name}_scales"
      graph.initializer.append(numpy_helper.from_array(scales, name))
      used[key] = name
    x = node.input[0]
    del node.input[:]
    node.input.extend([x, "", used[key]])
  _drop_unused_initializers(graph)  # the `sizes` constants
  return model


def normalization_as_conv(model: Any) -> Any:
  """`model` (onnx.ModelProto, changed in place and returned) with the input normalisation
  Sub(x, mean) -> Div(., std), per channel (1, C, 1, 1), as one 1x1 depthwise Conv (weights
  1 / std, bias -mean / std): one op at full resolution instead of two, and one the quantizer
  turns into a QLinearConv on the uint8 input (whose calibrated scale is then exactly 1)."""
  from onnx import helper, numpy_helper
  graph = model.graph
  inits = {t.name: t for t in graph.initializer}
  consumers: dict[str, list] = {}
  for node in graph.node:
    for i in node.input:
      consumers.setdefault(i, []).append(node)
  for sub in list(graph.node):
    if sub.op_type != "Sub" or sub.input[1] not in inits:
      continue
    (div,) = consumers.get(sub.output[0], [None])[:1] or [None]
    if (div is None or div.op_type != "Div" or len(consumers[sub.output[0]]) != 1
        or div.input[1] not in inits):
      continue
    mean = numpy_helper.to_array(inits[sub.input[1]]).astype(np.float64)
    std = numpy_helper.to_array(inits[div.input[1]]).astype(np.float64)
    if mean.ndim != 4 or mean.shape[:1] + mean.shape[2:] != (1, 1, 1) or std.shape != mean.shape:
      continue
    c = mean.shape[1]
    w, b = f"{sub.name}_norm_w", f"{sub.name}_norm_b"
    graph.initializer.extend([
        numpy_helper.from_array((1.0 / std).reshape(c, 1, 1, 1).astype(np.float32), w),
        numpy_helper.from_array((-mean / std).reshape(c).astype(np.float32), b)])
    conv = helper.make_node("Conv", [sub.input[0], w, b], [div.output[0]],
                            name=f"{sub.name}_normalize", kernel_shape=[1, 1], group=c)
    at = list(graph.node).index(sub)
    graph.node.remove(sub)
    graph.node.remove(div)
    graph.node.insert(at, conv)
  _drop_unused_initializers(graph)  # mean and std
  return model


def separable_max_pools(model: Any) -> Any:
  """`model` (changed in place and returned) with every square k x k MaxPool (stride 1,
  symmetric padding p) as a 1 x k then a k x 1 MaxPool: the same maxima (padding never wins
  a max), 2k instead of k^2 comparisons per output; onnxruntime's uint8 NHWC MaxPool has no
  faster form of its own."""
  from onnx import helper
  graph = model.graph
  nodes = list(graph.node)
  out = []
  for node in nodes:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, strides, pads = attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("pads")
    if (node.op_type != "MaxPool" or k is None or len(k) != 2 or k[0] != k[1] or k[0] < 3
        or list(strides or [1, 1]) != [1, 1] or len(node.output) != 1
        or pads is None or len(set(pads)) != 1
        or set(attrs) - {"kernel_shape", "strides", "pads"}):
      out.append(node)
      continue
    n, p = k[0], pads[0]
    mid = f"{node.output[0]}_rows"
    out.append(helper.make_node("MaxPool", [node.input[0]], [mid], name=f"{node.name}_w",
                                kernel_shape=[1, n], strides=[1, 1], pads=[0, p, 0, p]))
    out.append(helper.make_node("MaxPool", [mid], [node.output[0]], name=f"{node.name}_h",
                                kernel_shape=[n, 1], strides=[1, 1], pads=[p, 0, p, 0]))
  del graph.node[:]
  graph.node.extend(out)
  return model


def float_nodes(model: Any, parts: Iterable[str]) -> list[str]:
  """Names of the nodes of `model` (an exported graph) that make up `parts` of FLOAT_PARTS:
  "<task>_head": the head's last (3x3) conv; "output_resize": Resize nodes that produce
  (or feed only) an output; "input": the nodes before the stem's Conv (layout, cast,
  normalisation)."""
  parts = list(parts)
  unknown = set(parts) - set(FLOAT_PARTS)
  if unknown:
    raise ValueError(f"unknown float parts {sorted(unknown)}; expected some of {FLOAT_PARTS}")
  graph = model.graph
  producer = {o: n for n in graph.node for o in n.output}
  outputs = {o.name for o in graph.output}
  names: list[str] = []

  def upstream_conv(value: str) -> Any:
    node = producer.get(value)
    while node is not None and node.op_type != "Conv":
      node = producer.get(node.input[0])
    return node

  for part in parts:
    if part.endswith("_head"):
      task = part[:-len("_head")]
      if task in outputs:
        conv = upstream_conv(task)
        if conv is not None:
          names.append(conv.name)
    elif part == "output_resize":
      for out in outputs:
        node = producer.get(out)
        while node is not None and node.op_type not in ("Resize", "Conv"):
          node = producer.get(node.input[0])
        if node is not None and node.op_type == "Resize":
          names.append(node.name)
    elif part == "input":
      for node in graph.node:
        if node.op_type == "Conv" and not node.name.endswith("_normalize"):
          break
        names.append(node.name)
  return names


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _pick(n: int, count: int, seed: int) -> np.ndarray:
  if count < 1:
    raise ValueError(f"the number of calibration images must be >= 1, got {count}")
  return np.sort(np.random.default_rng(seed).permutation(n)[:count])


def images_from_config(config_path: str, size: tuple[int, int], count: int = CALIBRATE_DEFAULT,
                       seed: int = 0, data_dir: str | None = None) -> np.ndarray:
  """(n, H, W, 3) uint8: `count` images (seeded choice) of the training split of the
  dataset of an ml_collections config file ("configs/x.py" or "configs/x.py:arg"), resized
  to `size` = (H, W) (PIL bilinear). The training split, so the validation set stays held out.
  `data_dir` replaces the config's `data_dir` (the dataset root; configs leave it empty)."""
  from hydrajax.data import sources
  from hydrajax.inference import full_res
  from hydrajax.train import config_file
  path = config_path.split(":", 1)[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"calibration config {path}: no such file")
  config = config_file.load(config_path)
  if data_dir:
    config.data_dir = data_dir
  source = sources.build_source(config, "train", with_teacher=False)
  if len(source) == 0:
    raise ValueError(f"calibration config {config_path}: the training split is empty")
  return np.stack([full_res.resize_image(np.asarray(source[int(i)]["image"], np.uint8), size)
                   for i in _pick(len(source), count, seed)])


def images_from_folder(folder: str, size: tuple[int, int], count: int = CALIBRATE_DEFAULT,
                       seed: int = 0) -> np.ndarray:
  """(n, H, W, 3) uint8: `count` images (seeded choice) of the image files in `folder`
  (by suffix, IMAGE_SUFFIXES; hidden files skipped: macOS's `._NAME.jpg` resource forks and
  unfinished `.tmp-*` writes are no images), resized to `size` = (H, W) (PIL bilinear)."""
  from hydrajax.data import pngio
  from hydrajax.inference import full_res
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"calibration images {folder}: no such directory")
  files = sorted(f for f in os.listdir(folder)
                 if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
                 and os.path.isfile(os.path.join(folder, f)))
  if not files:
    raise ValueError(f"calibration images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
  return np.stack([full_res.resize_image(pngio.load_rgb(os.path.join(folder, files[i])), size)
                   for i in _pick(len(files), count, seed)])


class _Reader:
  """onnxruntime CalibrationDataReader over (N, H, W, 3) images, one image per call."""

  def __init__(self, input_name: str, images: np.ndarray):
    self.input_name, self.images, self.i = input_name, images, 0

  def get_next(self) -> dict | None:
    if self.i >= len(self.images):
      return None
    self.i += 1
    return {self.input_name: self.images[self.i - 1:self.i]}

  def rewind(self) -> None:
    self.i = 0


def input_signature(model: Any) -> tuple[str, tuple[int, int], np.dtype]:
  """(input name, (H, W), numpy dtype) of an exported graph's image input."""
  import onnx
  (inp,) = model.graph.input
  t = inp.type.tensor_type
  dims = [d.dim_value for d in t.shape.dim]
  return inp.name, (dims[1], dims[2]), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))


def quantize(float_model: bytes, images: np.ndarray, *,
             keep_float: Sequence[str] = KEEP_FLOAT) -> bytes:
  """Serialized int8 (QDQ) ONNX model of the serialized float export `float_model`.

  images: (N, H, W, 3) uint8 calibration images at the graph's input size. Weights are
  quantized per channel (int8, symmetric), activations to uint8 from their min/max over the
  images. `keep_float`: parts of FLOAT_PARTS left in float32. The result has the float
  graph's inputs and outputs and passes onnx.checker's full check.
  """
  import onnx
  from onnxruntime import quantization as q
  model = onnx.load_from_string(float_model)
  name, (h, w), dtype = input_signature(model)
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (h, w, 3) or len(images) == 0:
    raise ValueError(f"calibration images must be (N>0, {h}, {w}, 3) for this graph, "
                     f"got {images.shape}")
  model = separable_max_pools(normalization_as_conv(resize_sizes_to_scales(model)))
  exclude = float_nodes(model, keep_float)
  # The quantizer logs a pre-processing advice on the root logger (symbolic shape
  # inference + optimisation: the exported graph already has static shapes, BN folded).
  root = logging.getLogger()
  level = root.level
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
    onnx.save(model, src)
    root.setLevel(max(level, logging.ERROR))
    try:
      q.quantize_static(
          src, dst, _Reader(name, images.astype(dtype)), quant_format=q.QuantFormat.QDQ,
          per_channel=True, reduce_range=False, activation_type=q.QuantType.QUInt8,
          weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude,
          calibrate_method=q.CalibrationMethod.MinMax,
          extra_options={"WeightSymmetric": True})
    finally:
      root.setLevel(level)
    out = onnx.load(dst)
  onnx.checker.check_model(out, full_check=True)
  return out.SerializeToString()


def activation_quantizers(model: bytes) -> dict[str, str]:
  """{QuantizeLinear node name: the layer it quantizes, "node (op)"} of the activations of a
  serialized QDQ graph (weights, quantized ahead of time, have no QuantizeLinear)."""
  import onnx
  graph = onnx.load_from_string(model).graph
  producer = {o: n for n in graph.node for o in n.output}
  inits = {t.name for t in graph.initializer}
  out = {}
  for node in graph.node:
    if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
      src = producer.get(node.input[0])
      out[node.name] = f"{src.name} ({src.op_type})" if src is not None else node.input[0]
  return out


def without_quantizers(model: bytes, names: Sequence[str]) -> bytes:
  """The serialized QDQ graph `model` with the activation QuantizeLinear nodes `names` and
  their DequantizeLinear nodes removed: those layers' outputs reach their consumers in float
  (each DequantizeLinear becomes an Identity of the float tensor, so every name still
  exists)."""
  import onnx
  from onnx import helper
  proto = onnx.load_from_string(model)
  graph = proto.graph
  quantizers = {n.output[0]: n for n in graph.node
                if n.op_type == "QuantizeLinear" and n.name in set(names)}
  missing = set(names) - {n.name for n in quantizers.values()}
  if missing:
    raise ValueError(f"no activation QuantizeLinear nodes {sorted(missing)} in the graph")
  nodes = []
  for node in graph.node:
    if node.op_type == "QuantizeLinear" and node.output[0] in quantizers:
      continue
    if node.op_type == "DequantizeLinear" and node.input[0] in quantizers:
      node = helper.make_node("Identity", [quantizers[node.input[0]].input[0]], [node.output[0]],
                              name=f"{node.name}_float")
    nodes.append(node)
  del graph.node[:]
  graph.node.extend(nodes)
  _drop_unused_initializers(graph)  # the removed pairs' scales and zero points
  return proto.SerializeToString()
