"""Bad input to `python -m hydrajax.convert.official`: every failure is one line naming the file and
what is wrong, exit code 1, nothing written; damaged real-format checkpoints are fuzzed."""
import collections
import os
import random

import numpy as np
import pytest
import torch

import hydrajax
from hydrajax import weights
from hydrajax.convert import official as convert
from hydrajax.convert import torch_pickle
from tests.helpers import legacy_py2
from tests.helpers.torch_reference import OfficialNet

# Words that say what is wrong; every converter error must use one of them.
KINDS = ("truncated", "corrupt", "not a PyTorch checkpoint", "does not match", "non-finite",
         "cannot detect", "refusing", "not a tensor", "no task head", "state dict", "not found",
         "empty file")


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
  """A 7-class official checkpoint in both real formats: torch's zip and the Python-2 legacy
  stream of the published .ckpt files. Returns {fmt: bytes}."""
  torch.manual_seed(0)
  sd = OfficialNet(7).state_dict()
  root = tmp_path_factory.mktemp("good")
  torch.save({"state_dict": sd, "epoch": 3}, root / "zip.ckpt")
  legacy_py2.save_state_dict(str(root / "legacy.ckpt"),
                             collections.OrderedDict((k, v.numpy()) for k, v in sd.items()))
  return {fmt: (root / f"{fmt}.ckpt").read_bytes() for fmt in ("zip", "legacy")}


def run_cli(capsys, src, dst):
  """convert.main in process -> (exit code, stdout, stderr)."""
  code = convert.main([str(src), str(dst)])
  out = capsys.readouterr()
  return code, out.out, out.err


def assert_clean_failure(code, err, src, dst):
  assert code == 1
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert str(src) in lines[0], err
  assert any(kind in lines[0] for kind in KINDS), err
  assert "Traceback" not in err
  assert not os.path.exists(dst)


def assert_matches_torch_reading(src, dst):
  """The converted weights hold exactly what torch.load reads from the (damaged) file."""
  expected = torch.load(src, weights_only=False)["state_dict"]
  got = weights.flatten(hydrajax.load(dst))
  assert len(got) == len(expected) - sum(k.endswith("num_batches_tracked") for k in expected)
  for path, value in got.items():
    want = convert._to_flax(expected[convert.official_key(tuple(path.split("/")))].numpy())
    np.testing.assert_array_equal(value, want, err_msg=path)


def damaged_cases(good_files, seed=0):
  """Seeded truncations and byte changes of both formats: (name, bytes)."""
  rng = random.Random(seed)
  cases = []
  for fmt, data in good_files.items():
    for frac in (0.0005, 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999):
      cases.append((f"{fmt}-cut{frac}", data[:int(len(data) * frac)]))
    cases.append((f"{fmt}-cut-last-byte", data[:-1]))
    for where, limit in (("header", 4096), ("anywhere", len(data))):
      for _ in range(5):
        pos, xor = rng.randrange(limit), rng.randrange(1, 256)
        damaged = bytearray(data)
        damaged[pos] ^= xor
        cases.append((f"{fmt}-{where}{pos}^{xor}", bytes(damaged)))
  return cases


def test_damaged_checkpoints_fail_in_one_line_or_convert_correctly(good_files, tmp_path, capsys):
  cases = damaged_cases(good_files)
  assert len(cases) == 42
  outcomes = collections.Counter()
  for name, data in cases:
    src, dst = tmp_path / f"{name}.ckpt", tmp_path / f"{name}.npz"
    src.write_bytes(data)
    code, out, err = run_cli(capsys, src, dst)
    if code == 0:  # where the format cannot tell (no checksum on legacy bytes, zip dates)
      assert_matches_torch_reading(src, dst)
      outcomes["converted"] += 1
      os.remove(dst)
    else:
      assert_clean_failure(code, err, src, dst)
      if name.startswith("zip-cut"):
        assert "truncated or damaged zip archive" in err, err
      outcomes["refused"] += 1
    os.remove(src)
  assert outcomes["refused"] >= 32, outcomes


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_file_says_truncated(good_files, tmp_path, capsys, fmt):
  src = tmp_path / "cut.ckpt"
  src.write_bytes(good_files[fmt][: len(good_files[fmt]) // 2])
  code, _, err = run_cli(capsys, src, tmp_path / "out.npz")
  assert_clean_failure(code, err, src, tmp_path / "out.npz")
  assert "truncated" in err


def test_bad_crc_names_the_zip_entry(good_files, tmp_path, capsys):
  data = bytearray(good_files["zip"])
  data[len(data) // 2] ^= 0x55  # inside some storage entry: its CRC no longer matches
  src = tmp_path / "crc.ckpt"
  src.write_bytes(bytes(data))
  code, _, err = run_cli(capsys, src, tmp_path / "out.npz")
  assert_clean_failure(code, err, src, tmp_path / "out.npz")
  assert "corrupt zip entry 'zip/data/" in err and "CRC" in err


def test_non_finite_weight_is_refused_naming_the_tensor(tmp_path, capsys):
  torch.manual_seed(0)
  sd = collections.OrderedDict(
      (k, v.numpy().copy()) for k, v in OfficialNet(7).state_dict().items())
  sd["crp2.0.3_outvar_dimred.weight"][5, 7, 0, 0] = np.nan
  sd["layer4.1.output.0.1.running_var"][2:4] = np.inf  # first in the file's order
  src = tmp_path / "nan.ckpt"
  legacy_py2.save_state_dict(str(src), sd)
  code, _, err = run_cli(capsys, src, tmp_path / "out.npz")
  assert_clean_failure(code, err, src, tmp_path / "out.npz")
  assert "non-finite" in err
  assert "tensor 'layer4.1.output.0.1.running_var' has 2 non-finite value(s)" in err


@pytest.mark.parametrize("content,kind", [
    (b"", "empty file"),
    (b"\x00" * 64, "not a PyTorch checkpoint"),
    (b"PK\x03\x04 not really a zip", "truncated or damaged zip archive"),
    (b"{\"state_dict\": 1}", "not a PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path, capsys, content, kind):
  src = tmp_path / "x.ckpt"
  src.write_bytes(content)
  code, _, err = run_cli(capsys, src, tmp_path / "out.npz")
  assert code == 1 and kind in err and str(src) in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "out.npz").exists()


def test_unexpected_objects_are_named(tmp_path, capsys):
  cases = {
      "list.pt": ([torch.zeros(2)], "expected a state dict"),
      "string-entry.pt": ({"state_dict": {"layer1.0.weight": "hello"}}, "not a tensor"),
      "no-heads.pt": ({"layer1.0.weight": torch.zeros(32, 3, 3, 3), "conv8.weight":
                       torch.zeros(256, 320, 1, 1)}, "no task head"),
      "other-model.pt": ({"fc.weight": torch.zeros(2, 2)}, "cannot detect"),
  }
  for name, (obj, kind) in cases.items():
    src = tmp_path / name
    torch.save(obj, src)
    code, _, err = run_cli(capsys, src, tmp_path / "out.npz")
    assert_clean_failure(code, err, src, tmp_path / "out.npz")
    assert kind in err, (name, err)


def test_mismatched_keys_fit_on_one_line(tmp_path, capsys):
  sd = OfficialNet(7).state_dict()
  del sd["conv3.weight"]
  src = tmp_path / "missing.ckpt"
  torch.save({"state_dict": sd}, src)
  code, _, err = run_cli(capsys, src, tmp_path / "out.npz")
  assert_clean_failure(code, err, src, tmp_path / "out.npz")
  assert "missing (1): conv3.weight" in err


def test_missing_source_and_unwritable_destination(good_files, tmp_path, capsys):
  code, _, err = run_cli(capsys, tmp_path / "nope.ckpt", tmp_path / "out.npz")
  assert_clean_failure(code, err, tmp_path / "nope.ckpt", tmp_path / "out.npz")
  src = tmp_path / "good.ckpt"
  src.write_bytes(good_files["legacy"])
  (tmp_path / "blocker").write_text("a file where a directory is needed")
  dst = tmp_path / "blocker" / "out.npz"
  code, _, err = run_cli(capsys, src, dst)
  assert code == 1 and len(err.strip().splitlines()) == 1 and "blocker" in err, err


def test_reader_errors_are_format_errors(good_files, tmp_path):
  """The library reader (not just the CLI) raises CheckpointFormatError naming the file."""
  src = tmp_path / "cut.ckpt"
  src.write_bytes(good_files["legacy"][:1000])
  with pytest.raises(torch_pickle.CheckpointFormatError, match="cut.ckpt.*truncated"):
    torch_pickle.load(src)


@pytest.mark.parametrize("argv,words", [
    (["--tasks", "segm,edges"], "--tasks 'segm,edges': expected distinct names"),
    (["--num-classes", "0"], "--num-classes 0: expected at least 1"),
    (["--layout", "caffe"], "invalid choice: 'caffe'"),
])
def test_bad_options_exit_2_before_reading(tmp_path, capsys, argv, words):
  with pytest.raises(SystemExit) as exit_:
    convert.main([str(tmp_path / "never-read.pth"), str(tmp_path / "out.npz")] + argv)
  assert exit_.value.code == 2 and words in capsys.readouterr().err
  assert not (tmp_path / "out.npz").exists()
