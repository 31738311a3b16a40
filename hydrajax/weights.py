"""Weights files: a variables dict as one .npz of '/'-joined keys plus a JSON meta entry.

Written atomically (temp file + rename) with stored members (np.savez), and read back
checked against the tree the architecture expects before any array is decoded, so a wrong,
truncated or hostile file fails with the offending member or keys named.

The meta entry ("__meta__", a JSON object; `read_meta(path)`):
  format, version      "hydrajax-weights", 1
  num_classes, tasks, align_corners   the architecture (always written)
Optional keys (EXTRA_META: written by training, kept through load -> save, and returned by
`load` in variables["meta"]):
  dataset              the training config's dataset name (hydrajax.data.registry)
  class_names          [str], class id order (len = num_classes)
  palette              [[r, g, b], ...] uint8 colour per class (len = num_classes)
  intrinsics           {"fx", "fy", "cx", "cy", "width", "height"}: pixels at width x height
  step                 the training step the weights are from
  metrics              {name: value} of the validation at that step (best.npz)
A training run writes WORKDIR/weights/final.npz at its end and WORKDIR/weights/best.npz at
each new best validation; tools take `--workdir` for them (`from_workdir`).
"""
from __future__ import annotations

import functools
import json
import os
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hydrajax import api
from hydrajax.runtime import atomic, stored_zip
from hydrajax.runtime.stored_zip import describe, printable

_META_ENTRY = "__meta__"
_CONVERT_HINT = " (PyTorch checkpoints: convert with `python -m hydrajax.convert.official SRC DST.npz`)"
FORMAT_VERSION = 1
EXTRA_META = ("dataset", "class_names", "palette", "intrinsics", "step", "metrics")
WORKDIR_WEIGHTS = ("best.npz", "final.npz")  # the order `from_workdir` picks them in


def flatten(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def save(path: str | os.PathLike, variables: Mapping[str, Any],
         meta: Mapping[str, Any] | None = None) -> None:
  """Write {"params", "batch_stats"[, "meta"]} to `path` (.npz) atomically, with the
  EXTRA_META keys of variables["meta"] and of `meta` (which wins) in its meta entry."""
  path = os.fspath(path)
  check(variables, what=path)
  arrays = flatten({"params": variables["params"], "batch_stats": variables["batch_stats"]})
  extra = {**{k: v for k, v in dict(variables.get(api.META_KEY) or {}).items()
              if k in EXTRA_META}, **dict(meta or {})}
  unknown = sorted(set(extra) - set(EXTRA_META))
  if unknown:
    raise ValueError(f"unknown weights metadata key(s) {unknown}; known: {EXTRA_META}")
  meta = {"format": "hydrajax-weights", "version": FORMAT_VERSION, **api.model_config(variables)}
  meta["tasks"] = list(meta["tasks"])
  meta.update({k: _plain(v) for k, v in extra.items() if v is not None})
  _check_types(meta, path)
  _check_extra(meta, path)
  arrays[_META_ENTRY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  atomic.write_atomic(path, lambda f: np.savez(f, **arrays))


def load(path: str | os.PathLike) -> dict:
  """Read a weights file written by `save` (or `python -m hydrajax.convert.official`);
  variables["meta"] holds align_corners (if true) and the EXTRA_META keys present.

  The file is checked before any array is decoded: members stored (np.savez never
  compresses), each an .npy of a number dtype whose header's shape matches the bytes it
  holds, the meta entry JSON, and the keys and shapes those of the architecture it names.
  Every metadata field is type-checked (`_META_TYPES`). Any failure is a ValueError naming
  the file and what is wrong."""
  path = os.fspath(path)
  arrays, meta = _read(path)
  variables = _variables(arrays, meta)
  check(variables, what=path)
  _check_extra({**meta, **api.model_config(variables)}, path)
  return variables


def _variables(arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> dict:
  """{"params", "batch_stats"[, "meta"]} from '/'-joined keys and the meta entry."""
  keys = sorted(arrays)
  for a, b in zip(keys, keys[1:]):
    if b.startswith(a + "/"):
      raise ValueError(f"keys {a!r} and {b!r} conflict (an array cannot also be a folder)")
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in arrays.items()})
  variables = {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}
  extra = {k: meta[k] for k in EXTRA_META if k in meta}
  if meta.get("align_corners") or extra:
    variables[api.META_KEY] = {"align_corners": True} if meta.get("align_corners") else {}
    variables[api.META_KEY].update(extra)
  return variables


def read_meta(path: str | os.PathLike) -> dict:
  """The meta entry of a weights file (see the module docstring), arrays not decoded."""
  return _read(os.fspath(path), arrays=False)[1]


def from_workdir(workdir: str | os.PathLike) -> str:
  """WORKDIR/weights/best.npz if a run wrote one, else final.npz; FileNotFoundError else."""
  directory = os.path.join(os.fspath(workdir), "weights")
  for name in WORKDIR_WEIGHTS:
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise FileNotFoundError(f"{directory} has no {' or '.join(WORKDIR_WEIGHTS)}: train first "
                          f"(a run writes them there), or pass --weights FILE.npz")


def choose(weights: str = "", workdir: str = "") -> str:
  """The weights file of a command line's --weights or --workdir (exactly one of them)."""
  if bool(weights) == bool(workdir):
    raise ValueError("give either --weights FILE.npz or --workdir RUN (its best or final "
                     "weights), not " + ("both" if weights else "neither"))
  return weights or from_workdir(workdir)


def add_source_args(parser: Any, onnx: bool = False) -> None:
  """--weights FILE.npz | --workdir RUN (one of them) on an argparse parser; with `onnx`,
  --onnx FILE.onnx|FILE.xml (an exported graph, hydrajax.inference.onnx_runner) as a third
  choice, and --runtime for it."""
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--weights", default="",
                     help="hydrajax weights (.npz from hydrajax.convert.official or training)")
  group.add_argument("--workdir", default="",
                     help="a training run's directory: its weights/best.npz, else final.npz")
  if onnx:
    group.add_argument("--onnx", default="",
                       help="an exported graph (float or int8, hydrajax-export) instead: "
                            "FILE.onnx (onnxruntime) or an OpenVINO IR FILE.xml (OpenVINO)")
    parser.add_argument("--runtime", default="file",
                        choices=("file", "auto", "onnxruntime", "openvino"),
                        help="--onnx: the runtime; file (default): by the file's suffix; "
                             "auto: the fastest installed (OpenVINO, which reads ONNX too, "
                             "else onnxruntime)")


def _plain(value: Any) -> Any:
  """JSON-ready: numpy arrays and scalars as lists and numbers, tuples as lists."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)):
    return value.tolist()
  return value


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_intrinsics(k: Any) -> bool:
  return (isinstance(k, dict) and all(_is_number(k.get(c)) for c in ("fx", "fy", "cx", "cy"))
          and all(_is_int(k.get(c)) and k[c] > 0 for c in ("width", "height")))


# Every meta field hydrajax reads: (what it must be, its test). Unknown fields are kept as
# they are (a newer writer's), never read.
_META_TYPES = {
    "format": ("must be a string", lambda v: isinstance(v, str)),
    "version": ("must be an integer", _is_int),
    "num_classes": ("must be an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "tasks": ("must be a list of task names", lambda v: isinstance(v, list)
              and all(isinstance(t, str) for t in v)),
    "align_corners": ("must be true or false", lambda v: isinstance(v, bool)),
    "dataset": ("must be a dataset name (a string)", lambda v: isinstance(v, str)),
    "class_names": ("must be a list of strings", lambda v: isinstance(v, list)
                    and all(isinstance(x, str) for x in v)),
    "palette": ("must be [r, g, b] rows of 0-255", lambda v: isinstance(v, list) and all(
        isinstance(row, list) and len(row) == 3 and all(_is_int(c) and 0 <= c <= 255
                                                        for c in row) for row in v)),
    "intrinsics": ("must have fx, fy, cx, cy, width, height (numbers; width and height "
                   "integers > 0)", _is_intrinsics),
    "step": ("must be an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "metrics": ("must be an object of metric name: number", lambda v: isinstance(v, dict)
                and all(_is_number(x) for x in v.values())),
}


def _check_types(meta: Mapping[str, Any], path: str) -> None:
  """ValueError naming `path` and the field when a meta field has the wrong type (a value
  that would otherwise fail far from the file, e.g. an unhashable dataset name)."""
  for key, (want, ok) in _META_TYPES.items():
    if key in meta and not ok(meta[key]):
      raise ValueError(f"{path}: metadata {key} {want}, got {meta[key]!r:.80}")


def _check_extra(meta: Mapping[str, Any], path: str) -> None:
  """ValueError naming `path` and the key when (type-checked) metadata does not fit the
  model."""
  n = meta.get("num_classes", 0)
  names, palette = meta.get("class_names"), meta.get("palette")
  if names is not None and len(names) != n:
    raise ValueError(f"{path}: metadata class_names must be {n} strings, got {names!r:.80}")
  if palette is not None and len(palette) != n:
    raise ValueError(f"{path}: metadata palette must be {n} [r, g, b] rows of 0-255, got "
                     f"{len(palette)} rows")


def _read(path: str, arrays: bool = True) -> tuple[dict, dict]:
  """(arrays without the meta entry, meta) of a weights file, every member checked and the
  keys and shapes compared with the architecture before an array is decoded (with
  `arrays=False`, the meta entry alone); errors name the file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a hydrajax weights file (.npz): not a zip archive (a "
                     f"truncated file?){_CONVERT_HINT}")
  try:
    with stored_zip.open_zip(path) as zf:
      members = stored_zip.stored_members(zf, path)
      headers = {}
      for name, info in members.items():
        if not name.endswith(".npy") or not name[:-4].isprintable():
          raise ValueError(f"{path}: member {printable(name)} is not an .npy array: not a "
                           f"hydrajax weights file")
        headers[name[:-4]] = _npy_header(zf, info, path)
      if _META_ENTRY not in headers:
        raise ValueError(f"{path} has no '{_META_ENTRY}' entry: not a hydrajax weights "
                         f"file{_CONVERT_HINT}")
      shape, dtype = headers.pop(_META_ENTRY)
      if dtype != np.uint8 or len(shape) != 1 or shape[0] > _MAX_META_BYTES:
        raise ValueError(f"{path}: its '{_META_ENTRY}' entry is a {dtype} array of shape "
                         f"{shape}, not up to {_MAX_META_BYTES} bytes of JSON")
      meta = _read_meta(_read_npy(zf, members[_META_ENTRY + ".npy"]), path)
      if not arrays:
        return {}, meta
      # Keys and shapes first, from the headers alone: nothing is decoded for a wrong file.
      shapes = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in headers.items()}
      check(_variables(shapes, meta), what=path)
      return {k: _read_npy(zf, members[k + ".npy"]) for k in headers}, meta
  except ValueError as e:
    if path in str(e):
      raise
    raise ValueError(f"{path} is not a hydrajax weights file (.npz): {e}") from e
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"{path} is not a hydrajax weights file (.npz): {e}") from e


_MAX_META_BYTES = 1 << 20


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str
                ) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) from an .npy member's header, checked: a number dtype (no objects, no
  pickles) and exactly as many data bytes as the shape declares."""
  name = printable(info.filename)
  with zf.open(info) as f:
    try:
      version = np.lib.format.read_magic(f)
      if version not in ((1, 0), (2, 0)):
        raise ValueError(f"format version {version}")
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read(f)
    except ValueError as e:
      raise ValueError(f"{path}: member {name} has no valid .npy header "
                       f"({describe(e)})") from e
    header_bytes = f.tell()
  if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields or dtype.subdtype:
    raise ValueError(f"{path}: member {name} holds {dtype} values, not numbers: refused "
                     f"before decoding")
  want = dtype.itemsize * int(np.prod(shape, dtype=object))
  if want != info.file_size - header_bytes:
    raise ValueError(f"{path}: member {name} declares shape {shape} of {dtype} ({want} "
                     f"bytes) but holds {info.file_size - header_bytes} bytes")
  return tuple(shape), dtype


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
  with zf.open(info) as f:
    return np.lib.format.read_array(f, allow_pickle=False)


def _read_meta(raw: np.ndarray, path: str) -> dict:
  try:
    meta = json.loads(raw.tobytes().decode())
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"{path}: its '{_META_ENTRY}' entry is not JSON ({describe(e)}): a "
                     f"damaged weights file") from e
  if not isinstance(meta, dict):
    raise ValueError(f"{path}: its '{_META_ENTRY}' entry is not a JSON object: a damaged "
                     f"weights file")
  _check_types(meta, path)
  return meta


def check(variables: Mapping[str, Any], what: str = "variables") -> None:
  """Raise ValueError listing missing, unexpected and mis-shaped keys, comparing
  `variables` with the tree of the architecture it claims (classes, tasks)."""
  cfg = api.model_config(variables)
  want = expected_shapes(cfg["num_classes"], cfg["tasks"])
  have = flatten_shapes({"params": variables["params"], "batch_stats": variables["batch_stats"]})
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  wrong = sorted(f"{k}: expected {want[k]}, got {have[k]}"
                 for k in set(want) & set(have) if want[k] != have[k])
  if missing or unexpected or wrong:
    parts = [f"{title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else "")
             for title, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("wrong shape", wrong)) if keys]
    raise ValueError(f"{what} does not match the {cfg['tasks']} model with "
                     f"{cfg['num_classes']} classes: " + "; ".join(parts))


@functools.lru_cache(maxsize=16)
def expected_shapes(num_classes: int, tasks: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
  """{"params/..." or "batch_stats/...": shape} of the architecture; traced once per
  (classes, tasks), since tracing the model takes seconds on a small CPU."""
  model = api.model_from_config({"num_classes": num_classes, "tasks": tasks,
                                 "align_corners": False}, impl="native")  # shapes: any impl
  tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return flatten_shapes({"params": tree["params"], "batch_stats": tree["batch_stats"]})


def flatten_shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  return {"/".join(k): tuple(getattr(v, "shape", None) or np.shape(v))
          for k, v in traverse_util.flatten_dict(tree).items()}
