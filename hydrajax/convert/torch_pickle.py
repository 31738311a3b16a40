"""Read PyTorch checkpoint files into numpy arrays, without importing torch.

Both serialisation formats are supported:
- zip (torch >= 1.6): a zip archive holding `<name>/data.pkl` and one raw file per storage
  under `<name>/data/<key>`, every member stored (torch.save never compresses);
- legacy (torch 0.4 .. 1.5, and `_use_new_zipfile_serialization=False`): one stream of
  pickles (magic number, protocol version, sys_info, the object, the storage keys) followed by
  each storage as an int64 element count and raw little-endian bytes. The official
  multi-task-refinenet checkpoints are of this kind, written by Python 2.7, so their strings
  arrive as Python-2 `str` and are decoded as latin-1.

The file is untrusted. Each pickle's opcodes are checked before it is unpickled
(`pickle_check`: lengths within the data, no exponential sharing, BUILD only where torch
uses it). Only the globals a tensor checkpoint needs (tensor and parameter rebuild
functions, storage types, OrderedDict, numpy scalars) resolve, each to a fresh, read-only
local stand-in, so nothing a file does changes a later load; any other global
(`os.system`, `builtins.eval`, ...) raises `UnsafeCheckpointError` before anything in it
runs. Storages together may hold no more bytes than the file, and tensors are read-only
numpy views of them: no stride 0, no overlap, nothing past the storage's end. A view is
what `torch.load(...).numpy()` gives too; no tensor is copied, so what a load allocates is
bounded by the file's size.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

from hydrajax.convert import pickle_check
from hydrajax.runtime import stored_zip
from hydrajax.runtime.stored_zip import describe, printable

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


class _ReadOnly:
  """No attribute of a stand-in can be set or deleted (pickle's BUILD and SETATTR)."""
  __slots__ = ()

  def __setattr__(self, key, value):
    raise AttributeError(f"{type(self).__name__} is read-only")

  def __delattr__(self, key):
    raise AttributeError(f"{type(self).__name__} is read-only")


class _StorageType(_ReadOnly):
  """Stand-in for `torch.FloatStorage` etc.: its name and numpy dtype."""
  __slots__ = ("name",)

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(STORAGE_DTYPES[self.name])

  def __repr__(self):
    return f"torch.{self.name}"


class _Function(_ReadOnly):
  """Stand-in for an allowed global function or class: calls `fn`."""
  __slots__ = ("_fn",)

  def __init__(self, fn: Callable):
    object.__setattr__(self, "_fn", fn)

  def __call__(self, *args):
    return self._fn(*args)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused) -> np.ndarray:
  """numpy equivalent of torch._utils._rebuild_tensor(_v2): a read-only strided view of the
  storage (its `.base`, so a reader can tell which tensors share one). Refused: a stride of
  0 or views whose elements overlap (which would make a few bytes a huge array), and any
  element outside the storage."""
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise CheckpointFormatError(f"tensor rebuilt from a {type(storage).__name__}, not a "
                                f"storage")
  if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
          and len(size) <= 32 and all(type(n) is int and n >= 0 for n in size + stride)
          and type(offset) is int and offset >= 0):
    raise CheckpointFormatError(
        f"invalid tensor geometry: size, stride and offset must be tuples of as many "
        f"non-negative ints (at most 32) and an int, got {_shown(size)}, {_shown(stride)}, "
        f"{_shown(offset)}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  extent = 1  # elements spanned by the dimensions so far, smallest stride first
  for step, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
    if step < extent:
      raise CheckpointFormatError(f"tensor size={size} stride={stride} has overlapping "
                                  f"elements (a stride of 0 or strides that overlap)")
    extent += step * (n - 1)
  if offset + extent > storage.size:
    raise CheckpointFormatError(f"tensor size={size} stride={stride} offset={offset} reads "
                                f"past its storage of {storage.size} elements")
  item = storage.dtype.itemsize
  view = np.ndarray(size, storage.dtype, buffer=storage, offset=offset * item,
                    strides=[s * item for s in stride])
  view.flags.writeable = False
  return view


def _shown(value) -> str:
  """A short description of an untrusted value (never its full repr)."""
  if isinstance(value, tuple) and len(value) <= 8 and all(type(v) is int for v in value):
    return str(value) if len(str(value)) <= 120 else f"a {len(value)}-tuple"
  if type(value) is int:
    return str(value) if value.bit_length() < 64 else "a huge int"
  return f"a {type(value).__name__}"


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_unused):
  return data


_SCALAR_KINDS = "biufc"


def _numpy_dtype(spec, align=False, copy=False, *_unused) -> np.dtype:
  """`numpy.dtype` for a pickled numpy scalar's dtype: a plain number type, always a new
  object (pickle BUILDs its byte order into it; a shared one would change every later use)."""
  if not isinstance(spec, str) or len(spec) > 8:
    raise CheckpointFormatError(f"numpy dtype from {_shown(spec)}, not a short type code")
  dtype = np.dtype(spec, copy=True)
  if dtype.kind not in _SCALAR_KINDS or dtype.fields or dtype.subdtype:
    raise CheckpointFormatError(f"numpy dtype {printable(spec)} is not a number type")
  return dtype


def _numpy_scalar(dtype, data=None):
  """numpy.core.multiarray.scalar: a number from its bytes. Python 2 pickled the bytes as a
  `str`, which arrives decoded as latin-1 (numpy's own unpickling encodes it back)."""
  if not isinstance(dtype, np.dtype) or dtype.kind not in _SCALAR_KINDS or dtype.fields \
      or dtype.subdtype:
    raise CheckpointFormatError(f"numpy scalar of {_shown(dtype)}, not a number dtype")
  if data is None:
    return dtype.type()
  if isinstance(data, str):
    data = data.encode("latin1")
  if not isinstance(data, bytes) or len(data) != dtype.itemsize:
    raise CheckpointFormatError(f"numpy scalar of dtype {dtype} from {_shown(data)} of "
                                f"{len(data) if isinstance(data, bytes) else '?'} bytes, "
                                f"expected {dtype.itemsize}")
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _encode(text, encoding="latin1"):
  """_codecs.encode as Python 3 pickles bytes under protocol 2 (latin-1 only)."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise CheckpointFormatError(f"_codecs.encode of {_shown(text)} as {_shown(encoding)}")
  return text.encode("latin1")


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _encode,
}
for _module in ("builtins", "__builtin__"):  # harmless constructors py2/py3 pickles use
  for _name, _value in (("set", set), ("frozenset", frozenset), ("slice", slice),
                        ("complex", complex)):
    _FUNCTIONS[(_module, _name)] = _value
_STORAGE_MODULES = ("torch", "torch.cuda")


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_FUNCTIONS` and the storage types, each lookup to a new
  read-only stand-in; storages come from `load_storage`."""

  def __init__(self, file: BinaryIO, load_storage, source: str):
    super().__init__(file, encoding="latin1")
    self._load_storage = load_storage
    self._source = source

  def find_class(self, module: str, name: str):
    if module in _STORAGE_MODULES and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _FUNCTIONS:
      return _Function(_FUNCTIONS[(module, name)])
    raise UnsafeCheckpointError(
        f"{self._source}: refusing to load: the pickle references the global "
        f"{printable(f'{module}.{name}')}, which a tensor checkpoint does not need (allowed: "
        f"tensor rebuild functions, torch storage types, OrderedDict, numpy scalars). "
        f"Nothing from the file was executed.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and _is_text(pid[0])
            and _text(pid[0]) == "storage" and isinstance(pid[1], _StorageType)
            and _is_text(pid[2]) and type(pid[4]) is int
            and (len(pid) == 5 or pid[5] is None or _is_view(pid[5]))):
      raise CheckpointFormatError(f"{self._source}: unsupported persistent id "
                                  f"({_shown(pid)}), not a torch storage reference")
    if self._load_storage is None:
      raise CheckpointFormatError(f"{self._source}: a storage reference outside the object")
    return self._load_storage(pid[1], _text(pid[2]), pid[4], pid[5] if len(pid) > 5 else None)


def _is_text(value) -> bool:
  return isinstance(value, (str, bytes)) and len(value) <= 256


def _is_view(value) -> bool:
  return (isinstance(value, tuple) and len(value) == 3 and _is_text(value[0])
          and type(value[1]) is int and type(value[2]) is int)


def _text(value) -> str:
  return value.decode("latin1") if isinstance(value, bytes) else value


def load(path: str | os.PathLike) -> Any:
  """Read a PyTorch checkpoint (`torch.save` output, zip or legacy) with tensors as
  read-only numpy arrays. Raises FileNotFoundError, CheckpointFormatError or
  UnsafeCheckpointError; every message is one line naming the file and what is wrong with
  it (truncated, corrupt or compressed zip member, corrupt or hostile pickle, not a
  checkpoint)."""
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
    raise CheckpointFormatError(f"{path}: corrupt checkpoint ({describe(e)})") from e


_ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header; torch.save's zip starts so


def _refuse_global(path: str) -> Callable[[str, str], None]:
  def check(module: str, name: str) -> None:
    if not (module in _STORAGE_MODULES and name in STORAGE_DTYPES) and (
        (module, name) not in _FUNCTIONS):
      _RestrictedUnpickler(io.BytesIO(), None, path).find_class(module, name)  # raises
  return check


def _unpickle(f: io.BytesIO, load_storage, path: str, what: str) -> Any:
  """The pickle at `f`'s position, its opcodes checked first; every failure is a
  CheckpointFormatError (or UnsafeCheckpointError) naming the file and `what` it was."""
  start = f.tell()
  try:
    pickle_check.check(f, on_global=_refuse_global(path))
  except pickle_check.Truncated as e:
    raise CheckpointFormatError(f"{path}: truncated file (it ends inside the {what})") from e
  except pickle_check.PickleCheckError as e:
    raise CheckpointFormatError(f"{path}: refusing to load the {what}: {e}") from e
  f.seek(start)
  try:
    return _RestrictedUnpickler(f, load_storage, path).load()
  except UnsafeCheckpointError:
    raise
  except CheckpointFormatError as e:
    if str(e).startswith(f"{path}: "):
      raise
    raise CheckpointFormatError(f"{path}: in the {what}: {e}") from e  # from a rebuild function
  except EOFError as e:
    raise CheckpointFormatError(f"{path}: truncated file (it ends inside the {what})") from e
  except Exception as e:  # noqa: BLE001 - pickle raises many types for corrupt data
    if "truncated" in str(e):
      raise CheckpointFormatError(f"{path}: truncated file (it ends inside the {what})") from e
    raise CheckpointFormatError(f"{path}: corrupt {what} ({describe(e)})") from e


def _load_zip(path: str) -> Any:
  try:
    zf = stored_zip.open_zip(path)
  except stored_zip.StoredZipError as e:
    raise CheckpointFormatError(str(e)) from e
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    raise CheckpointFormatError(f"{path}: truncated or damaged zip archive ({describe(e)}); "
                                f"a complete torch.save file ends with the zip directory") from e
  with zf:
    try:
      names = list(stored_zip.stored_members(zf, path))
    except stored_zip.StoredZipError as e:
      raise CheckpointFormatError(str(e)) from e
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
      raise CheckpointFormatError(
          f"{path}: zip archive without '<name>/data.pkl': not a PyTorch checkpoint "
          f"(entries: {', '.join(printable(n) for n in names[:5])})")
    root = pkl[0][: -len("data.pkl")]

    def read(entry: str) -> bytes:
      try:
        return zf.read(entry)
      except Exception as e:  # noqa: BLE001 - BadZipFile (CRC, header), OSError, ...
        raise CheckpointFormatError(f"{path}: corrupt zip entry {printable(entry)} "
                                    f"({describe(e)})") from e

    if root + "byteorder" in names and read(root + "byteorder").strip() != b"little":
      raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
    # Members are stored and their sizes sum to at most the file's, and each is read once:
    # the storages together hold no more bytes than the file.
    cache: dict[str, np.ndarray] = {}

    def load_storage(stype: _StorageType, key: str, numel: int, view_metadata):
      entry = f"{root}data/{key}"
      if key not in cache:
        if entry not in names:
          raise CheckpointFormatError(f"{path}: missing storage entry {printable(entry)}")
        data = read(entry)
        if len(data) != numel * stype.dtype.itemsize:
          raise CheckpointFormatError(
              f"{path}: storage entry {printable(entry)} holds {len(data)} bytes, not the "
              f"{numel} {stype.name} elements its reference declares")
        cache[key] = np.frombuffer(data, dtype=stype.dtype)
      if cache[key].dtype != stype.dtype or cache[key].size != numel:
        raise CheckpointFormatError(f"{path}: storage {printable(key)} referenced as "
                                    f"{numel} {stype.name} and as {cache[key].size} "
                                    f"{cache[key].dtype} elements")
      return cache[key]

    return _unpickle(io.BytesIO(read(pkl[0])), load_storage, path, f"pickle {printable(pkl[0])}")


def _load_legacy(f: io.BytesIO, path: str) -> Any:
  def header(what):
    try:
      return _unpickle(f, None, path, what)
    except UnsafeCheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, it is not a header
      raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (cannot read the {what}: "
                                  f"{describe(e.__cause__ or e)})") from e

  if header("magic number") != LEGACY_MAGIC:
    raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
  if header("protocol version") != LEGACY_PROTOCOL:
    raise CheckpointFormatError(f"{path}: unsupported legacy protocol version")
  sys_info = header("sys_info")
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")

  budget = [len(f.getbuffer())]  # bytes the storages may still claim: no more than the file
  storages: dict[str, np.ndarray] = {}

  def load_storage(stype: _StorageType, key: str, numel: int, view_metadata):
    # Storages follow the object in the stream: hand out a zeroed buffer, filled in place
    # once the bytes are read (tensors are views of it).
    if key not in storages:
      if not 0 <= numel * stype.dtype.itemsize <= budget[0]:
        raise CheckpointFormatError(
            f"{path}: storage {printable(key)} claims {numel} {stype.name} elements, more "
            f"than the {len(f.getbuffer())}-byte file holds besides the other storages: the "
            f"file is truncated or corrupt")
      budget[0] -= numel * stype.dtype.itemsize
      storages[key] = np.zeros(numel, stype.dtype)
    storage = storages[key]
    if storage.dtype != stype.dtype or storage.size != numel:
      raise CheckpointFormatError(f"{path}: storage {printable(key)} referenced as {numel} "
                                  f"{stype.name} and as {storage.size} {storage.dtype} "
                                  f"elements")
    if view_metadata is None:
      return storage
    _, offset, size = view_metadata
    if offset < 0 or size < 0 or offset + size > storage.size:
      raise CheckpointFormatError(f"{path}: storage view of {printable(key)} out of bounds")
    return storage[offset:offset + size]

  obj = _unpickle(f, load_storage, path, "pickled object")
  keys = _unpickle(f, None, path, "list of storage keys")
  if not (isinstance(keys, list) and all(_is_text(k) for k in keys)):
    raise CheckpointFormatError(f"{path}: the list of storage keys is a "
                                f"{type(keys).__name__}, not a list of strings")
  keys = [_text(k) for k in keys]
  if sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
    unlisted = sorted(set(storages) - set(keys))
    extra = sorted(set(keys) - set(storages))
    raise CheckpointFormatError(
        f"{path}: the storage keys do not match the storages the object uses (never "
        f"used: {', '.join(map(printable, extra[:3])) or '-'}; not listed: "
        f"{', '.join(map(printable, unlisted[:3])) or '-'}; listed twice: "
        f"{len(keys) - len(set(keys))})")
  for key in keys:
    storage = storages[key]
    (numel,) = struct.unpack("<q", _read_exact(f, 8, path))
    if numel != storage.size:
      raise CheckpointFormatError(f"{path}: storage {printable(key)} has {numel} elements, "
                                  f"expected {storage.size}")
    got = f.readinto(storage.view(np.uint8))
    if got != storage.nbytes:
      raise CheckpointFormatError(f"{path}: truncated file (wanted {storage.nbytes} bytes, "
                                  f"got {got})")
    storage.flags.writeable = False
  return obj


def _read_exact(f: BinaryIO, n: int, path: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise CheckpointFormatError(f"{path}: truncated file (wanted {n} bytes, got {len(data)})")
  return data
