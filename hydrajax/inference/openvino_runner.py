"""An exported graph run by OpenVINO on the CPU: an IR (`hydrajax-export --format openvino
[--int8]`, NAME.xml + NAME.bin) or an ONNX export, which OpenVINO reads directly. Called as
`onnx_runner.ExportedModel` is (like `hydrajax.apply`); `exported.load` picks it for
`.xml` files and for `--runtime openvino` (or auto).
"""
from __future__ import annotations

import os

import numpy as np

from hydrajax.data import pngio
from hydrajax.inference import onnx_runner

OUTPUT_NAMES = ("segm", "depth", "normals", "labels")


class OpenVinoModel(onnx_runner.ExportedModel):
  """The graph compiled for OpenVINO's CPU plugin (float32 inference precision, latency
  hint, `threads` inference threads when given)."""
  runtime = "openvino"

  def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
               max_pixels: int = pngio.DEFAULT_MAX_PIXELS):
    """ValueError naming the file (one line) for a file OpenVINO cannot read or compile,
    a graph not of the exported form, or an input above `max_pixels` (width x height)."""
    from hydrajax.export import openvino_ir
    ov = openvino_ir.import_openvino()
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such model file")
    if path.lower().endswith(".xml") and not os.path.isfile(path[:-4] + ".bin"):
      raise FileNotFoundError(f"{path}: its weights {path[:-4] + '.bin'} are missing")
    try:
      model = ov.Core().read_model(path)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its own text
      raise ValueError(f"{path}: OpenVINO cannot read it ({onnx_runner.one_line(e)})") from e
    if len(model.inputs) != 1:
      raise ValueError(f"{path}: expected one (N, H, W, 3) image input, got "
                       f"{len(model.inputs)} inputs")
    (port,) = model.inputs
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
      raise ValueError(f"{path}: input {port.get_any_name()} has no fixed rank")
    dims = [0 if d.is_dynamic else d.get_length() for d in shape]
    outputs = {}
    for out in model.outputs:
      name = next((n for n in OUTPUT_NAMES if n in out.get_names()), None)
      if name is not None and out.get_partial_shape().rank.is_static:
        outputs[name] = [0 if d.is_dynamic else d.get_length() for d in out.get_partial_shape()]
    props = openvino_ir.metadata(model)
    if not props and not path.lower().endswith(".xml"):
      import onnx  # an ONNX file read by OpenVINO: the config is in the graph's metadata
      props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    self._check(path, port.get_any_name(), dims,
                np.dtype(port.get_element_type().to_dtype()), outputs, props, max_pixels)
    try:
      self.compiled = openvino_ir.compile_model(model, threads)
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{path}: OpenVINO cannot compile it ({onnx_runner.one_line(e)})") from e
    self._ports = {}
    for out in self.compiled.outputs:
      for name in set(out.get_names()) & set(OUTPUT_NAMES):
        self._ports[name] = out
    self.request = self.compiled.create_infer_request()

  def _run(self, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
    result = self.request.infer([np.ascontiguousarray(images)])
    return [np.array(result[self._ports[n]]) for n in names]  # copies: the request reuses
