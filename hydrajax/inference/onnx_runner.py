"""An exported graph (float or int8, `hydrajax-export --format onnx|openvino [--int8]`) run by
onnxruntime (OnnxModel) or OpenVINO (openvino_runner.OpenVinoModel) and called like
`hydrajax.apply`, for predict, video, the demo and evaluation. `load` picks the runtime:
by the file (`.onnx` onnxruntime, `.xml` OpenVINO), or as asked (`runtime`).

The graph has a fixed input size (H, W): images of another size are resized to it (PIL
bilinear) and the outputs are upsampled back to the image's size with `hydrajax.apply`'s
bilinear resize, so the results have the same form as the JAX model's.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from hydrajax import api
from hydrajax.data import pngio
from hydrajax.export.onnx_graph import METADATA_KEY
from hydrajax.inference import full_res


class ExportedModel:
  """An exported graph in a runtime. Attributes: path, runtime, input_name, size (H, W),
  input_dtype, tasks, num_classes, align_corners, full_resolution. A subclass reads the
  file and implements `_run`."""
  runtime = ""

  def _check(self, path: str, input_name: str, dims: list, input_dtype: Any,
             outputs: dict[str, list], props: dict[str, str], max_pixels: int) -> None:
    """Sets the attributes from what the file declares (dims: the input's, 0 where not
    fixed; outputs: name -> dims); ValueError naming the file for a graph of another form, or
    an input size above `max_pixels` (checked before anything is allocated)."""
    if len(dims) != 4:
      raise ValueError(f"{path}: expected one (N, H, W, 3) image input, got {input_name} "
                       f"with {len(dims)} dimensions")
    if dims[1] < 1 or dims[2] < 1 or dims[3] != 3:
      raise ValueError(f"{path}: input {input_name} must be (N, H, W, 3) with fixed H, W, "
                       f"got {dims}")
    if dims[1] * dims[2] > max_pixels:
      raise ValueError(f"{path}: input {input_name} is {dims[2]}x{dims[1]} = "
                       f"{dims[1] * dims[2]} pixels, above the limit of {max_pixels} "
                       f"(--max-pixels)")
    self.path, self.input_name, self.size = path, input_name, (dims[1], dims[2])
    self.input_dtype = input_dtype
    cfg = _metadata(path, props)
    self.tasks = tuple(t for t in ("segm", "depth", "normals") if t in outputs)
    if not self.tasks:
      raise ValueError(f"{path}: no segm / depth / normals output (got {sorted(outputs)})")
    if "segm" in outputs and (len(outputs["segm"]) != 4 or outputs["segm"][-1] < 1):
      raise ValueError(f"{path}: output segm must be (N, H, W, classes) with a fixed number "
                       f"of classes, got {outputs['segm']}")
    self.num_classes = outputs["segm"][-1] if "segm" in outputs else 0
    self.align_corners = cfg.get("align_corners", False)
    if not isinstance(self.align_corners, bool):
      raise ValueError(f"{path}: metadata {METADATA_KEY!r}: align_corners must be true or "
                       f"false, got {self.align_corners!r}")
    self.full_resolution = list(outputs[self.tasks[0]][1:3]) == list(self.size)

  def config(self) -> dict:
    """The model config as `api.model_config` gives it for weights."""
    return {"num_classes": self.num_classes, "tasks": self.tasks,
            "align_corners": self.align_corners}

  def raw(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """(N, H, W, 3) images at the graph's size -> the graph's outputs by task name."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:3] != self.size:
      raise ValueError(f"{self.path} takes (N, {self.size[0]}, {self.size[1]}, 3) images, "
                       f"got {images.shape}")
    names = list(self.tasks)
    try:
      values = self._run(images.astype(self.input_dtype), names)
    except Exception as e:  # noqa: BLE001 - the runtime's own types; out of memory kept as is
      if full_res.is_out_of_memory(e):
        raise
      raise ValueError(f"{self.path}: {self.runtime} failed running it ({one_line(e)})") from e
    return dict(zip(names, values))

  def _at_graph_size(self, images: np.ndarray) -> np.ndarray:
    api.check_image(images)
    images = np.asarray(images)
    if images.shape[1:3] == self.size:
      return images
    return np.stack([full_res.resize_image(im, self.size) for im in images])

  def __call__(self, images: Any) -> dict[str, np.ndarray]:
    """As `hydrajax.apply`: (N, H, W, 3) RGB -> "segm" logits (N, H, W, C), "depth" (N, H, W)
    metres >= 0[, "normals" (N, H, W, 3) unit vectors], float32 numpy."""
    images = np.asarray(images)
    raw = self.raw(self._at_graph_size(images))
    size = images.shape[1:3]
    if self.full_resolution and size == self.size:
      return {k: np.asarray(v, np.float32) for k, v in raw.items()}
    return {k: np.asarray(v) for k, v in api.postprocess(raw, size, self.align_corners).items()}

  def dense_predictions(self, image: Any) -> dict[str, np.ndarray]:
    """As `full_res.dense_predictions` for one (H, W, 3) image: "segm" class ids, "depth"
    (H, W) metres, "normals" (H, W, 3), at the image's size."""
    api.check_image(image)
    image = np.asarray(image)
    if image.ndim != 3:
      raise ValueError(f"dense_predictions takes one image (H, W, 3), got shape {image.shape}")
    raw = {k: v[0] for k, v in self.raw(self._at_graph_size(image[None])).items()}
    return full_res.upsample_in_blocks(raw, image.shape[:2], self.align_corners)

  def _run(self, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
    raise NotImplementedError


class OnnxModel(ExportedModel):
  """An exported ONNX graph loaded in onnxruntime (an InferenceSession)."""
  runtime = "onnxruntime"

  def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
               max_pixels: int = pngio.DEFAULT_MAX_PIXELS):
    """ValueError naming the file (one line) for a file onnx or onnxruntime cannot load (a
    broken graph, unknown or custom ops), metadata that is not a JSON object, or an input
    size above `max_pixels` (width x height, checked before anything is allocated)."""
    import onnx
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
      proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for non-ONNX bytes
      raise ValueError(f"{path}: not a readable ONNX model ({one_line(e)})") from e
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.input[0].type.tensor_type.shape.dim) != 4:
      raise ValueError(f"{path}: expected one (N, H, W, 3) image input, "
                       f"got inputs {[i.name for i in graph.input]}")
    inp = graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    try:
      input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
          inp.type.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
      raise ValueError(f"{path}: input {inp.name} has no numeric element type "
                       f"({inp.type.tensor_type.elem_type})") from None
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim]
               for o in graph.output}
    self._check(path, inp.name, dims, input_dtype, outputs,
                {p.key: p.value for p in proto.metadata_props}, max_pixels)
    self.session = cpu_session(path, threads)

  def _run(self, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
    return self.session.run(names, {self.input_name: images})


def cpu_session(path: str, threads: int | None = None):
  """An onnxruntime InferenceSession of the graph at `path` on the CPU (`threads`: intra-op
  threads, default onnxruntime's); ValueError naming the file if onnxruntime cannot load it
  (unknown or custom ops, a broken graph)."""
  import onnxruntime as ort
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = int(threads)
  try:
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # noqa: BLE001 - onnxruntime's own types (InvalidGraph, Fail, ...)
    raise ValueError(f"{path}: onnxruntime cannot load it ({one_line(e)})") from None


def one_line(error: BaseException) -> str:
  """An exception's message on one line (onnx and onnxruntime messages may span several)."""
  return " ".join(str(error).split()) or type(error).__name__


def _metadata(path: str, props: dict[str, str]) -> dict:
  """The model config stored under METADATA_KEY (a JSON object; {} when absent)."""
  if METADATA_KEY not in props:
    return {}
  try:
    cfg = json.loads(props[METADATA_KEY])
  except ValueError as e:
    raise ValueError(f"{path}: metadata {METADATA_KEY!r} is not JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise ValueError(f"{path}: metadata {METADATA_KEY!r} must be a JSON object, got "
                     f"{type(cfg).__name__}")
  return cfg


def display_settings(model: Any, palette: str = "auto", max_depth: float | None = None
                     ) -> tuple[np.ndarray, float]:
  """`visualize.settings_for` of weights, or `visualize.display_settings` of an exported
  graph (by its number of classes: the graph carries no palette)."""
  from hydrajax.inference import visualize
  if isinstance(model, ExportedModel):
    return visualize.display_settings(model.num_classes, palette, max_depth)
  return visualize.settings_for(model, palette, max_depth)
