"""Read PyTorch checkpoint files into numpy arrays, without importing torch.

Both serialisation formats are supported:
- zip (torch >= 1.6): a zip archive holding `<name>/data.pkl` and one raw file per storage
  under `<name>/data/<key>`;
- legacy (torch 0.4 .. 1.5, and `_use_new_zipfile_serialization=False`): one stream of
  pickles (magic number, protocol version, sys_info, the object, the storage keys) followed by
  each storage as an int64 element count and raw little-endian bytes. The official
  multi-task-refinenet checkpoints are of this kind, written by Python 2.7, so their strings
  arrive as Python-2 `str` and are decoded as latin-1.

Unpickling is restricted: only the globals a tensor checkpoint needs (tensor and parameter
rebuild functions, storage types, OrderedDict, numpy scalars) resolve, each to a local,
side-effect-free implementation. A file naming any other global (`os.system`,
`builtins.eval`, ...) raises `UnsafeCheckpointError` before anything in it runs.
Tensors come back as numpy arrays (C-contiguous copies, so views and shared storages are
materialised exactly as `torch.load(...).numpy()` would show them).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The file names a global that a plain tensor checkpoint never needs."""


class CheckpointFormatError(ValueError):
  """The file is not a readable PyTorch checkpoint."""


class _StorageType:
  """Stand-in for `torch.FloatStorage` etc.: only carries the numpy dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(STORAGE_DTYPES[name])

  def __repr__(self):
    return f"torch.{self.name}"


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused) -> np.ndarray:
  """numpy equivalent of torch._utils._rebuild_tensor(_v2): a strided view of the storage,
  bounds-checked (a crafted file must not read outside its storage), copied out."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise CheckpointFormatError(f"tensor rebuilt from a non-storage object {type(storage)}")
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise CheckpointFormatError(f"invalid tensor geometry size={size} stride={stride} "
                                f"offset={offset}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise CheckpointFormatError(f"tensor size={size} stride={stride} offset={offset} reads "
                                f"past its storage of {storage.size} elements")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * item for s in stride],
                                         writeable=False)
  return np.array(view, copy=True, order="C")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_unused):
  return data


def _numpy_scalar(dtype, data=None):
  return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _encode(text, encoding="latin1"):  # Python 3 pickles of bytes under protocol 2
  return text.encode(encoding)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
}
for _module in ("torch", "torch.cuda"):
  for _name in STORAGE_DTYPES:
    _ALLOWED[(_module, _name)] = _StorageType(_name)
for _module in ("builtins", "__builtin__"):  # harmless constructors py2/py3 pickles use
  for _name, _value in (("set", set), ("frozenset", frozenset), ("slice", slice),
                        ("complex", complex), ("bytearray", bytearray)):
    _ALLOWED[(_module, _name)] = _value


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_ALLOWED`; storages come from `load_storage`."""

  def __init__(self, file: BinaryIO, load_storage, source: str, defer_tensors: bool = False):
    super().__init__(file, encoding="latin1")
    self._load_storage = load_storage
    self._source = source
    self._defer = defer_tensors

  def find_class(self, module: str, name: str):
    try:
      value = _ALLOWED[(module, name)]
      # Legacy files store the bytes after the object: rebuild tensors once they are read.
      return _Deferred if self._defer and value is _rebuild_tensor else value
    except KeyError:
      raise UnsafeCheckpointError(
          f"{self._source}: refusing to load: the pickle references the global "
          f"'{module}.{name}', which a tensor checkpoint does not need (allowed: tensor "
          f"rebuild functions, torch storage types, OrderedDict, numpy scalars). Nothing "
          f"from the file was executed.") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and _text(pid[0]) == "storage"
            and isinstance(pid[1], _StorageType)):
      raise CheckpointFormatError(f"{self._source}: unsupported persistent id {pid!r}")
    return self._load_storage(pid[1], _text(pid[2]), pid[4], pid[5] if len(pid) > 5 else None)


def _text(value) -> str:
  return value.decode("latin1") if isinstance(value, bytes) else str(value)


def load(path: str | os.PathLike) -> Any:
  """Read a PyTorch checkpoint (`torch.save` output, zip or legacy) with tensors as numpy
  arrays. Raises FileNotFoundError, CheckpointFormatError or UnsafeCheckpointError; every
  message names the file and what is wrong with it (truncated, corrupt zip entry, corrupt
  pickle, not a checkpoint)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  with open(path, "rb") as f:
    head = f.read(4)
  if not head:
    raise CheckpointFormatError(f"{path}: empty file, not a PyTorch checkpoint")
  try:
    if head == _ZIP_MAGIC:
      return _load_zip(path)
    with open(path, "rb") as f:
      # In memory, so that a damaged length field makes a short read, not a huge allocation.
      return _load_legacy(io.BytesIO(f.read()), path)
  except (CheckpointFormatError, UnsafeCheckpointError):
    raise
  except Exception as e:  # noqa: BLE001 - any failure to decode untrusted bytes is corruption
    raise CheckpointFormatError(f"{path}: corrupt checkpoint ({_describe(e)})") from e


_ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header; torch.save's zip starts so


def _describe(e: BaseException) -> str:
  """An exception as one line: its type and its message's first line."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _unpickle(unpickler: "_RestrictedUnpickler", path: str, what: str) -> Any:
  """`unpickler.load()` with every decoding failure reported as a CheckpointFormatError
  naming the file and the part (`what`) that could not be read."""
  try:
    return unpickler.load()
  except (CheckpointFormatError, UnsafeCheckpointError):
    raise
  except EOFError as e:
    raise CheckpointFormatError(f"{path}: truncated file (it ends inside the {what})") from e
  except Exception as e:  # noqa: BLE001 - pickle raises many types for corrupt data
    if "truncated" in str(e):
      raise CheckpointFormatError(f"{path}: truncated file (it ends inside the {what})") from e
    raise CheckpointFormatError(f"{path}: corrupt {what} ({_describe(e)})") from e


def _load_zip(path: str) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    raise CheckpointFormatError(f"{path}: truncated or damaged zip archive ({_describe(e)}); "
                                f"a complete torch.save file ends with the zip directory") from e
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
      raise CheckpointFormatError(f"{path}: zip archive without '<name>/data.pkl': not a "
                                  f"PyTorch checkpoint (entries: {names[:5]})")
    root = pkl[0][: -len("data.pkl")]

    def read(entry: str) -> bytes:
      try:
        return zf.read(entry)
      except Exception as e:  # noqa: BLE001 - BadZipFile (CRC, header), zlib.error, ...
        raise CheckpointFormatError(f"{path}: corrupt zip entry '{entry}' "
                                    f"({_describe(e)})") from e

    if root + "byteorder" in names and read(root + "byteorder").strip() != b"little":
      raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
    cache: dict[str, np.ndarray] = {}

    def load_storage(stype: _StorageType, key: str, numel, view_metadata):
      if key not in cache:
        entry = f"{root}data/{key}"
        if entry not in names:
          raise CheckpointFormatError(f"{path}: missing storage entry {entry}")
        data = read(entry)
        if len(data) % stype.dtype.itemsize:
          raise CheckpointFormatError(f"{path}: storage entry {entry} has {len(data)} bytes, "
                                      f"not a whole number of {stype.name} elements")
        cache[key] = np.frombuffer(data, dtype=stype.dtype)
      return cache[key]

    unpickler = _RestrictedUnpickler(io.BytesIO(read(pkl[0])), load_storage, path)
    return _unpickle(unpickler, path, f"pickle '{pkl[0]}'")


def _load_legacy(f: io.BytesIO, path: str) -> Any:
  def header(what):
    try:
      return _RestrictedUnpickler(f, None, path).load()
    except UnsafeCheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, it is not a header
      raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (cannot read the {what}: "
                                  f"{_describe(e)})") from e

  if header("magic number") != LEGACY_MAGIC:
    raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
  if header("protocol version") != LEGACY_PROTOCOL:
    raise CheckpointFormatError(f"{path}: unsupported legacy protocol version")
  sys_info = header("sys_info")
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")

  file_size = len(f.getbuffer())
  roots: dict[str, tuple[_StorageType, int]] = {}
  filled: dict[str, np.ndarray] = {}

  def load_storage(stype: _StorageType, key: str, numel, view_metadata):
    # Storages follow the object in the stream, so hand out a placeholder buffer that is
    # filled in place once the bytes are read (tensors are copied out after that).
    if key not in roots:
      numel = int(numel)
      if not 0 <= numel * stype.dtype.itemsize <= file_size:
        # A damaged count must not allocate: no storage is larger than the file.
        raise CheckpointFormatError(f"{path}: storage {key} claims {numel} elements, more "
                                    f"than the whole {file_size}-byte file: the file is "
                                    f"truncated or corrupt")
      roots[key] = (stype, numel)
      filled[key] = np.zeros(numel, stype.dtype)
    if view_metadata is None:
      return filled[key]
    view_key, offset, size = _text(view_metadata[0]), int(view_metadata[1]), int(view_metadata[2])
    if offset < 0 or size < 0 or offset + size > roots[key][1]:
      raise CheckpointFormatError(f"{path}: storage view {view_key} out of bounds")
    return filled[key][offset:offset + size]

  obj = _unpickle(_RestrictedUnpickler(f, load_storage, path, defer_tensors=True), path,
                  "pickled object")
  keys = [_text(k) for k in _unpickle(_RestrictedUnpickler(f, None, path), path,
                                      "list of storage keys")]
  for key in keys:
    if key not in roots:
      raise CheckpointFormatError(f"{path}: storage {key} listed but never used")
    (numel,) = struct.unpack("<q", _read_exact(f, 8, path))
    stype, expected = roots[key]
    if numel != expected:
      raise CheckpointFormatError(f"{path}: storage {key} has {numel} elements, expected "
                                  f"{expected}")
    data = _read_exact(f, numel * stype.dtype.itemsize, path)
    filled[key][...] = np.frombuffer(data, dtype=stype.dtype)
  return _resolve(obj)


def _read_exact(f: BinaryIO, n: int, path: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise CheckpointFormatError(f"{path}: truncated file (wanted {n} bytes, got {len(data)})")
  return data


class _Deferred:
  """A tensor whose storage bytes are not read yet (legacy format)."""

  def __init__(self, *args):
    self.args = args


def _resolve(obj):
  """Replace each `_Deferred` in (nested) containers with its rebuilt array."""
  if isinstance(obj, _Deferred):
    return _rebuild_tensor(*obj.args)
  if isinstance(obj, dict):
    out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve(v)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj
