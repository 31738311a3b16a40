"""Teacher graphs built with onnx's helper API, and frames whose colours encode their truth.

A frame's pixel (R, G, B) means: inverse depth INV0 + INV1 * R / 255 (1 / metres), teacher
class G (of NUM_TEACHER_CLASSES), teacher sharpness TEMP0 + TEMP1 * B / 255. The teacher
graph takes a normalised float image ((pixel / 255 - mean) / std, NCHW or NHWC) and gives
  "depth": a * inverse_depth + b, (1, 1, H, W)  (inverse_depth_relative when a, b are not 1, 0)
  "logits": -sharpness * (G - k)^2 for k < NUM_TEACHER_CLASSES, (1, K, H, W)
so the teacher is the truth under another convention, exactly (float32 rounding aside).
"""
import json

import numpy as np
import onnx
from onnx import TensorProto, helper

INV0, INV1 = 0.1, 1.5           # inverse depth 0.1..1.6 1/m: 0.625..10 m
TEMP0, TEMP1 = 0.02, 4.0
NUM_TEACHER_CLASSES = 150
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TEACHER_CLASSES = [f"t{k}" for k in range(NUM_TEACHER_CLASSES)]


def true_depth(image: np.ndarray) -> np.ndarray:
  """(H, W) metres encoded by a frame's R channel (float64)."""
  return 1.0 / (INV0 + INV1 * image[..., 0].astype(np.float64) / 255.0)


def teacher_softmax(image: np.ndarray) -> np.ndarray:
  """(H, W, K) float64 softmax of the teacher's logits for a frame, as the graph computes."""
  g = image[..., 1].astype(np.float64)[..., None]
  temp = TEMP0 + TEMP1 * image[..., 2].astype(np.float64)[..., None] / 255.0
  z = -temp * (g - np.arange(NUM_TEACHER_CLASSES)) ** 2
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def card(*, layout="NCHW", a=2.0, b=0.3, kind="inverse_depth_relative", segm=True,
         depth=True, size=None) -> dict:
  outputs = {}
  if depth:
    outputs["depth"] = {"kind": kind}
  if segm:
    outputs["logits"] = {"kind": "segm_logits", "layout": "NCHW", "classes": TEACHER_CLASSES}
  spec = {"layout": layout, "dtype": "float32", "channels": "RGB", "scale": 255.0,
          "mean": MEAN, "std": STD}
  if size:
    spec["size"] = list(size)
  return {"input": spec, "outputs": outputs}


def _channel_conv(name: str, out: str, weights, bias) -> tuple:
  """A 1x1 conv (one output channel) over the normalised image: pixel-space affine maps."""
  w = helper.make_tensor(name + "_w", TensorProto.FLOAT, [1, 3, 1, 1], weights)
  b = helper.make_tensor(name + "_b", TensorProto.FLOAT, [1], [bias])
  return helper.make_node("Conv", ["x", name + "_w", name + "_b"], [out]), [w, b]


def _pixel_affine(channel: int, gain: float, offset: float) -> tuple[list, float]:
  """Conv weights giving offset + gain * pixel[channel] / 255 from the normalised input."""
  w = [0.0, 0.0, 0.0]
  w[channel] = gain * STD[channel]
  return w, offset + gain * MEAN[channel]


def build(path, height=None, width=None, *, layout="NCHW", a=2.0, b=0.3, with_card=True,
          card_overrides=None, metric=False, depth_scale=1.0) -> str:
  """Writes the teacher graph (sizes None: dynamic) with its card in the metadata unless
  `with_card` is False. `metric`: "depth" is depth_scale / inverse depth (metres at 1, 1000:
  millimetres) instead of a * inverse depth + b."""
  shape = [1, 3, height, width] if layout == "NCHW" else [1, height, width, 3]
  shape = [d if d is not None else f"d{i}" for i, d in enumerate(shape)]
  nodes, inits = [], []
  if layout == "NHWC":
    nodes.append(helper.make_node("Transpose", ["image"], ["x"], perm=[0, 3, 1, 2]))
  else:
    nodes.append(helper.make_node("Identity", ["image"], ["x"]))
  w, c = _pixel_affine(0, INV1, INV0)
  node, t = _channel_conv("inv", "inv", [a * v for v in w], a * c + b)
  nodes.append(node), inits.extend(t)
  if metric:
    nodes[-1] = _channel_conv("inv", "inv", *_pixel_affine(0, INV1, INV0))[0]
    inits[-2:] = _channel_conv("inv", "inv", *_pixel_affine(0, INV1, INV0))[1]
    nodes.append(helper.make_node("Reciprocal", ["inv"], ["metres"]))
    nodes.append(helper.make_node("Mul", ["metres", "dscale"], ["depth"]))
    inits.append(helper.make_tensor("dscale", TensorProto.FLOAT, [], [depth_scale]))
  else:
    nodes.append(helper.make_node("Identity", ["inv"], ["depth"]))
  w, c = _pixel_affine(1, 255.0, 0.0)
  node, t = _channel_conv("green", "g", w, c)
  nodes.append(node), inits.extend(t)
  w, c = _pixel_affine(2, TEMP1, TEMP0)
  node, t = _channel_conv("temp", "temp", w, c)
  nodes.append(node), inits.extend(t)
  inits.append(helper.make_tensor("k", TensorProto.FLOAT, [1, NUM_TEACHER_CLASSES, 1, 1],
                                  np.arange(NUM_TEACHER_CLASSES, dtype=np.float32)))
  nodes += [helper.make_node("Sub", ["g", "k"], ["diff"]),
            helper.make_node("Mul", ["diff", "diff"], ["sq"]),
            helper.make_node("Mul", ["sq", "temp"], ["neg"]),
            helper.make_node("Neg", ["neg"], ["logits"])]
  graph = helper.make_graph(
      nodes, "teacher", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
      [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 1, height, width]),
       helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                     [1, NUM_TEACHER_CLASSES, height, width])], inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
  if with_card:
    c = card(layout=layout, a=a, b=b, kind="depth_metric" if metric else "inverse_depth_relative")
    for k, v in (card_overrides or {}).items():
      c[k] = v
    helper.set_model_props(model, {"hydrajax_teacher_card": json.dumps(c)})
  onnx.save(model, str(path))
  return str(path)


def frame(rng: np.random.Generator, height: int, width: int, classes, blocks: int = 4,
          red=(0, 256), pixel_depth: bool = True) -> np.ndarray:
  """(H, W, 3) uint8: vertical bands, each of one teacher class (G, from `classes`) and one
  sharpness (B); depth (R, in [red[0], red[1])) random per pixel, or per band."""
  image = np.zeros((height, width, 3), np.uint8)
  edges = np.linspace(0, width, blocks + 1).astype(int)
  if pixel_depth:
    image[..., 0] = rng.integers(*red, (height, width))
  for lo, hi in zip(edges[:-1], edges[1:]):
    if not pixel_depth:
      image[:, lo:hi, 0] = rng.integers(*red)
    image[:, lo:hi, 1] = rng.choice(classes)
    image[:, lo:hi, 2] = rng.integers(0, 256)
  return image
