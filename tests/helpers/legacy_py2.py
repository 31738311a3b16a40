"""Write a state dict the way PyTorch 0.4 under Python 2.7 did (the official .ckpt files):
the legacy stream (magic, protocol, sys_info, object, storage keys, raw storages) with
protocol-2 pickles whose strings are Python-2 `str` (SHORT_BINSTRING / BINSTRING, latin-1)
and whose OrderedDicts reduce to a list of [key, value] pairs plus `_metadata`, as Python 2
pickled them. torch itself can no longer produce such a file; tests use this to check the
reader on the real format. No torch import: tensors are given as numpy arrays.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage"}


class Global:
  """Pickled as `GLOBAL module\\nname\\n`, so no real object has to be importable."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle only accepts callables as reduce functions
    raise TypeError("marker, not callable")


class Storage:
  def __init__(self, key: str, data: np.ndarray):
    self.key, self.data = key, np.ascontiguousarray(data).ravel()


class View:
  """A torch 0.4 storage view: part of a root storage, pickled with view_metadata."""

  def __init__(self, root: Storage, key: str, offset: int, size: int):
    self.root, self.key, self.offset, self.size = root, key, offset, size


class Tensor:
  """Reduced as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})."""

  def __init__(self, storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return (Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
             Py2OrderedDict()))


class Py2OrderedDict(collections.OrderedDict):
  def __reduce__(self):
    state = dict(vars(self)) or None
    return (Global("collections", "OrderedDict"), ([[k, v] for k, v in self.items()],), state)


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, so opcodes can be replaced
  dispatch = pickle._Pickler.dispatch.copy()

  def save_str(self, obj):
    data = obj.encode("latin1")
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
    self.memoize(obj)

  def save_global_marker(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

  dispatch[str] = save_str
  dispatch[Global] = save_global_marker

  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      return ("storage", Global("torch", STORAGE_NAMES[obj.data.dtype]), obj.key, "cpu",
              obj.data.size, None)
    if isinstance(obj, View):
      return ("storage", Global("torch", STORAGE_NAMES[obj.root.data.dtype]), obj.root.key,
              "cpu", obj.root.data.size, (obj.key, obj.offset, obj.size))
    return None


def dumps(obj) -> bytes:
  buf = io.BytesIO()
  _Py2Pickler(buf, protocol=2).dump(obj)
  return buf.getvalue()


def save(path: str, obj, storages: list[Storage]) -> None:
  """Write `obj` (containing Tensor / Py2OrderedDict) in the legacy format. `storages` are
  the root storages its tensors use, written after the object in this order."""
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 8}}
  with open(path, "wb") as f:
    for part in (MAGIC, 1001, sys_info, obj, [s.key for s in storages]):
      f.write(dumps(part))
    for s in storages:
      f.write(struct.pack("<q", s.data.size))
      f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


def save_state_dict(path: str, state_dict: dict[str, np.ndarray], wrap: bool = True) -> None:
  """Each array in its own storage (as torch 0.4 saved parameters); `wrap` puts it under
  {'state_dict': ...} as the official checkpoints do."""
  storages, sd = [], Py2OrderedDict()
  for i, (key, value) in enumerate(state_dict.items()):
    value = np.array(value, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray does not)
    storage = Storage(str(140000000 + i), value)
    storages.append(storage)
    strides = [s // value.itemsize for s in value.strides]
    sd[key] = Tensor(storage, 0, value.shape, strides)
  sd._metadata = Py2OrderedDict([("", {"version": 1})])
  save(path, {"state_dict": sd} if wrap else sd, storages)
