"""Hostile checkpoints and weights files, built here (small, seeded): each is refused in one
line naming the file and the reason, within a second and a few MB of memory, and a good file
read after it in the same process is exact. Some odd but legitimate files load."""
import collections
import gc
import io
import os
import pickle
import re
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import hydrajax
from hydrajax import weights
from hydrajax.convert import official as convert
from hydrajax.convert import pickle_check
from hydrajax.convert import torch_pickle
from hydrajax.runtime import stored_zip
from tests.helpers import legacy_py2

MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 4 << 20  # the bombs below would take 8 MiB and far more
BOMB_BYTES = 8 << 20
CheckpointError = torch_pickle.CheckpointFormatError


def _good_state():
  rng = np.random.default_rng(0)
  return collections.OrderedDict([
      ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
      ("bn.running_mean", rng.standard_normal(4).astype(np.float32)),
      ("steps", np.arange(5, dtype=np.int64))])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  """{"zip": path, "legacy": path} of a small good checkpoint, and the arrays it holds."""
  root = tmp_path_factory.mktemp("good")
  state = _good_state()
  torch.save({"state_dict": collections.OrderedDict(
      (k, torch.from_numpy(v)) for k, v in state.items())}, root / "good.pth")
  legacy_py2.save_state_dict(str(root / "good.ckpt"), state)
  return {"zip": root / "good.pth", "legacy": root / "good.ckpt"}, state


def assert_good_loads_exactly(good):
  paths, state = good
  for path in paths.values():
    got = torch_pickle.load(path)["state_dict"]
    assert list(got) == list(state)
    for key, value in state.items():
      assert got[key].dtype == value.dtype, key
      np.testing.assert_array_equal(got[key], value, err_msg=key)


def refused(path, match, error=CheckpointError, load=torch_pickle.load) -> str:
  """Load `path`, expecting `error` whose one-line message names the file and matches
  `match`, within MAX_SECONDS of CPU time, and (a second time, traced) MAX_PEAK_BYTES of
  memory; return the message."""
  # CPU seconds of this thread, with the collector paused: what the loader itself spends,
  # not the other xdist worker's load on the shared cores or a collection of other tests'
  # objects (a full collection in a worker that holds compiled programs takes seconds)
  gc.disable()
  try:
    start = time.thread_time()
    with pytest.raises(error) as info:
      load(path)
    seconds = time.thread_time() - start
  finally:
    gc.enable()
  tracemalloc.start()  # slows Python code several times over: not during the timed load
  try:
    with pytest.raises(error):
      load(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(info.value)
  assert "\n" not in message and str(path) in message, message
  assert re.search(match, message), message
  assert seconds < MAX_SECONDS, (seconds, message)
  assert peak < MAX_PEAK_BYTES, (peak, message)
  return message


def refused_by_cli(path, capsys):
  assert convert.main([str(path), str(path) + ".npz"]) == 1
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and str(path) in err, err
  assert not os.path.exists(str(path) + ".npz")
  return err


def rezip(src, dst, change):
  """Copy the zip `src` to `dst`, passing each (ZipInfo, bytes) through `change`, which
  returns the (ZipInfo, bytes) to write instead."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
      out_info, data = change(zipfile.ZipInfo(info.filename, info.date_time), zin.read(info))
      zout.writestr(out_info, data)


def patch_directory(data: bytes, name: str, size: int, stored: int | None = None) -> bytes:
  """`data` (a zip) with `name`'s central directory record claiming `size` bytes
  uncompressed and `stored` (default: `size`) compressed."""
  at = data.find(b"PK\x01\x02")
  while at >= 0:
    length = struct.unpack_from("<H", data, at + 28)[0]
    if data[at + 46:at + 46 + length] == name.encode():
      out = bytearray(data)
      struct.pack_into("<II", out, at + 20, size if stored is None else stored, size)
      return bytes(out)
    at = data.find(b"PK\x01\x02", at + 4)
  raise KeyError(name)


def storage_members(path):
  with zipfile.ZipFile(path) as zf:
    return [n for n in zf.namelist() if "/data/" in n]


# --------------------------------------------------------------------- zip containers

@pytest.mark.parametrize("method,word", [(zipfile.ZIP_DEFLATED, "deflate"),
                                         (zipfile.ZIP_BZIP2, "bzip2"),
                                         (zipfile.ZIP_LZMA, "lzma")])
def test_compressed_zip_member_is_refused_before_inflating(good, tmp_path, capsys, method,
                                                           word):
  bomb_member = storage_members(good[0]["zip"])[0]

  def compress(info, data):
    info.compress_type = method
    return info, bytes(BOMB_BYTES) if info.filename == bomb_member else data

  path = tmp_path / "bomb.pth"
  rezip(good[0]["zip"], path, compress)
  assert path.stat().st_size < BOMB_BYTES // 100
  refused(path, f"member '.*' is compressed \\({word}\\); only stored")
  refused_by_cli(path, capsys)
  assert_good_loads_exactly(good)


def test_zip_member_larger_than_it_stores_is_refused(good, tmp_path):
  data = good[0]["zip"].read_bytes()
  member = storage_members(good[0]["zip"])[0]
  with zipfile.ZipFile(good[0]["zip"]) as zf:
    stored = zf.getinfo(member).compress_size
  path = tmp_path / "big-claim.pth"
  path.write_bytes(patch_directory(data, member, 1 << 30))
  refused(path, f"member '{member}' .*reaches past the end of the {len(data)}-byte file")
  path.write_bytes(patch_directory(data, member, 1 << 30, stored))
  refused(path, f"member '{member}' declares {1 << 30} bytes but stores {stored}")
  assert_good_loads_exactly(good)


def test_zip_members_claiming_more_than_the_file_in_sum_are_refused(good, tmp_path):
  """Each member fits in the file on its own; together they claim more than it holds."""
  src = tmp_path / "three.pth"
  torch.save({"a": torch.ones(4), "b": torch.ones(4), "c": torch.ones(3000)}, src)
  data = src.read_bytes()
  first, second = storage_members(src)[:2]
  with zipfile.ZipFile(src) as zf:
    claim = len(data) - max(zf.getinfo(n).header_offset for n in (first, second)) - 100
  assert 2 * claim > len(data)
  path = tmp_path / "overclaim.pth"
  path.write_bytes(patch_directory(patch_directory(data, first, claim), second, claim))
  refused(path, f"members declare more bytes .* than the {len(data)}-byte file holds")
  assert_good_loads_exactly(good)


def test_zip_of_many_members_is_refused_before_its_directory_is_parsed(good, good_weights,
                                                                      tmp_path, monkeypatch):
  monkeypatch.setattr(stored_zip, "MAX_MEMBERS", 300)  # the real limit takes seconds to write
  path = tmp_path / "many.pth"
  with zipfile.ZipFile(path, "w") as zf:
    for i in range(301):
      zf.writestr(zipfile.ZipInfo(f"{i}", (1980, 1, 1, 0, 0, 0)), b"")
  refused_before_parsing(path, "lists 301 members, more than the 300", good, good_weights,
                         monkeypatch)


def refused_before_parsing(path, match, good, good_weights, monkeypatch):
  """Both loaders (checkpoint and weights) refuse the zip at `path`, naming `match`, before
  zipfile parses its directory; good files load exactly after."""
  parsed = []
  monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(1))
  refused(path, match)
  refused(path, match, ValueError, weights.load)
  assert not parsed
  monkeypatch.undo()
  assert_good_loads_exactly(good)
  assert_good_weights_load_exactly(good_weights)


def zip_of_empty_members(n: int, count: int) -> bytes:
  """A zip of `n` empty stored members named 0, 1, ... whose end record claims `count`
  (built with struct: zipfile takes seconds to write tens of thousands of members)."""
  local, central, offset = [], [], 0
  for i in range(n):
    name = b"%d" % i
    header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name),
                         0) + name
    central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0, 0, 0,
                               len(name), 0, 0, 0, 0, 0, offset) + name)
    local.append(header)
    offset += len(header)
  directory = b"".join(central)
  end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), offset, 0)
  return b"".join(local) + directory + end


def test_zip_directory_larger_than_its_claimed_count_is_refused_before_parsing(
    good, good_weights, tmp_path, monkeypatch):
  """zipfile parses as many records as the directory's size holds, whatever the end record's
  count says: 70,000 members behind a count of 1."""
  path = tmp_path / "many.pth"
  path.write_bytes(zip_of_empty_members(70_000, 1))
  with zipfile.ZipFile(path) as zf:  # what zipfile itself makes of it
    assert len(zf.infolist()) == 70_000
  match = (r"zip directory is 3558890 bytes \(room for 77367 members\), more than the "
           f"{stored_zip.MAX_DIRECTORY_BYTES} a checkpoint")
  refused_before_parsing(path, match, good, good_weights, monkeypatch)


# --------------------------------------------------------------------- tensor geometry

def test_stride_zero_tensor_from_torch_is_refused(good, tmp_path, capsys):
  path = tmp_path / "expanded.pth"
  torch.save({"w": torch.ones(3).expand(100_000, 3)}, path)  # 12 bytes of storage
  assert torch.load(path)["w"].shape == (100_000, 3)
  refused(path, r"size=\(100000, 3\) stride=\(0, 1\) has overlapping elements")
  refused_by_cli(path, capsys)
  assert_good_loads_exactly(good)


@pytest.mark.parametrize("size,stride", [((100_000, 100_000), (0, 0)),  # 40 GB of views
                                         ((10, 10), (1, 1)),  # in bounds, but overlapping
                                         ((4, 5), (5, 0))])
def test_overlapping_legacy_views_are_refused(good, tmp_path, size, stride):
  root = legacy_py2.Storage("1", np.arange(20, dtype=np.float32))
  path = tmp_path / "overlap.ckpt"
  legacy_py2.save(str(path), {"w": legacy_py2.Tensor(root, 0, size, stride)}, [root])
  refused(path, "overlapping elements")
  assert_good_loads_exactly(good)


def test_views_that_do_not_overlap_load_like_torch(tmp_path):
  """Transposes, slices, size-1 dimensions with any stride and shared storages load, as
  torch reads them, without copies."""
  base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
  state = {"perm": base.permute(2, 0, 1), "slice": base[:, 1::2, ::2], "row": base[1],
           "size1-stride0": base.as_strided((1, 5), (0, 1), 7), "base": base}
  path = tmp_path / "views.pth"
  torch.save(state, path)
  got = torch_pickle.load(path)
  for key, value in torch.load(path).items():
    np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)
    assert not got[key].flags.writeable, key
  assert np.shares_memory(got["perm"], got["base"])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_files_of_every_protocol_load_like_torch(tmp_path, protocol, zip_format):
  """What torch.save writes passes the checks: a model's and an SGD optimizer's state
  (int keys), numbers, strings, tuples, None, at pickle protocols 2-5, in both formats."""
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
  net(torch.randn(2, 3, 8, 8)).sum().backward()
  opt.step()
  obj = {"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
         "args": {"lr": 0.1, "name": "x", "sizes": (1, 2), "flags": [True, None]}}
  path = tmp_path / "ckpt.pt"
  torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
  want, got = torch.load(path, weights_only=False), torch_pickle.load(path)
  assert got["epoch"] == 3 and got["args"] == obj["args"]
  assert got["optimizer"]["param_groups"][0]["lr"] == 0.1
  for key, value in want["state_dict"].items():
    np.testing.assert_array_equal(got["state_dict"][key], value.numpy(), err_msg=key)
  for i, state in want["optimizer"]["state"].items():
    np.testing.assert_array_equal(got["optimizer"]["state"][i]["momentum_buffer"],
                                  state["momentum_buffer"].numpy())


# ------------------------------------------------------------- storages of the legacy file

class ClaimingStorage(legacy_py2.Storage):
  """A storage reference claiming `numel` float32 elements (its bytes are never written)."""

  def __init__(self, key, numel):  # noqa: super().__init__ not called: no data
    self.key = key
    self.data = type("Claim", (), {"dtype": np.dtype(np.float32), "size": numel})()


def legacy_stream(path, obj, keys, tail=b""):
  """The legacy stream: header, `obj` pickled as Python 2 did, storage keys, `tail`."""
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 8}}
  with open(path, "wb") as f:
    for part in (legacy_py2.MAGIC, 1001, sys_info, obj, keys):
      f.write(part if isinstance(part, bytes) else legacy_py2.dumps(part))
    f.write(tail)


def test_storages_claiming_the_file_each_are_refused_in_sum(good, tmp_path):
  path = tmp_path / "claims.ckpt"
  storages = [ClaimingStorage(str(i), 0) for i in range(8)]
  legacy_stream(path, {f"w{i}": legacy_py2.Tensor(s, 0, (1,), (1,))
                       for i, s in enumerate(storages)}, [s.key for s in storages])
  each = path.stat().st_size * 2 // 3 // 4  # float32 elements: two thirds of the file each
  storages = [ClaimingStorage(str(i), each) for i in range(8)]
  legacy_stream(path, {f"w{i}": legacy_py2.Tensor(s, 0, (1,), (1,))
                       for i, s in enumerate(storages)}, [s.key for s in storages])
  refused(path, f"storage '1' claims {each} FloatStorage elements, more than the")
  assert_good_loads_exactly(good)


def test_storage_used_but_not_listed_is_refused(good, tmp_path):
  """Before, its tensor silently stayed zero."""
  used = legacy_py2.Storage("7", np.ones(4, np.float32))
  path = tmp_path / "unlisted.ckpt"
  legacy_stream(path, {"w": legacy_py2.Tensor(used, 0, (4,), (1,))}, [])
  refused(path, "do not match the storages the object uses .*not listed: '7'")
  assert_good_loads_exactly(good)


# --------------------------------------------------------------------- pickle contents

class Reduce:
  """Pickled as `module.name(*args)` by legacy_py2's Python 2 pickler."""

  def __init__(self, module, name, *args, state=None):
    self.call, self.args, self.state = legacy_py2.Global(module, name), args, state

  def __reduce__(self):
    return (self.call, self.args) if self.state is None else (self.call, self.args, self.state)


def _text_op(text):
  data = text.encode()
  return b"X" + struct.pack("<I", len(data)) + data


# numpy.dtype('>f4', False, True), as pickle opcodes
DTYPE_BIG = b"cnumpy\ndtype\n" + _text_op(">f4") + b"\x89\x88\x87R"


def build_on_global(module, name, attribute, value_ops) -> bytes:
  """A protocol-2 pickle of {'x': G} after BUILD sets G.attribute, G the global itself."""
  return (b"\x80\x02}" + _text_op("x") + f"c{module}\n{name}\n".encode() + b"N}" +
          _text_op(attribute) + value_ops + b"s\x86bs.")


def _dag_list(depth):
  node = []
  for _ in range(depth):
    node = [node, node]
  return node


def _dag_tuple(depth):
  node = ()
  for _ in range(depth):
    node = (node, node)
  return node


def _self_list():
  node = [1]
  node.append(node)
  return node


HOSTILE_OBJECTS = {
    "bytearray-reduce": (lambda: {"b": Reduce("__builtin__", "bytearray", 50 << 20)},
                         torch_pickle.UnsafeCheckpointError, "global '__builtin__.bytearray'"),
    "shared-lists": (lambda: {"l": _dag_list(40)}, CheckpointError,
                     "shared sub-objects expand to over"),
    "shared-tuple-key": (lambda: {"d": Reduce("collections", "OrderedDict",
                                              [[_dag_tuple(40), 1]])},
                         CheckpointError, "dict key or set item that is an object, not a "),
    "tuple-key": (lambda: {(1, 2): 1}, CheckpointError,
                  "dict key or set item that is an object, not a string or number"),
    "self-referencing": (lambda: {"l": _self_list()}, CheckpointError,
                         "self-referencing structure"),
    "int-hash-collisions": (lambda: {k * (2 ** 61 - 1): 0 for k in range(1, 3000)},
                            CheckpointError, "distinct numbers with one hash"),
    "set-of-complex": (lambda: {"s": Reduce("__builtin__", "set", [
        Reduce("__builtin__", "complex", 1.0, float(i)) for i in range(50)])},
        CheckpointError, "set item that is the result of '__builtin__.complex'"),
    "storage-type-build": (lambda: build_on_global("torch", "FloatStorage", "dtype", DTYPE_BIG),
                           CheckpointError, "BUILD .* on the global 'torch.FloatStorage'"),
    "function-defaults-build": (
        lambda: build_on_global("torch._utils", "_rebuild_parameter", "__defaults__",
                                b"\x88N\x86"),
        CheckpointError, "BUILD .* on the global 'torch._utils._rebuild_parameter'"),
    "ordered-dict-method-build": (
        lambda: {"sd": Reduce("collections", "OrderedDict", [],
                              state={"items": Reduce("collections", "OrderedDict")})},
        CheckpointError, "BUILD on an OrderedDict setting 'items', which would replace"),
    "escape-in-global": (lambda: {"x": Reduce("os\x1b[2J", "system" + "x" * 5000, "id")},
                         torch_pickle.UnsafeCheckpointError,
                         r"global 'os\\x1b\[2J\.systemx+'\.\.\."),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_OBJECTS))
def test_hostile_pickle_is_refused(good, tmp_path, capsys, case):
  build, error, match = HOSTILE_OBJECTS[case]
  path = tmp_path / f"{case}.ckpt"
  legacy_stream(path, build(), [])
  message = refused(path, match, error)
  assert "\x1b" not in message and len(message) < 500, message
  err = refused_by_cli(path, capsys)
  assert "\x1b" not in err
  assert_good_loads_exactly(good)


@pytest.mark.parametrize("payload,match", [
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc.", "truncated file"),
    (pickle.dumps(bytearray(b"abc"), protocol=5), "opcode BYTEARRAY8"),
    (pickle.dumps([1], protocol=2)[:-1] + b"(", "truncated file"),
], ids=["terabyte-bytes", "bytearray8", "no-stop"])
def test_hostile_zip_pickle_is_refused(good, tmp_path, payload, match):
  """A data.pkl claiming a terabyte of bytes, a protocol-5 bytearray, a pickle left open."""
  path = tmp_path / "hostile.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
  refused(path, match)
  assert_good_loads_exactly(good)


def test_zip_entry_names_are_escaped(good, tmp_path):
  path = tmp_path / "names.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("\x1b]0;title\x07/data.pkl", b"x", compress_type=zipfile.ZIP_DEFLATED)
  message = refused(path, r"member '\\x1b\]0;title\\x07/data.pkl' is compressed")
  assert "\x1b" not in message and "\x07" not in message
  assert_good_loads_exactly(good)


def test_globals_are_fresh_read_only_objects_even_if_the_check_is_skipped(good, tmp_path,
                                                                          monkeypatch):
  """With the opcode check off, BUILD on a storage type or function still fails (their
  stand-ins are new and read-only per lookup) and a later load is unchanged."""
  unpickler = torch_pickle._RestrictedUnpickler(io.BytesIO(), None, "x")
  first, second = (unpickler.find_class("torch", "FloatStorage") for _ in range(2))
  assert first is not second
  with pytest.raises(AttributeError):
    first.dtype = np.dtype(">f4")
  monkeypatch.setattr(pickle_check, "check", lambda f, on_global: None)
  for case in ("storage-type-build", "function-defaults-build"):
    path = tmp_path / f"{case}.ckpt"
    legacy_stream(path, HOSTILE_OBJECTS[case][0](), [])
    with pytest.raises(CheckpointError, match="corrupt pickled object .*read-only"):
      torch_pickle.load(path)
  assert_good_loads_exactly(good)


def test_numpy_dtype_build_changes_only_its_own_copy(good, tmp_path):
  """numpy.dtype('f4', copy=False) is numpy's shared float32; BUILD on it must not make
  every later float32 big-endian."""
  path = tmp_path / "dtype.ckpt"
  state = (3, ">", None, None, None, -1, -1, 0)
  legacy_stream(path, {"d": Reduce("numpy", "dtype", "f4", 0, 0, state=state)}, [])
  assert torch_pickle.load(path)["d"] == np.dtype(">f4")
  assert np.dtype("f4").byteorder == "=" and np.dtype(np.float32).isnative
  assert_good_loads_exactly(good)


def test_python2_numpy_scalars_load_as_numpy_unpickles_them(good, tmp_path):
  state = (3, "<", None, None, None, -1, -1, 0)
  big = (3, ">", None, None, None, -1, -1, 0)
  obj = {"loss": Reduce("numpy.core.multiarray", "scalar",
                        Reduce("numpy", "dtype", "f8", 0, 1, state=state),
                        np.float64(0.25).tobytes().decode("latin1")),
         "epoch": Reduce("numpy.core.multiarray", "scalar",
                         Reduce("numpy", "dtype", "i8", 0, 1, state=big),
                         np.array(12, ">i8").tobytes().decode("latin1"))}
  expected = pickle.loads(legacy_py2.dumps(obj), encoding="latin1")  # numpy's own reading
  assert expected == {"loss": 0.25, "epoch": 12}
  path = tmp_path / "scalars.ckpt"
  legacy_stream(path, obj, [])
  got = torch_pickle.load(path)
  for key, value in expected.items():
    assert type(got[key]) is type(value) and got[key] == value, key
  assert_good_loads_exactly(good)


def test_shared_objects_load_shared_not_expanded(tmp_path):
  """A DAG of moderate depth (256 paths) and a tensor referenced twice load as one object
  each, as pickle built them."""
  root = legacy_py2.Storage("1", np.arange(6, dtype=np.float32))
  tensor = legacy_py2.Tensor(root, 0, (2, 3), (3, 1))
  path = tmp_path / "shared.ckpt"
  legacy_py2.save(str(path), {"a": tensor, "b": tensor, "dag": _dag_list(8),
                              "pairs": Reduce("collections", "OrderedDict", [["k", [tensor]]])},
                  [root])
  got = torch_pickle.load(path)
  assert got["a"] is got["b"] is got["pairs"]["k"][0]
  np.testing.assert_array_equal(got["a"], np.arange(6).reshape(2, 3))
  assert got["dag"][0] is got["dag"][1] and got["dag"] == _dag_list(8)


# A PUT's index sizes the unpickler's memo table (16 bytes an index): a file of 20 bytes
# could ask for gigabytes.
MAGIC_PICKLE = pickle.dumps(torch_pickle.LEGACY_MAGIC, protocol=2)


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
@pytest.mark.parametrize("case,payload,match", [
    ("long-binput", MAGIC_PICKLE[:-1] + b"r" + struct.pack("<I", 1 << 25) + b".",
     "memo index 33554432 at byte 14 where pickle writes 0"),
    ("text-put", b"\x80\x02]p33554432\n.", "memo index 33554432 at byte 3 where pickle writes 0"),
    ("skipped-index", b"\x80\x02]q\x00]q\x02\x86.",
     "memo index 2 at byte 6 where pickle writes 1"),
    ("index-rewritten", b"\x80\x02]q\x00]q\x00\x86.",
     "memo index 0 at byte 6 where pickle writes 1"),
], ids=lambda value: value if isinstance(value, str) and "-" in value else "")
def test_memo_index_other_than_the_next_is_refused(good, tmp_path, zip_format, case, payload,
                                                   match):
  if zip_format:
    path = tmp_path / f"{case}.pth"
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", payload)
  else:
    path = tmp_path / f"{case}.ckpt"
    path.write_bytes(payload)
    if case == "long-binput":
      assert path.stat().st_size == 20
  refused(path, match)
  assert_good_loads_exactly(good)


class _CPicklePickler(legacy_py2._Py2Pickler):
  """Python 2's cPickle (which torch 0.4 saved with) numbered memo entries from 1."""

  def put(self, idx):
    return super().put(idx + 1)

  def get(self, i):
    return super().get(i + 1)


def test_memo_numbered_from_one_as_python2_cpickle_wrote_loads(good, tmp_path):
  state = _good_state()
  storages = [legacy_py2.Storage(str(i), v) for i, v in enumerate(state.values())]
  sd = legacy_py2.Py2OrderedDict(
      (k, legacy_py2.Tensor(s, 0, v.shape, [n // v.itemsize for n in v.strides]))
      for (k, v), s in zip(state.items(), storages))
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 8}}
  path = tmp_path / "cpickle.ckpt"
  with open(path, "wb") as f:
    for part in (legacy_py2.MAGIC, 1001, sys_info, {"state_dict": sd}, [s.key for s in storages]):
      buf = io.BytesIO()
      _CPicklePickler(buf, protocol=2).dump(part)
      f.write(buf.getvalue())
    for s in storages:
      f.write(struct.pack("<q", s.data.size) + s.data.tobytes())
  assert b"q\x01" in path.read_bytes() and b"q\x00" not in path.read_bytes()
  got = torch_pickle.load(path)["state_dict"]
  assert list(got) == list(state)
  for key, value in state.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  assert_good_loads_exactly(good)


def _put(index):
  return b"r" + struct.pack("<I", index)


def _calls_on_one_memo_entry(call: bytes, arg_ops: bytes, times: int, keep: str) -> bytes:
  """A protocol-2 pickle calling the global `call` (GLOBAL's argument) `times` on the one
  object `arg_ops` builds, referenced from the memo: the results in a list (`keep="list"`),
  or each kept only in the memo (`keep="memo"`, the object being None)."""
  out = [b"\x80\x02c" + call + b"q\x000", arg_ops, b"q\x010"]
  one = b"h\x00h\x01\x85R"
  if keep == "list":
    out += [b"]q\x02("] + [one] * times + [b"e."]
  else:
    out += [one + _put(2 + i) + b"0" for i in range(times)] + [b"N."]
  return b"".join(out)


def _builds_from_one_state(n: int, times: int) -> bytes:
  """A protocol-2 pickle of None that BUILDs `times` OrderedDicts, each kept only in the
  memo, from one state dict of `n` attributes (copied into each one's __dict__)."""
  state = b"}q\x01(" + b"".join(_text_op(f"a{i}") + b"N" for i in range(n)) + b"u0"
  builds = [b"h\x00)Rh\x01b" + _put(2 + i) + b"0" for i in range(times)]
  return b"".join([b"\x80\x02ccollections\nOrderedDict\nq\x000", state, *builds, b"N."])


def _distinct_ints(n):
  return b"](" + b"".join(b"M" + struct.pack("<H", 256 + i) for i in range(n)) + b"e"


CONTAINERS_OVER_SHARED = {
    # set(S) makes a new string for every character of S
    "sets-of-one-string": (lambda path: legacy_stream(path, _calls_on_one_memo_entry(
        b"__builtin__\nset\n", _text_op("".join(chr(0x100 + i) for i in range(10_000))),
        50, "list"), []), r"__builtin__\.set\(\) of a string, not a list or tuple"),
    # set(tensor) makes a numpy scalar for every element
    "sets-of-one-storage": (lambda path: legacy_py2.save(str(path), [
        Reduce("__builtin__", "set", SHARED_TENSOR) for _ in range(40)], [SHARED_STORAGE]),
        r"__builtin__\.set\(\) of the result of 'torch\._utils\._rebuild_tensor_v2'"),
    "ordered-dicts-of-one-storage": (lambda path: legacy_py2.save(str(path), [
        Reduce("collections", "OrderedDict", SHARED_PAIRS) for _ in range(20)],
        [SHARED_STORAGE]),
        r"collections\.OrderedDict\(\) of the result of 'torch\._utils\._rebuild_tensor_v2'"),
    "ordered-dict-of-tensor-pairs": (lambda path: legacy_py2.save(str(path), Reduce(
        "collections", "OrderedDict", [SHARED_ROW] * 3), [SHARED_STORAGE]),
        r"OrderedDict\(\) of an item that is not a \[key, value\] pair"),
    # each set kept only in the memo, out of reach of the expansion bound of the object
    "sets-of-one-list-in-the-memo": (lambda path: legacy_stream(path, _calls_on_one_memo_entry(
        b"__builtin__\nset\n", _distinct_ints(2000), 200, "memo"), []),
        r"set\(\), frozenset\(\), OrderedDict\(\) and BUILD copy over 42544 items, more "
        r"than a pickle of 2403 objects"),
    "ordered-dicts-built-from-one-state": (lambda path: legacy_stream(
        path, _builds_from_one_state(2000, 200), []),
        r"and BUILD copy over \d+ items, more than a pickle of \d+ objects"),
    "bytes-of-one-string": (lambda path: legacy_stream(path, _calls_on_one_memo_entry(
        b"_codecs\nencode\n", _text_op("x" * 20_000), 500, "list"), []),
        r"_codecs\.encode builds 10000000 bytes, more than the \d+-byte pickle"),
}
SHARED_STORAGE = legacy_py2.Storage("1", np.arange(10_000, dtype=np.float32))
SHARED_TENSOR = legacy_py2.Tensor(SHARED_STORAGE, 0, (10_000,), (1,))
SHARED_PAIRS = legacy_py2.Tensor(SHARED_STORAGE, 0, (5_000, 2), (2, 1))
SHARED_ROW = legacy_py2.Tensor(SHARED_STORAGE, 0, (2,), (1,))


@pytest.mark.parametrize("case", sorted(CONTAINERS_OVER_SHARED))
def test_containers_built_over_a_shared_object_are_refused(good, tmp_path, case):
  """set(), frozenset() and OrderedDict() copy what they are given, and _codecs.encode its
  string: called many times on one memo entry (a string, a list, a tensor), a small file
  builds far more than it holds."""
  write, match = CONTAINERS_OVER_SHARED[case]
  path = tmp_path / f"{case}.ckpt"
  write(path)
  assert path.stat().st_size < 100_000
  refused(path, match)
  assert_good_loads_exactly(good)


def _count_isfinite(monkeypatch) -> list:
  """The sizes of the arrays np.isfinite is given from now on."""
  sizes, real = [], np.isfinite
  monkeypatch.setattr(np, "isfinite", lambda a, *args, **kw: sizes.append(np.size(a)) or real(
      a, *args, **kw))
  return sizes


def test_tensors_viewing_one_storage_are_scanned_for_nan_once(good, tmp_path, monkeypatch):
  """500 state-dict entries viewing one 200,000-element storage (a 0.8 MB file): the
  converter checks the storage's values once, not 100 million elements."""
  base = torch.ones(200_000)
  path = tmp_path / "views.pth"
  torch.save({f"w{i}": base[i:] for i in range(500)}, path)
  sizes = _count_isfinite(monkeypatch)
  refused(path, "cannot detect the checkpoint layout", convert.ConversionError,
          convert.convert)
  assert sum(sizes) <= 2 * base.numel(), sum(sizes)  # two loads
  monkeypatch.undo()
  assert_good_loads_exactly(good)


def test_nan_in_a_shared_storage_is_reported_once_naming_a_tensor(good, tmp_path,
                                                                  monkeypatch):
  base = torch.ones(200_000)
  base[0] = float("nan")
  path = tmp_path / "nan.pth"
  torch.save({f"w{i}": base[1 + i:] for i in range(500)}, path)
  sizes = _count_isfinite(monkeypatch)
  refused(path, r"tensor 'w0' views a storage that holds 1 non-finite value\(s\) \(NaN or "
          r"Inf\) outside it", convert.ConversionError, convert.read_state_dict)
  assert sum(sizes) <= 2 * 2 * base.numel(), sum(sizes)  # the storage and w0, two loads
  torch.save({"w": base[:10]}, path)
  with pytest.raises(convert.ConversionError, match=r"tensor 'w' has 1 non-finite value"):
    convert.read_state_dict(str(path))
  monkeypatch.undo()
  assert_good_loads_exactly(good)


# --------------------------------------------------------------------- weights files

@pytest.fixture(scope="module")
def good_weights(tmp_path_factory):
  """A saved 2-class segm+depth model, loaded once (so the architecture's shapes are
  traced before the timed refusals), and its flat arrays."""
  path = tmp_path_factory.mktemp("weights") / "good.npz"
  hydrajax.save(path, hydrajax.init(0, num_classes=2))
  with zipfile.ZipFile(path) as zf:
    assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
  return path, weights.flatten(hydrajax.load(path))


def assert_good_weights_load_exactly(good_weights):
  path, arrays = good_weights
  got = weights.flatten(hydrajax.load(path))
  assert sorted(got) == sorted(arrays)
  for key, value in arrays.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def weights_members(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_compressed_weights_are_refused(good_weights, tmp_path):
  members = weights_members(good_weights[0])
  path = tmp_path / "compressed.npz"
  np.savez_compressed(path, **{k: members[k] for k in sorted(members)[:3]})
  refused(path, r"member '.*\.npy' is compressed \(deflate\)", ValueError, weights.load)
  bomb = tmp_path / "bomb.npz"
  with zipfile.ZipFile(bomb, "w", zipfile.ZIP_BZIP2) as zf:
    zf.writestr("__meta__.npy", _npy_bytes(np.zeros(BOMB_BYTES, np.uint8)))
  assert bomb.stat().st_size < BOMB_BYTES // 100
  refused(bomb, r"member '__meta__\.npy' is compressed \(bzip2\)", ValueError, weights.load)
  assert_good_weights_load_exactly(good_weights)


def _save_with(path, arrays, extra_bytes=None):
  np.savez(path, **arrays)
  if extra_bytes is not None:
    with zipfile.ZipFile(path, "a") as zf:
      for name, data in extra_bytes.items():
        zf.writestr(name, data)


def _npy_bytes(array, allow_pickle=False):
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=allow_pickle)
  return buf.getvalue()


@pytest.mark.parametrize("case,match", [
    ("object-dtype", r"member 'params/x\.npy' holds object values, not numbers"),
    ("shape-lie", r"member 'params/x\.npy' declares shape \(100000, 100000\) of float32 "
                  r"\(40000000000 bytes\) but holds 16 bytes"),
    ("no-header", r"member 'params/x\.npy' has no valid \.npy header"),
    ("escape-name", r"member '\\x1b\[2Jparams\.npy' is not an \.npy array"),
    ("meta-too-big", r"'__meta__' entry is a uint8 array of shape \(2000000,\)"),
], ids=lambda value: value if value.isidentifier() or "-" in value[:20] else "")
def test_hostile_weights_members_are_refused(good_weights, tmp_path, case, match):
  arrays = weights_members(good_weights[0])
  raw = {}
  if case == "object-dtype":
    raw["params/x.npy"] = _npy_bytes(np.array([{"a": 1}, None], dtype=object), True)
  elif case == "shape-lie":
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100_000, 100_000)})
    raw["params/x.npy"] = header.getvalue() + bytes(16)
  elif case == "no-header":
    raw["params/x.npy"] = b"\x93NUMPY\x01\x00" + b"\xff" * 64
  elif case == "escape-name":
    raw["\x1b[2Jparams.npy"] = _npy_bytes(np.zeros(2, np.float32))
  elif case == "meta-too-big":
    arrays["__meta__"] = np.zeros(2_000_000, np.uint8)
  path = tmp_path / f"{case}.npz"
  _save_with(path, arrays, raw)
  message = refused(path, match, ValueError, weights.load)
  assert "\x1b" not in message
  assert_good_weights_load_exactly(good_weights)


def test_weights_keys_are_checked_before_any_array_is_decoded(good_weights, tmp_path,
                                                              monkeypatch):
  arrays = weights_members(good_weights[0])
  arrays["params/extra/kernel"] = np.zeros((3, 3), np.float32)
  del arrays["params/decoder/conv3/kernel"]
  path = tmp_path / "keys.npz"
  np.savez(path, **arrays)
  decoded = []
  real = weights._read_npy
  monkeypatch.setattr(weights, "_read_npy", lambda zf, info: decoded.append(
      info.filename) or real(zf, info))
  message = refused(path, r"missing \(1\): params/decoder/conv3/kernel; unexpected \(1\): "
                    r"params/extra/kernel", ValueError, weights.load)
  assert "does not match" in message and decoded == ["__meta__.npy"] * 2  # two loads
  monkeypatch.undo()
  assert_good_weights_load_exactly(good_weights)
