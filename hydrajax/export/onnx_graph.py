"""The network as a hand-written ONNX graph: NCHW inside, BatchNorm folded, native ops only.

Built node by node from the parameters (no tracing), so the graph is what an ONNX engineer
writes: Conv for every convolution (group = C for depthwise, bias for folded BatchNorm and
the heads), Clip for ReLU6, MaxPool for the CRP pools, Resize for bilinear upsampling, one
Transpose after the input and one per 4-D output. Every shape is a constant except the
batch, one symbolic dimension "N" shared by the input and all outputs (or a fixed size).
The wiring mirrors `hydrajax.models` (the same settings tables and parameter names); the
export tests check it against `hydrajax.apply`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hydrajax.api import IMAGENET_MEAN, IMAGENET_STD
from hydrajax.models import CRP_STAGES, HEAD_NAMES, MOBILENET_V2_SETTINGS

BN_EPS = 1e-5  # mobilenet_v2.batch_norm
IR_VERSION = 8  # ONNX IR of opset 18: loads in onnxruntime >= 1.14


def fold_batch_norm(kernel: np.ndarray, bn: Mapping[str, Any], stats: Mapping[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """HWIO kernel (depthwise: (k, k, 1, C)) followed by inference BatchNorm -> (kernel, bias)
  of one conv: kernel * gamma / sqrt(var + eps), bias = beta - mean * gamma / sqrt(var + eps).
  Computed in float64, returned as float32."""
  scale = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(stats["var"], np.float64)
                                                         + BN_EPS)
  bias = np.asarray(bn["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * scale
  return ((np.asarray(kernel, np.float64) * scale).astype(np.float32),
          bias.astype(np.float32))


class GraphBuilder:
  """Collects ONNX nodes and constant initializers; names values v0, v1, ..."""

  def __init__(self):
    import onnx  # a test / export dependency only
    self.onnx = onnx
    self.nodes: list = []
    self.initializers: list = []
    self._count = 0
    self._scalars: dict = {}

  def fresh(self, hint: str = "v") -> str:
    self._count += 1
    return f"{hint}_{self._count}"

  def const(self, value: np.ndarray, hint: str = "c") -> str:
    name = self.fresh(hint)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def scalar(self, value: Any, dtype: Any = np.float32) -> str:
    """A shared constant (one initializer per distinct scalar or small vector)."""
    key = (np.dtype(dtype).str, np.asarray(value).tobytes(), np.shape(value))
    if key not in self._scalars:
      self._scalars[key] = self.const(np.asarray(value, dtype), "k")
    return self._scalars[key]

  def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
    output = output or self.fresh(op_type.lower())
    self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output],
                                                 name=f"{op_type}_{len(self.nodes)}", **attrs))
    return output

  def conv(self, x: str, kernel_hwio: np.ndarray, bias: np.ndarray | None, stride: int = 1,
           depthwise: bool = False, hint: str = "conv") -> str:
    """Conv with PyTorch padding k//2; HWIO kernel (depthwise (k, k, 1, C)) -> OIHW."""
    k = kernel_hwio.shape[0]
    w = np.transpose(np.asarray(kernel_hwio, np.float32), (3, 2, 0, 1))
    inputs = [x, self.const(w, f"{hint}_w")]
    if bias is not None:
      inputs.append(self.const(np.asarray(bias, np.float32), f"{hint}_b"))
    p = k // 2
    return self.op("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                   pads=[p, p, p, p], group=w.shape[0] if depthwise else 1)

  def relu6(self, x: str) -> str:
    return self.op("Clip", [x, self.scalar(0.0), self.scalar(6.0)])

  def resize(self, x: str, size: tuple[int, int], align_corners: bool,
             axes: tuple[int, int] = (2, 3), output: str | None = None) -> str:
    """Bilinear resize of `axes` (H, W: NCHW's by default) to `size`, PyTorch
    `align_corners` semantics."""
    mode = "align_corners" if align_corners else "half_pixel"
    return self.op("Resize", [x, "", "", self.scalar(size, np.int64)], output, mode="linear",
                   axes=list(axes), coordinate_transformation_mode=mode)


def _conv_bn(g: GraphBuilder, x: str, params: Mapping, stats: Mapping, stride: int = 1,
             depthwise: bool = False, act: bool = True, hint: str = "conv") -> str:
  kernel, bias = fold_batch_norm(params["conv"]["kernel"], params["bn"], stats["bn"])
  y = g.conv(x, kernel, bias, stride, depthwise, hint)
  return g.relu6(y) if act else y


def encoder(g: GraphBuilder, x: str, image_size: tuple[int, int], params: Mapping,
            stats: Mapping) -> list[tuple[str, tuple[int, int]]]:
  """NCHW normalised image -> [(value, (h, w)) of l3..l8], as MobileNetV2Encoder."""
  def size_after(hw, s):  # PyTorch conv, kernel 3, padding 1
    return tuple((d + 2 - 3) // s + 1 for d in hw)

  hw = image_size
  x = _conv_bn(g, x, params["layer1"], stats["layer1"], stride=2, hint="layer1")
  hw, cin = size_after(hw, 2), 32
  feats = []
  for idx, (_, c, n, s) in enumerate(MOBILENET_V2_SETTINGS):
    for j in range(n):
      name = f"layer{idx + 2}_{j}"
      p, st = params[name], stats[name]
      stride = s if j == 0 else 1
      y = _conv_bn(g, x, p["expand"], st["expand"], hint=f"{name}_expand")
      y = _conv_bn(g, y, p["depthwise"], st["depthwise"], stride, depthwise=True,
                   hint=f"{name}_dw")
      y = _conv_bn(g, y, p["project"], st["project"], act=False, hint=f"{name}_project")
      hw = size_after(hw, stride)
      x = g.op("Add", [y, x]) if cin == c and stride == 1 else y
      cin = c
    if idx >= 1:
      feats.append((x, hw))
  return feats


def _crp(g: GraphBuilder, x: str, params: Mapping, depthwise: bool) -> str:
  top = x
  for i in range(1, CRP_STAGES + 1):
    top = g.op("MaxPool", [top], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    top = g.conv(top, params[f"conv{i}"]["kernel"], None, depthwise=depthwise, hint="crp")
    x = g.op("Add", [x, top])
  return x


def decoder(g: GraphBuilder, feats: list, params: Mapping, align_corners: bool) -> str:
  """As RefineNetDecoder: l3..l8 -> 256-channel NCHW map at stride 4."""
  (l3, s3), (l4, s4), (l5, _), (l6, s6), (l7, _), (l8, _) = feats
  conv = lambda name, v: g.conv(v, params[name]["kernel"], None, hint=name)
  add = lambda *vs: g.op("Sum", list(vs)) if len(vs) > 2 else g.op("Add", list(vs))
  x = g.relu6(add(conv("conv8", l8), conv("conv7", l7)))
  x = _crp(g, x, params["crp4"], False)
  x = g.resize(conv("conv_adapt4", x), s6, align_corners)
  x = g.relu6(add(conv("conv5", l5), conv("conv6", l6), x))
  x = _crp(g, x, params["crp3"], False)
  x = g.resize(conv("conv_adapt3", x), s4, align_corners)
  x = g.relu6(add(conv("conv4", l4), x))
  x = _crp(g, x, params["crp2"], False)
  x = g.resize(conv("conv_adapt2", x), s3, align_corners)
  x = g.relu6(add(conv("conv3", l3), x))
  return _crp(g, x, params["crp1"], True)


def head(g: GraphBuilder, x: str, params: Mapping, name: str) -> str:
  """depthwise 1x1 -> ReLU6 -> 3x3 conv with bias, as hydranet.Head."""
  pre = f"pre_{name}"
  x = g.relu6(g.conv(x, params[pre]["kernel"], None, depthwise=True, hint=pre))
  return g.conv(x, params[name]["kernel"], params[name]["bias"], hint=name)


METADATA_KEY = "hydrajax"  # metadata_props entry: the model config as JSON


def set_metadata(model: Any, config: Mapping[str, Any]) -> None:
  """Store `config` (JSON-able) as the model's METADATA_KEY property, replacing an old one."""
  import json
  from onnx import helper
  props = {p.key: p.value for p in model.metadata_props}
  props[METADATA_KEY] = json.dumps(config, sort_keys=True)
  del model.metadata_props[:]
  helper.set_model_props(model, props)


def build_model(variables: Mapping[str, Any], cfg: Mapping[str, Any], height: int, width: int,
                *, batch: int | None, full_resolution: bool, input_dtype: str,
                input_name: str, output_order: tuple[str, ...], opset: int):
  """onnx.ModelProto computing export.inference_fn (see hydrajax.export.cli's doc for the
  inputs and outputs): image (N, H, W, 3) -> NHWC outputs, NCHW inside."""
  import onnx
  from onnx import TensorProto, helper
  g = GraphBuilder()
  params, stats = variables["params"], variables["batch_stats"]
  n = "N" if batch is None else int(batch)
  align = bool(cfg["align_corners"])
  elem = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}[input_dtype]

  x = g.op("Transpose", [input_name], perm=[0, 3, 1, 2])
  if input_dtype != "float32":
    x = g.op("Cast", [x], to=TensorProto.FLOAT)
  mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1) * np.float32(255)
  std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1) * np.float32(255)
  x = g.op("Div", [g.op("Sub", [x, g.const(mean, "mean")]), g.const(std, "std")])
  feats = encoder(g, x, (height, width), params["encoder"], stats["encoder"])
  y = decoder(g, feats, params["decoder"], align)
  size = (height, width) if full_resolution else feats[0][1]  # l3: stride 4

  # segm / normals change layout once, at 1/4 resolution, and are resized in NHWC, so the
  # full-resolution logits exist once, as the output (in onnxruntime this is faster than an
  # NCHW resize followed by a Transpose; figures in docs/performance.md).
  outs = {}
  for task in cfg["tasks"]:
    name = HEAD_NAMES[task]
    o = head(g, y, params[f"head_{name}"], name)
    if task == "depth":
      o = g.resize(o, size, align) if full_resolution else o
      outs[task] = g.op("Abs", [g.op("Squeeze", [o, g.scalar([1], np.int64)])], task)
    else:  # normals are named after their normalisation below
      last = task if task == "segm" else None
      if full_resolution:
        o = g.op("Transpose", [o], perm=[0, 2, 3, 1])
        outs[task] = g.resize(o, size, align, axes=(1, 2), output=last)
      else:
        outs[task] = g.op("Transpose", [o], last, perm=[0, 2, 3, 1])
  if "normals" in outs:
    norm = g.op("Max", [g.op("ReduceL2", [outs["normals"], g.scalar([3], np.int64)],
                                 keepdims=1), g.scalar(1e-12)])
    outs["normals"] = g.op("Div", [outs["normals"], norm], "normals")
  names = [*outs, "labels"] if full_resolution and "segm" in outs else list(outs)
  out_values = []
  for key in [k for k in output_order if k in names]:
    if key == "labels":  # first maximum on ties, as jnp.argmax
      labels = g.op("ArgMax", [outs["segm"]], axis=3, keepdims=0, select_last_index=0)
      g.op("Cast", [labels], key, to=TensorProto.INT32)
      shape, elem_out = [n, *size], TensorProto.INT32
    elif key == "depth":
      shape, elem_out = [n, *size], TensorProto.FLOAT
    else:
      channels = cfg["num_classes"] if key == "segm" else 3
      shape, elem_out = [n, *size, channels], TensorProto.FLOAT
    out_values.append(helper.make_tensor_value_info(key, elem_out, shape))

  graph = helper.make_graph(
      g.nodes, "hydrajax",
      [helper.make_tensor_value_info(input_name, elem, [n, height, width, 3])],
      out_values, initializer=g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                            producer_name="hydrajax", ir_version=IR_VERSION)
  model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                            data_prop=True)
  return model
