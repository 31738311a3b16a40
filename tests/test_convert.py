"""hydrajax.convert.torch_pickle and hydrajax.convert.official against PyTorch (test-only torch import)."""
import collections
import io
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hydrajax
from hydrajax import api
from hydrajax.convert import official as convert
from hydrajax.convert import torch_pickle
from hydrajax.models.mobilenet_v2 import MobileNetV2Encoder
from tests.helpers import legacy_py2
from tests.helpers.torch_reference import (OfficialNet, densetorch_state_dict, randomize,
                                   torchvision_state_dict)

# One torch thread: on a shared 2-core machine more threads only contend.
torch.set_num_threads(1)
PARITY_SIZE = (240, 320)
BACKBONE_SIZE = (64, 96)
encode = jax.jit(MobileNetV2Encoder().apply)  # shared, so it compiles once per module


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def to_numpy_sd(sd):
  return collections.OrderedDict((k, v.detach().numpy()) for k, v in sd.items())


def save_checkpoint(path, sd, fmt):
  """sd: torch state dict. fmt: 'zip', 'legacy' (torch's own) or 'py2' (Python-2 legacy)."""
  if fmt == "py2":
    legacy_py2.save_state_dict(path, to_numpy_sd(sd))
  else:
    torch.save({"state_dict": sd, "epoch": 7}, path,
               _use_new_zipfile_serialization=fmt == "zip")


def raw_outputs(variables, image_nchw):
  """hydrajax raw 1/4-resolution outputs, as NCHW numpy like the reference."""
  model = api.model_from_variables(variables)
  net_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  out = jax.jit(model.apply)(net_vars, jnp.asarray(image_nchw.transpose(0, 2, 3, 1)))
  return {t: np.asarray(v)[:, None] if t == "depth" else np.asarray(v).transpose(0, 3, 1, 2)
          for t, v in out.items()}


@pytest.mark.parametrize("num_classes,tasks,fmt,densetorch", [
    (40, ("segm", "depth"), "zip", False),
    (40, ("segm", "depth", "normals"), "legacy", False),
    (6, ("segm", "depth"), "py2", False),
    (40, ("segm", "depth"), "zip", True),
], ids=["nyud-2task-zip", "nyud-3task-legacy", "kitti6-py2-legacy", "densetorch-zip"])
def test_converted_model_matches_pytorch_outputs(tmp_path, capsys, num_classes, tasks, fmt,
                                                 densetorch):
  net = randomize(OfficialNet(num_classes, tasks, align_corners=densetorch),
                  seed=num_classes + len(tasks))
  sd = densetorch_state_dict(net.state_dict()) if densetorch else net.state_dict()
  src, dst = str(tmp_path / "model.ckpt"), str(tmp_path / "model.npz")
  save_checkpoint(src, sd, fmt)
  assert convert.main([src, dst]) == 0
  printed = capsys.readouterr().out
  assert f"layout: {'densetorch' if densetorch else 'official'}" in printed
  assert f"classes: {num_classes}" in printed and ",".join(tasks) in printed

  variables = hydrajax.load(dst)
  assert api.model_config(variables) == {"num_classes": num_classes, "tasks": tasks,
                                         "align_corners": densetorch}
  image = torch.randn(1, 3, *PARITY_SIZE, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = net(image)
  got = raw_outputs(variables, image.numpy())
  for task in tasks:
    assert got[task].shape == expected[task].shape
    # float32 eval-mode forward, two summation orders: no train-mode BN cancellation, so
    # rounding stays ~1e-6 of the outputs' scale on any CPU; a wrong key or layout is >1e-1.
    assert rel_err(got[task], expected[task].numpy()) < 1e-5, task


def strided_state():
  base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
  return collections.OrderedDict([
      ("contiguous", base), ("transposed", base.t()), ("sliced", base[1:5:2, 3:]),
      ("shared_view", base[2]), ("half", torch.randn(3, 4).half()),
      ("long", torch.arange(-5, 5)), ("scalar", torch.tensor(2.5)),
      ("empty", torch.zeros(0, 3)), ("param", torch.nn.Parameter(torch.ones(2, 2))),
      ("uint8", torch.arange(7, dtype=torch.uint8)), ("bool", torch.tensor([True, False])),
  ])


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reader_returns_same_arrays_as_torch_load(tmp_path, fmt):
  state = strided_state()
  path = str(tmp_path / f"{fmt}.pt")
  torch.save({"state_dict": state, "epoch": 3, "note": "x", "list": [state["long"], 1.5]},
             path, _use_new_zipfile_serialization=fmt == "zip")
  expected = torch.load(path, weights_only=False)
  got = torch_pickle.load(path)
  assert got["epoch"] == 3 and got["note"] == "x" and got["list"][1] == 1.5
  np.testing.assert_array_equal(got["list"][0], expected["list"][0].numpy())
  assert list(got["state_dict"]) == list(expected["state_dict"])
  for key, tensor in expected["state_dict"].items():
    value = got["state_dict"][key]
    assert value.dtype == tensor.detach().numpy().dtype, key
    np.testing.assert_array_equal(value, tensor.detach().numpy(), err_msg=key)


def test_reader_reads_python2_legacy_file_with_views_like_torch(tmp_path):
  root = legacy_py2.Storage("9410", np.arange(20, dtype=np.float32))
  longs = legacy_py2.Storage("9411", np.arange(-3, 5, dtype=np.int64))
  sd = legacy_py2.Py2OrderedDict([
      ("view", legacy_py2.Tensor(legacy_py2.View(root, "9412", 4, 10), 1, (3, 3), (1, 3))),
      ("strided", legacy_py2.Tensor(root, 2, (2, 4), (8, 2))),
      ("ints", legacy_py2.Tensor(longs, 0, (2, 4), (4, 1)))])
  path = str(tmp_path / "py2.ckpt")
  legacy_py2.save(path, {"state_dict": sd, "epoch": 3}, [root, longs])
  expected = torch.load(path, weights_only=False)["state_dict"]
  got = torch_pickle.load(path)["state_dict"]
  assert list(got) == ["view", "strided", "ints"]
  for key in got:
    assert got[key].dtype == expected[key].numpy().dtype
    np.testing.assert_array_equal(got[key], expected[key].numpy())


@pytest.fixture(scope="module")
def backbone_net():
  """Reference net whose layer2.0 expansion conv is the identity (as torchvision implies)."""
  net = randomize(OfficialNet(40), seed=3, batches=2)
  block = net.layer2[0].output[0]
  with torch.no_grad():
    block[0].weight.copy_(torch.eye(32)[:, :, None, None])
    block[1].weight.fill_(1.0)
    block[1].bias.zero_()
    block[1].running_mean.zero_()
    block[1].running_var.fill_(1.0 - 1e-5)
  image = torch.randn(2, 3, *BACKBONE_SIZE, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    feats = [f.numpy() for f in net.encode(image)]
  return net, image.numpy(), feats


@pytest.mark.parametrize("layout", ["lwrefinenet", "torchvision"])
def test_backbone_converts_to_reference_encoder_features(tmp_path, backbone_net, layout):
  net, image, expected = backbone_net
  sd = net.state_dict()
  if layout == "torchvision":
    sd = torchvision_state_dict(sd)
  else:
    sd = collections.OrderedDict((k, v) for k, v in sd.items() if k.startswith("layer"))
  path = str(tmp_path / "backbone.pth")
  torch.save(sd, path)  # ImageNet backbones are bare state dicts
  variables, info = convert.convert(path, num_classes=6, tasks=("segm", "depth"), seed=5)
  assert info["layout"] == layout and info["num_classes"] == 6
  encoder = {"params": variables["params"]["encoder"],
             "batch_stats": variables["batch_stats"]["encoder"]}
  feats = encode(encoder, jnp.asarray(image.transpose(0, 2, 3, 1)))
  for got, want in zip(feats, expected):
    # float32 eval-mode features in two frameworks: ~1e-6 of their scale (see above).
    assert rel_err(np.asarray(got).transpose(0, 3, 1, 2), want) < 1e-5
  fresh = hydrajax.init(5, num_classes=6)
  for part in ("decoder", "head_segm", "head_depth"):
    jax.tree.map(np.testing.assert_array_equal, variables["params"][part], fresh["params"][part])


def test_mismatched_keys_are_named(tmp_path):
  sd = OfficialNet(40).state_dict()
  del sd["conv3.weight"]
  sd["extra.weight"] = torch.zeros(3)
  sd["crp2.0.1_outvar_dimred.weight"] = torch.zeros(256, 128, 1, 1)
  path = str(tmp_path / "bad.ckpt")
  torch.save({"state_dict": sd}, path)
  with pytest.raises(convert.ConversionError) as err:
    convert.convert(path)
  message = str(err.value)
  assert "missing (1): conv3.weight" in message
  assert "unexpected (1): extra.weight" in message
  assert "crp2.0.1_outvar_dimred.weight: expected (256, 256, 1, 1), got (256, 128, 1, 1)" in message


def test_unknown_layout_names_the_keys(tmp_path):
  path = str(tmp_path / "other.pt")
  torch.save({"fc.weight": torch.zeros(2, 2)}, path)
  with pytest.raises(convert.ConversionError, match="cannot detect.*fc.weight"):
    convert.convert(path)


class _Evil:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def _malicious_files(tmp_path, marker):
  payload = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
  legacy = pickle.dumps(torch_pickle.LEGACY_MAGIC, 2) + pickle.dumps(1001, 2) + \
      pickle.dumps({"little_endian": True}, 2) + payload
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/byteorder", "little")
  return {
      "legacy-reduce": (legacy, "system"),
      "zip-reduce": (buf.getvalue(), "system"),
      "posix-system": (f"cposix\nsystem\n(S'touch {marker}'\ntR.".encode(), "posix.system"),
      "builtins-eval": (f"cbuiltins\neval\n(S'open(\"{marker}\", \"w\")'\ntR.".encode(),
                        "builtins.eval"),
  }


@pytest.mark.parametrize("case", ["legacy-reduce", "zip-reduce", "posix-system",
                                  "builtins-eval"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, capsys, case):
  marker = tmp_path / "pwned"
  data, global_name = _malicious_files(tmp_path, marker)[case]
  path = tmp_path / "evil.ckpt"
  path.write_bytes(data)
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=f"refusing.*{global_name}"):
    torch_pickle.load(path)
  assert convert.main([str(path), str(tmp_path / "out.npz")]) == 1
  assert "refusing to load" in capsys.readouterr().err
  assert not marker.exists()
  assert not (tmp_path / "out.npz").exists()


def test_tensor_reading_outside_its_storage_is_refused(tmp_path):
  root = legacy_py2.Storage("1", np.arange(4, dtype=np.float32))
  path = str(tmp_path / "oob.ckpt")
  legacy_py2.save(path, {"w": legacy_py2.Tensor(root, 2, (4,), (1,))}, [root])
  with pytest.raises(torch_pickle.CheckpointFormatError, match="past its storage"):
    torch_pickle.load(path)


def test_non_checkpoint_file_is_reported(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("not a checkpoint")
  with pytest.raises(torch_pickle.CheckpointFormatError, match="not a PyTorch checkpoint"):
    torch_pickle.load(path)
