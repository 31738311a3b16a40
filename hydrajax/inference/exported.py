"""Exported graphs by file: `load` runs an ONNX graph in onnxruntime (onnx_runner) or an
OpenVINO IR, or ONNX, in OpenVINO (openvino_runner), behind one interface
(onnx_runner.ExportedModel)."""
from __future__ import annotations

import os

from hydrajax.data import pngio
from hydrajax.inference import onnx_runner
from hydrajax.inference import openvino_runner

RUNTIMES = ("file", "auto", "onnxruntime", "openvino")
# `runtime="auto"`: the first installed, fastest first (measured: docs/export.md).
FASTEST_FIRST = ("openvino", "onnxruntime")


def installed(runtime: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(runtime) is not None


def load(path: str | os.PathLike, runtime: str = "file", *, threads: int | None = None,
         max_pixels: int = pngio.DEFAULT_MAX_PIXELS) -> onnx_runner.ExportedModel:
  """The exported graph at `path` in a runtime: "file" by its suffix (`.xml` an OpenVINO IR
  in OpenVINO, anything else ONNX in onnxruntime), "auto" the fastest installed runtime that
  reads it (OpenVINO reads ONNX too; FASTEST_FIRST), or "onnxruntime" / "openvino".
  ValueError (one line) for a runtime that cannot read the file."""
  path = os.fspath(path)
  if runtime not in RUNTIMES:
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
  suffix = os.path.splitext(path)[1].lower()
  if runtime == "file":
    runtime = "openvino" if suffix == ".xml" else "onnxruntime"
  elif runtime == "auto":
    readers = ("openvino",) if suffix == ".xml" else FASTEST_FIRST
    runtime = next((r for r in readers if installed(r)), readers[-1])
  if runtime == "onnxruntime" and suffix == ".xml":
    raise ValueError(f"{path}: onnxruntime reads ONNX files, not OpenVINO IR; use --runtime "
                     f"openvino (or file)")
  if runtime == "openvino":
    return openvino_runner.OpenVinoModel(path, threads=threads, max_pixels=max_pixels)
  return onnx_runner.OnnxModel(path, threads=threads, max_pixels=max_pixels)
