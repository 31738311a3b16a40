"""Export the network, with its input normalisation, to StableHLO (jax.export), ONNX or an
OpenVINO IR.

    python -m hydrajax.export.cli --weights W.npz --format stablehlo --height 480 --width 640 \\
        --out model.stablehlo [--batch N] [--full-resolution] [--input-dtype float32]

The exported function takes RGB images (N, H, W, 3), uint8 (or float32 in [0, 255]), and
returns named outputs (ONNX output names; dict keys of the StableHLO function):
  default (1/4 resolution, h = ceil(H/4), w = ceil(W/4)):
    "segm"    (N, h, w, C) float32 logits      "depth"   (N, h, w) float32 metres >= 0
    "normals" (N, h, w, 3) unit vectors (three-task models only)
  --full-resolution: the same at (N, H, W, ...), resized bilinearly as `hydrajax.apply`
    does (so equal to its outputs), plus "labels" (N, H, W) int32 = argmax of "segm".
The batch is symbolic ("N") unless --batch is given. H and W are fixed at export time: the
decoder's resizes are constant matrices for one size.

`--format openvino --out model.xml` writes OpenVINO's IR (model.xml + model.bin) of the same
graph, read from the ONNX export (hydrajax.export.openvino_ir); same inputs and outputs.

int8 (ONNX and OpenVINO): `--int8 --calibrate-config configs/x.py` (or `--calibrate-images
DIR`) quantizes the graph statically on `--calibrate-count` seeded images of that dataset's
training split or folder: ONNX through onnxruntime (hydrajax.export.quantize: QDQ,
per-channel int8 weights, uint8 activations), OpenVINO through NNCF; same inputs and outputs
as the float graph. Each int8 export is checked against the float graph on the calibration
frames (hydrajax.export.int8_guard: labels >= `--int8-min-labels`, depth RMS difference <=
`--int8-max-depth` of the mean depth); below that, the layers that cost most are kept float,
by a per-layer measurement, and if that is not enough nothing is written.

Run a StableHLO file without hydrajax: `jax.export.deserialize(open(f, "rb").read()).call(x)`.
Run an ONNX file: `onnxruntime.InferenceSession(f).run(None, {"image": x})`.
Run an IR: `openvino.Core().compile_model("model.xml", "CPU")(x)`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hydrajax import api, weights
from hydrajax.runtime import atomic

FORMATS = ("stablehlo", "onnx", "openvino")
INPUT_DTYPES = ("uint8", "float32")
INPUT_NAME = "image"
OUTPUT_ORDER = ("segm", "depth", "normals", "labels")
ONNX_OPSET = 18  # the first with Resize(axes=...): sizes for H, W only, batch left symbolic
# From a clone (hydrajax is not on a package index); versions: pyproject.toml, requirements.txt.
_ONNX_INSTALL = 'pip install -e ".[onnx]" in the hydrajax checkout'


def inference_fn(variables: Mapping[str, Any], *, full_resolution: bool = False
                 ) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """The exported computation, with the weights closed over as constants.

  image (N, H, W, 3) uint8 or float 0-255 -> dict of OUTPUT_ORDER names (see module doc).
  """
  cfg = api.model_config(variables)
  model = api.model_from_variables(variables)
  net_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}

  def fn(image: jax.Array) -> dict[str, jax.Array]:
    raw = model.apply(net_vars, api.normalize(image), train=False)
    first = next(iter(raw.values()))
    size = image.shape[1:3] if full_resolution else first.shape[1:3]
    # At the raw size postprocess does not resize: it only takes |depth| and unit normals.
    out = api.postprocess(raw, size, cfg["align_corners"])
    if full_resolution and "segm" in out:
      out["labels"] = jnp.argmax(out["segm"], axis=-1).astype(jnp.int32)
    return out

  return fn


def _check_args(height: int, width: int, batch: int | None, input_dtype: str) -> None:
  if isinstance(height, bool) or not isinstance(height, (int, np.integer)) or height < 1:
    raise ValueError(f"height must be a positive int (pixels), got {height!r}")
  if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
    raise ValueError(f"width must be a positive int (pixels), got {width!r}")
  if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
    raise ValueError(f"batch must be a positive int, or None for a symbolic batch, got {batch!r}")
  if input_dtype not in INPUT_DTYPES:
    raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")


def input_spec(height: int, width: int, batch: int | None = None,
               input_dtype: str = "uint8") -> jax.ShapeDtypeStruct:
  """(N, H, W, 3) spec of the image input; N symbolic when batch is None."""
  _check_args(height, width, batch, input_dtype)
  n = "N" if batch is None else str(int(batch))
  shape = jax.export.symbolic_shape(f"{n}, {int(height)}, {int(width)}, 3")
  return jax.ShapeDtypeStruct(shape, jnp.dtype(input_dtype))


def export_stablehlo(variables: Mapping[str, Any], height: int, width: int, *,
                     batch: int | None = None, full_resolution: bool = False,
                     input_dtype: str = "uint8",
                     platforms: Sequence[str] | None = None) -> bytes:
  """Serialized `jax.export.Exported` of `inference_fn` for (batch|N, height, width, 3).

  `platforms` (e.g. ("cpu", "cuda")) defaults to the current backend. Load with
  `jax.export.deserialize(data)` and call `.call(image)` -> dict of outputs.
  """
  spec = input_spec(height, width, batch, input_dtype)
  fn = jax.jit(inference_fn(variables, full_resolution=full_resolution))
  kwargs = {} if platforms is None else {"platforms": tuple(platforms)}
  # The model's impl stays "auto" unresolved: each op lowers per platform (xla_cpu on CPU,
  # native elsewhere), never the FFI kernels, whose targets exist only in this process.
  exported = jax.export.export(fn, **kwargs)(spec)
  return bytes(exported.serialize())


def _import_onnx():
  try:
    import onnx
  except ImportError as e:
    raise ImportError(f"ONNX export needs onnx: {_ONNX_INSTALL} ({e})") from e
  return onnx


def export_onnx(variables: Mapping[str, Any], height: int, width: int, *,
                batch: int | None = None, full_resolution: bool = False,
                input_dtype: str = "uint8", opset: int = ONNX_OPSET) -> bytes:
  """Serialized ONNX ModelProto computing `inference_fn`: input "image" (batch|N, H, W, 3),
  outputs named as in OUTPUT_ORDER. The graph is written node by node (onnx_ops): NCHW
  Conv / Clip / MaxPool / Resize with BatchNorm folded into the convolutions."""
  from hydrajax.export import onnx_graph as onnx_ops
  _import_onnx()
  _check_args(height, width, batch, input_dtype)
  model = onnx_ops.build_model(
      variables, api.model_config(variables), int(height), int(width), batch=batch,
      full_resolution=full_resolution, input_dtype=input_dtype, input_name=INPUT_NAME,
      output_order=OUTPUT_ORDER, opset=opset)
  cfg = api.model_config(variables)
  # What the graph does not show (read back by hydrajax.inference.onnx_runner).
  onnx_ops.set_metadata(model, {"num_classes": cfg["num_classes"], "tasks": list(cfg["tasks"]),
                                "align_corners": bool(cfg["align_corners"]),
                                "full_resolution": bool(full_resolution)})
  return model.SerializeToString()


def signature(data: bytes, fmt: str) -> list[tuple[str, str, tuple, str]]:
  """[(kind "input"/"output", name, shape, dtype)] read back from an exported artifact;
  symbolic dimensions appear as their names."""
  rows = []
  if fmt == "stablehlo":
    exp = jax.export.deserialize(bytearray(data))
    out_names = [jax.tree_util.keystr(p, simple=True) for p, _ in
                 jax.tree_util.tree_flatten_with_path(exp.out_tree.unflatten(exp.out_avals))[0]]
    for aval in exp.in_avals:
      rows.append(("input", INPUT_NAME, tuple(str(d) for d in aval.shape), str(aval.dtype)))
    for name, aval in zip(out_names, exp.out_avals):
      rows.append(("output", name, tuple(str(d) for d in aval.shape), str(aval.dtype)))
  elif fmt == "onnx":
    import onnx
    graph = onnx.load_from_string(data).graph
    for kind, values in (("input", graph.input), ("output", graph.output)):
      for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_param or str(d.dim_value) for d in t.shape.dim)
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        rows.append((kind, v.name, shape, dtype))
  else:
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  return rows


def export(variables: Mapping[str, Any], fmt: str, height: int, width: int, **kwargs) -> bytes:
  """Dispatch to export_stablehlo / export_onnx by format name."""
  if fmt == "stablehlo":
    return export_stablehlo(variables, height, width, **kwargs)
  if fmt in ("onnx", "openvino"):  # the IR is read from the ONNX graph at writing time
    return export_onnx(variables, height, width, **kwargs)
  raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  weights.add_source_args(p)
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--height", required=True, type=int, help="input height in pixels")
  p.add_argument("--width", required=True, type=int, help="input width in pixels")
  p.add_argument("--out", required=True, help="output file (written atomically)")
  p.add_argument("--batch", type=int, default=None,
                 help="fixed batch size (default: symbolic batch 'N')")
  p.add_argument("--full-resolution", action="store_true",
                 help="outputs at the input resolution, plus argmax 'labels'")
  p.add_argument("--input-dtype", choices=INPUT_DTYPES, default="uint8")
  p.add_argument("--int8", action="store_true",
                 help="ONNX and OpenVINO: statically quantized int8 graph (needs a calibration "
                      "source)")
  p.add_argument("--calibrate-config", default=None,
                 help="--int8: calibrate on this config's training images (configs/x.py[:arg])")
  p.add_argument("--calibrate-data-dir", default=None,
                 help="--calibrate-config: the dataset root (the config's data_dir)")
  p.add_argument("--calibrate-images", default=None,
                 help="--int8: calibrate on the image files of this folder")
  p.add_argument("--calibrate-count", type=int, default=None,
                 help="--int8: number of calibration images (default 32, seeded choice)")
  p.add_argument("--calibrate-seed", type=int, default=0)
  p.add_argument("--keep-float", default=None,
                 help="--int8: comma-separated parts left float32, from "
                      "segm_head,depth_head,normals_head,output_resize,input "
                      "(default none: everything int8)")
  p.add_argument("--int8-min-labels", type=float, default=None,
                 help="--int8: the least fraction of calibration pixels whose label must equal "
                      "the float graph's (default 0.97)")
  p.add_argument("--int8-max-depth", type=float, default=None,
                 help="--int8: the largest RMS depth difference to the float graph on the "
                      "calibration frames, as a fraction of its mean depth (default 0.05)")
  p.add_argument("--platforms", default=None,
                 help="StableHLO only: comma-separated, e.g. cpu,cuda (default: this backend)")
  return p.parse_args(argv)


def _check_int8_args(args: argparse.Namespace) -> tuple[str, str] | None:
  """("config" | "images", path) of an --int8 export, None without --int8; ValueError on
  a bad combination."""
  given = [n for n in ("calibrate_config", "calibrate_images", "calibrate_count", "keep_float",
                       "calibrate_data_dir", "int8_min_labels", "int8_max_depth")
           if getattr(args, n) is not None]
  if not args.int8:
    if given:
      raise ValueError(f"--{given[0].replace('_', '-')} applies to --int8 only")
    return None
  if args.format not in ("onnx", "openvino"):
    raise ValueError("--int8 applies to --format onnx and openvino only")
  if (args.calibrate_config is None) == (args.calibrate_images is None):
    raise ValueError("--int8 needs exactly one of --calibrate-config FILE or "
                     "--calibrate-images DIR")
  if args.calibrate_data_dir is not None and args.calibrate_config is None:
    raise ValueError("--calibrate-data-dir applies to --calibrate-config only")
  if args.calibrate_count is not None and args.calibrate_count < 1:
    raise ValueError(f"--calibrate-count must be >= 1, got {args.calibrate_count}")
  if args.keep_float is not None:
    from hydrajax.export import quantize
    parts = {p.strip() for p in args.keep_float.split(",")} - {"", "none"}
    if parts - set(quantize.FLOAT_PARTS):
      raise ValueError(f"--keep-float: unknown float parts {sorted(parts - set(quantize.FLOAT_PARTS))}"
                       f"; expected some of {','.join(quantize.FLOAT_PARTS)} or none")
  _bounds(args)  # checked before the slow part
  if args.format == "openvino":
    from hydrajax.export import openvino_ir
    openvino_ir.import_nncf()
  else:
    try:
      import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
      raise ImportError(f"--int8 needs onnxruntime: {_ONNX_INSTALL} ({e})") from e
  if args.calibrate_config is not None:
    return "config", args.calibrate_config
  return "images", args.calibrate_images


def _bounds(args: argparse.Namespace) -> Any:
  from hydrajax.export import int8_guard
  default = int8_guard.Bounds()
  return int8_guard.Bounds(
      default.min_labels if args.int8_min_labels is None else args.int8_min_labels,
      default.max_depth if args.int8_max_depth is None else args.int8_max_depth)


def _calibration_images(args: argparse.Namespace, calibration: tuple[str, str]) -> np.ndarray:
  from hydrajax.export import quantize
  kind, path = calibration
  count = args.calibrate_count or quantize.CALIBRATE_DEFAULT
  if kind == "config":
    return quantize.images_from_config(path, (args.height, args.width), count,
                                       args.calibrate_seed, args.calibrate_data_dir)
  return quantize.images_from_folder(path, (args.height, args.width), count,
                                     args.calibrate_seed)


def _keep_float(args: argparse.Namespace) -> tuple[str, ...]:
  from hydrajax.export import quantize
  if args.keep_float is None:
    return tuple(quantize.KEEP_FLOAT)
  return tuple(p.strip() for p in args.keep_float.split(",") if p.strip() not in ("", "none"))


class _Runner:
  """run(graph, images) for the accuracy guard, keeping the last graph's session."""

  def __init__(self, load: Callable[[Any], Any], run: Callable[[Any, np.ndarray], dict]):
    self.load, self.run_loaded, self.graph, self.session = load, run, None, None

  def __call__(self, graph: Any, images: np.ndarray) -> dict:
    if graph is not self.graph:
      self.graph, self.session = graph, self.load(graph)
    return self.run_loaded(self.session, images)


def quantize_onnx_guarded(data: bytes, images: np.ndarray, bounds: Any,
                          keep_float: Sequence[str] = ()) -> Any:
  """int8_guard.Result of the QDQ quantization of the serialized float ONNX graph `data`."""
  import onnx
  import onnxruntime as ort
  from hydrajax.export import int8_guard, quantize
  proto = onnx.load_from_string(data)
  names = [o.name for o in proto.graph.output if o.name in ("segm", "depth")]
  run = _Runner(lambda g: ort.InferenceSession(g, providers=["CPUExecutionProvider"]),
                lambda s, x: dict(zip(names, s.run(names, {INPUT_NAME: x}))))
  int8 = quantize.quantize(data, images, keep_float=keep_float)
  layers = quantize.activation_quantizers(int8)
  return int8_guard.guarded(int8, run, data, images, list(layers),
                            quantize.without_quantizers, bounds, label=layers.get)


def quantize_openvino_guarded(model: Any, images: np.ndarray, bounds: Any,
                              keep_float: Sequence[str] = ()) -> Any:
  """int8_guard.Result of NNCF's quantization of the float openvino.Model `model`."""
  from hydrajax.export import int8_guard, openvino_ir
  names = ("segm", "depth")
  run = _Runner(openvino_ir.compile_model, lambda c, x: openvino_ir.run(c, x, names))
  int8 = openvino_ir.quantize(model, images, keep_float=keep_float)
  layers = openvino_ir.activation_quantizers(int8)
  return int8_guard.guarded(int8, run, model, images, list(layers),
                            openvino_ir.without_quantizers, bounds, label=layers.get)


def _check_out(args: argparse.Namespace) -> None:
  if os.path.isdir(args.out):
    raise ValueError(f"--out {args.out} is a directory; give the file to write")
  parent = os.path.dirname(os.path.abspath(args.out))
  if os.path.exists(parent) and not os.path.isdir(parent):
    raise ValueError(f"--out {args.out}: {parent} is a file, not a directory")
  if args.format == "openvino" and not args.out.endswith(".xml"):
    raise ValueError(f"--out {args.out}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    args.weights = weights.choose(args.weights, args.workdir)
    if args.platforms is not None and args.format != "stablehlo":
      raise ValueError("--platforms applies to --format stablehlo only")
    _check_out(args)
    _check_args(args.height, args.width, args.batch, args.input_dtype)
    calibration = _check_int8_args(args)
    if args.format in ("onnx", "openvino"):
      _import_onnx()  # fail before the slow part if it is missing
    if args.format == "openvino":
      from hydrajax.export import openvino_ir
      openvino_ir.import_openvino()
    variables = weights.load(args.weights)
    kwargs = dict(batch=args.batch, full_resolution=args.full_resolution,
                  input_dtype=args.input_dtype)
    if args.platforms:
      kwargs["platforms"] = [s.strip() for s in args.platforms.split(",") if s.strip()]
    data = export(variables, args.format, args.height, args.width, **kwargs)
    log: list[str] = []
    graph: Any = data
    if args.format == "openvino":
      graph = openvino_ir.from_onnx(data)
    if args.int8:
      images = _calibration_images(args, calibration)
      guard = quantize_openvino_guarded if args.format == "openvino" else quantize_onnx_guarded
      result = guard(graph, images, _bounds(args), _keep_float(args))
      graph, log = result.graph, result.log
    if args.format == "openvino":
      rows = openvino_ir.signature(graph)
      openvino_ir.save(graph, args.out)
      size = os.path.getsize(args.out[:-4] + ".bin") + os.path.getsize(args.out)
    else:
      rows = signature(graph, args.format)
      atomic.write_bytes_atomic(args.out, graph)
      size = len(graph)
  except (ValueError, OSError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for line in log:
    print(line)
  kind = f"{args.format}, int8" if args.int8 else args.format
  print(f"wrote {args.out} ({kind}, {size / 1e6:.1f} MB)")
  for kind, name, shape, dtype in rows:
    print(f"  {kind:6s} {name:8s} {dtype:8s} ({', '.join(shape)})")
  return 0


if __name__ == "__main__":
  sys.argv[0] = "python -m hydrajax.export.cli"
  sys.exit(main())
