"""Runs of `hydrajax-export --int8` (ONNX or OpenVINO) made cheap enough for the suite, for
tests/test_export_openvino.py: the accuracy guard's per-layer sensitivity pass measures only
the layers a test names (the whole pass builds one graph per quantized layer, about 150), and
the float graph is quantized once for all the runs of one export, which differ only in the
guard's bounds (the same weights, size and frames give the same quantization).
"""
from __future__ import annotations

import contextlib
import io
from typing import Iterator, Sequence

from hydrajax.export import cli, openvino_ir, quantize


@contextlib.contextmanager
def measured_layers(names: Sequence[str]) -> Iterator[None]:
  """Within the block the guard sees only the activation quantizers of the layers `names`
  (nodes of the float ONNX graph, as both formats name the layers)."""
  saved = [(module, module.activation_quantizers) for module in (quantize, openvino_ir)]

  def only(real):
    return lambda graph: {q: layer for q, layer in real(graph).items()
                          if layer.split(" (")[0] in names}

  for module, real in saved:
    module.activation_quantizers = only(real)
  try:
    yield
  finally:
    for module, real in saved:
      module.activation_quantizers = real


@contextlib.contextmanager
def quantized_once() -> Iterator[list]:
  """Within the block the first int8 quantization (ONNX or OpenVINO) serves every later
  one; yields the list it is kept in (empty until then)."""
  first: list = []
  saved = [(module, module.quantize) for module in (quantize, openvino_ir)]

  def once(real):
    def quantized(graph, images, **kwargs):
      if not first:
        first.append(real(graph, images, **kwargs))
      return first[0]
    return quantized

  for module, real in saved:
    module.quantize = once(real)
  try:
    yield first
  finally:
    for module, real in saved:
      module.quantize = real


def run_cli(argv: Sequence[str]) -> dict:
  """{"rc", "out", "err"} of hydrajax-export with `argv`."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = cli.main(list(argv))
  return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}
