"""The exported graph as an OpenVINO IR (`.xml` + `.bin`), float or int8 through NNCF.

The IR is OpenVINO's reading of the float ONNX export (`cli.export_onnx`): the same uint8
(or float32) NHWC input with the normalisation inside, the same named outputs, the same
`--full-resolution` form. Weights stay float32 in the file (no FP16 compression), so the
float IR computes what the ONNX graph computes. The model config travels in the IR's
runtime info under METADATA_KEY (JSON), as in the ONNX graph's metadata.

int8: NNCF's post-training quantization (`nncf.quantize`, the "performance" preset:
symmetric int8 weights per channel and activations, ranges from the calibration images, fast
bias correction) of that OpenVINO model; the parts kept float (FLOAT_PARTS of
`quantize.py`) are given to NNCF as an ignored scope of OpenVINO operations.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hydrajax.export.onnx_graph import METADATA_KEY
from hydrajax.runtime import atomic

# From a clone (hydrajax is not on a package index); versions: pyproject.toml, requirements.txt.
INSTALL = 'pip install -e ".[openvino]" in the hydrajax checkout'


@contextlib.contextmanager
def _no_telemetry():
  """OpenVINO and NNCF post usage telemetry from a thread on import (OpenVINO's through a
  forked process, which a multithreaded JAX process must not do) unless the user opted out or
  a CI variable is set: the variables their own switches read are set while importing."""
  saved = {k: os.environ.get(k) for k in ("CI", "NNCF_CI")}
  os.environ.update({"CI": "true", "NNCF_CI": "1"})
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


def import_openvino():
  try:
    with _no_telemetry():
      import openvino
  except ImportError as e:
    raise ImportError(f"OpenVINO needs openvino: {INSTALL} ({e})") from e
  return openvino


@functools.cache
def core() -> Any:
  """The process's one openvino.Core, which compiles every model hydrajax runs. OpenVINO's CPU
  plugin moves the compiling thread onto a signal stack of its own per Core, and puts the
  previous one back when that Core is freed: Cores freed in any order but the reverse of their
  creation leave the thread on an unmapped signal stack, where the next signal that Python
  handles (Ctrl-C) crashes the process. One Core, kept to the end, has no order to get wrong."""
  return import_openvino().Core()


def import_nncf():
  import_openvino()
  try:
    with _no_telemetry():
      import nncf
  except ImportError as e:
    raise ImportError(f"OpenVINO int8 needs nncf: {INSTALL} ({e})") from e
  return nncf


def from_onnx(onnx_model: bytes, config: Mapping[str, Any] | None = None) -> Any:
  """openvino.Model read from the serialized ONNX export; `config` (JSON-able), when given,
  is stored in its runtime info (else the ONNX graph's own METADATA_KEY property is)."""
  ov = import_openvino()
  import onnx
  if config is None:
    props = {p.key: p.value for p in onnx.load_from_string(onnx_model).metadata_props}
    config = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
  # Core.read_model reads ONNX in this process (convert_model forks a helper process).
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.onnx")
    with open(path, "wb") as f:
      f.write(onnx_model)
    model = ov.Core().read_model(path)
  if config is not None:
    model.set_rt_info(json.dumps(config, sort_keys=True), [METADATA_KEY])
  return model


def metadata(model: Any) -> dict[str, str]:
  """{METADATA_KEY: JSON text} of an openvino.Model ({} when it has none)."""
  if not model.has_rt_info([METADATA_KEY]):
    return {}
  return {METADATA_KEY: model.get_rt_info([METADATA_KEY]).astype(str)}


def save(model: Any, path: str | os.PathLike) -> None:
  """Write `model` as PATH.xml and its weights PATH.bin (float weights kept float32), each
  atomically, the .bin first so the .xml never names weights that are not there yet."""
  ov = import_openvino()
  path = os.fspath(path)
  if not path.endswith(".xml"):
    raise ValueError(f"--out {path}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
  with tempfile.TemporaryDirectory() as tmp:
    xml = os.path.join(tmp, "model.xml")
    ov.save_model(model, xml, compress_to_fp16=False)
    for src, dst in ((xml[:-4] + ".bin", path[:-4] + ".bin"), (xml, path)):
      with open(src, "rb") as f:
        atomic.write_bytes_atomic(dst, f.read())


def signature(model: Any) -> list[tuple[str, str, tuple, str]]:
  """[(kind, name, shape, dtype)] of an openvino.Model, as `cli.signature` gives them; the
  dynamic batch shows as "N"."""
  rows = []
  for kind, ports in (("input", model.inputs), ("output", model.outputs)):
    for port in ports:
      names = port.get_names()
      name = next((n for n in ("image", "segm", "depth", "normals", "labels") if n in names),
                  port.get_any_name())
      shape = tuple("N" if d.is_dynamic else str(d.get_length())
                    for d in port.get_partial_shape())
      rows.append((kind, name, shape, str(np.dtype(port.get_element_type().to_dtype()))))
  return rows


def float_ops(model: Any, parts: Iterable[str]) -> list[str]:
  """Friendly names of the OpenVINO operations of `model` that make up `parts` (FLOAT_PARTS
  of quantize.py, as `quantize.float_nodes` finds them in the ONNX graph): "<task>_head":
  the head's last convolution; "output_resize": the Interpolate ops between the last
  convolution and an output; "input": the ops before the stem's convolution."""
  from hydrajax.export import quantize
  parts = list(parts)
  unknown = set(parts) - set(quantize.FLOAT_PARTS)
  if unknown:
    raise ValueError(f"unknown float parts {sorted(unknown)}; expected some of "
                     f"{quantize.FLOAT_PARTS}")
  outputs = {name: port.get_node().input_value(0).get_node()
             for port in model.outputs for name in port.get_names()}

  def upstream(node: Any, stop: Sequence[str]) -> list[Any]:
    """Ops from `node` up the first input until one of type `stop` (included)."""
    chain = []
    while node is not None:
      chain.append(node)
      if node.get_type_name() in stop or node.get_input_size() == 0:
        break
      node = node.input_value(0).get_node()
    return chain

  names: list[str] = []
  for part in parts:
    if part.endswith("_head"):
      task = part[:-len("_head")]
      if task in outputs:
        chain = upstream(outputs[task], ("Convolution",))
        if chain[-1].get_type_name() == "Convolution":
          names.append(chain[-1].get_friendly_name())
    elif part == "output_resize":
      for node in outputs.values():
        names += [n.get_friendly_name() for n in upstream(node, ("Convolution",))
                  if n.get_type_name() == "Interpolate"]
    elif part == "input":
      for node in model.get_ordered_ops():
        if node.get_type_name() == "Convolution":
          break
        if node.get_type_name() not in ("Parameter", "Constant"):
          names.append(node.get_friendly_name())
  return sorted(set(names))


def quantize(model: Any, images: np.ndarray, *, keep_float: Sequence[str] = ()) -> Any:
  """int8 openvino.Model of the float `model` (NNCF post-training quantization), calibrated on
  `images` (N, H, W, 3) at the model's input size, one image per step; `keep_float` parts
  stay float. The runtime info (model config) is carried over."""
  nncf = import_nncf()
  images = np.asarray(images)
  (port,) = model.inputs
  shape = port.get_partial_shape()
  want = tuple(None if d.is_dynamic else d.get_length() for d in shape)
  if images.ndim != 4 or len(images) == 0 or images.shape[1:] != want[1:]:
    raise ValueError(f"calibration images must be (N>0, {want[1]}, {want[2]}, 3) for this "
                     f"graph, got {images.shape}")
  dtype = np.dtype(port.get_element_type().to_dtype())
  ignored = nncf.IgnoredScope(names=float_ops(model, keep_float), validate=False)
  nncf_log = logging.getLogger("nncf")
  level = nncf_log.level
  nncf_log.setLevel(logging.ERROR)  # progress bars and advice on every export
  try:
    out = nncf.quantize(model, nncf.Dataset([im[None].astype(dtype) for im in images]),
                        preset=nncf.QuantizationPreset.PERFORMANCE,
                        subset_size=len(images), ignored_scope=ignored)
  finally:
    nncf_log.setLevel(level)
  for key, value in metadata(model).items():
    out.set_rt_info(value, [key])
  return out


def compile_model(model: Any, threads: int | None = None) -> Any:
  """openvino.CompiledModel on the CPU: float32 inference precision (no bf16 downcast on
  CPUs that have it, so a float IR computes what the ONNX graph computes), latency hint."""
  config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
  if threads:
    config["INFERENCE_NUM_THREADS"] = int(threads)
  return core().compile_model(model, "CPU", config)


def run(compiled: Any, images: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
  """{name: output} of a compiled model on (N, H, W, 3) images."""
  result = compiled.create_infer_request().infer([np.ascontiguousarray(images)])
  out = {}
  for port in compiled.outputs:
    for name in set(port.get_names()) & set(names):
      out[name] = np.array(result[port])  # a copy: the request owns its buffers
  return out


def activation_quantizers(model: Any) -> dict[str, str]:
  """{FakeQuantize op name: the layer whose output it quantizes, "ONNX node (op type)"} of
  the activations of an int8 openvino.Model: the accuracy guard's candidates for keeping float.

  A candidate is one quantized tensor computed from the image, named by the node of the float
  ONNX export that computes it, as the ONNX path (`quantize.activation_quantizers`) names its
  QuantizeLinear nodes: both int8 exports then rank and name the same layers, in names the
  user finds in the ONNX graph (and in the IR, which keeps them). Not candidates: NNCF's
  weight FakeQuantize ops (on a path from constants only, such as a depthwise convolution's
  reshaped weights; the other weights are folded into int8 constants), which quantize no
  layer's output and would be named after an OpenVINO Reshape, and which the guard leaves int8
  as the ONNX path leaves its int8 weights. The op type is OpenVINO's op that computes the
  tensor (a convolution's bias Add, a Clip's Minimum); an op OpenVINO made while splitting an
  ONNX node (a Sum of three into two Adds) is named by that node, "Sum_121 (Add, part of it)".
  """
  computed = set()  # ops whose output depends on the model's input
  out = {}
  for op in model.get_ordered_ops():
    inputs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
    if op.get_type_name() == "Parameter" or any(n in computed for n in inputs):
      computed.add(op)
    if op.get_type_name() == "FakeQuantize" and inputs[0] in computed:
      out[op.get_friendly_name()] = _onnx_layer(inputs[0])
  return out


def _onnx_layer(op: Any) -> str:
  """The float ONNX node whose output `op` computes, as "node (op type)": `op` itself when its
  output carries an ONNX tensor name (OpenVINO's ONNX reader gives the op computing a node's
  output that node's name), else the first such op downstream, past FakeQuantize ops."""
  kind, part = op.get_type_name(), ""
  seen = set()
  while not op.output(0).get_names():
    seen.add(op)
    consumers = [t.get_node() for t in op.output(0).get_target_inputs()]
    nxt = next((c for c in consumers if c not in seen), None)
    if nxt is None or nxt.get_type_name() == "Result":
      return f"{op.get_friendly_name()} ({kind})"
    if nxt.get_type_name() != "FakeQuantize":
      part = ", part of it"
    op = nxt
  return f"{op.get_friendly_name()} ({kind}{part})"


def without_quantizers(model: Any, names: Sequence[str]) -> Any:
  """A copy of the int8 openvino.Model `model` with the FakeQuantize ops `names` bypassed:
  those layers' outputs reach their consumers in float."""
  copy = model.clone()
  ops = {op.get_friendly_name(): op for op in copy.get_ordered_ops()
         if op.get_type_name() == "FakeQuantize"}
  missing = set(names) - set(ops)
  if missing:
    raise ValueError(f"no FakeQuantize ops {sorted(missing)} in the model")
  for name in names:
    fq = ops[name]
    for target in list(fq.output(0).get_target_inputs()):
      target.replace_source_output(fq.input_value(0))
  copy.validate_nodes_and_infer_types()
  return copy
