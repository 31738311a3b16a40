"""Exported StableHLO and ONNX models compute what hydrajax computes; the CLI fails cleanly."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from hydrajax import api, export

H, W = 64, 96


def rel_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def quarter_reference(variables, image):
  """Raw network outputs at 1/4 resolution, computed by the Flax model directly."""
  model = api.model_from_variables(variables)
  net_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  raw = jax.jit(lambda x: model.apply(net_vars, api.normalize(x)))(image)
  return {"segm": raw["segm"], "depth": jnp.abs(raw["depth"])}


def check_full(out, variables, image):
  ref = hydrajax.apply(variables, image)
  assert rel_l2(out["segm"], ref["segm"]) < 1e-4
  assert rel_l2(out["depth"], ref["depth"]) < 1e-4
  assert out["labels"].dtype == np.int32 and out["labels"].shape == image.shape[:3]
  # argmax may flip only where two logits tie to float rounding
  assert np.mean(np.asarray(out["labels"]) == np.asarray(ref["segm"]).argmax(-1)) > 0.999


@pytest.fixture(scope="module")
def stablehlo_quarter(variables):
  """Serialized StableHLO, 1/4-resolution outputs, symbolic batch, uint8 input."""
  return export.export_stablehlo(variables, H, W)


def ort_session(ort, model):
  options = ort.SessionOptions()
  options.log_severity_level = 3  # its shape-merge notes on NHWC<->NCHW transposes are noise
  return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_stablehlo_quarter_resolution_symbolic_batch_matches_model(variables, stablehlo_quarter):
  exp = jax.export.deserialize(bytearray(stablehlo_quarter))
  assert str(exp.in_avals[0].shape[0]) == "N"
  for n in (1, 3):
    x = images(n, seed=n)
    out = exp.call(x)
    ref = quarter_reference(variables, x)
    assert sorted(out) == ["depth", "segm"]
    assert out["segm"].shape == (n, H // 4, W // 4, 40)
    assert rel_l2(out["segm"], ref["segm"]) < 1e-4
    assert rel_l2(out["depth"], ref["depth"]) < 1e-4


def test_stablehlo_full_resolution_matches_apply(variables):
  exp = jax.export.deserialize(bytearray(
      export.export_stablehlo(variables, H, W, full_resolution=True)))
  x = images(3, seed=13)  # batch 1 is checked at 1/4 resolution; apply's compile is shared
  check_full(exp.call(x), variables, x)


_RUN_WITHOUT_HYDRAJAX = """
import sys, numpy as np, jax
exp = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
x = np.load(sys.argv[2])
out = exp.call(x)
assert not any(m.startswith("hydrajax") for m in sys.modules), "hydrajax was imported"
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in out.items()})
"""


def test_stablehlo_runs_without_hydrajax(variables, stablehlo_quarter, tmp_path):
  (tmp_path / "m.stablehlo").write_bytes(stablehlo_quarter)
  x = images(2, seed=5)
  np.save(tmp_path / "x.npy", x)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-c", _RUN_WITHOUT_HYDRAJAX, str(tmp_path / "m.stablehlo"),
                  str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
                 check=True, cwd=tmp_path, env=env)
  got = np.load(tmp_path / "y.npz")
  ref = quarter_reference(variables, x)
  assert rel_l2(got["segm"], ref["segm"]) < 1e-4
  assert rel_l2(got["depth"], ref["depth"]) < 1e-4


def test_onnx_full_resolution_symbolic_batch_matches_apply(variables):
  pytest.importorskip("jax2onnx")
  ort = pytest.importorskip("onnxruntime")
  data = export.export_onnx(variables, H, W, full_resolution=True)
  sess = ort_session(ort, data)
  assert [o.name for o in sess.get_outputs()] == ["segm", "depth", "labels"]
  assert sess.get_inputs()[0].shape == ["N", H, W, 3]
  for n in (1, 3):
    x = images(n, seed=20 + n)
    out = dict(zip(["segm", "depth", "labels"], sess.run(None, {"image": x})))
    check_full(out, variables, x)


def test_cli_onnx_fixed_batch_quarter_resolution(variables, tmp_path, capsys):
  pytest.importorskip("jax2onnx")
  ort = pytest.importorskip("onnxruntime")
  weights = tmp_path / "w.npz"
  hydrajax.save(weights, variables)
  out_file = tmp_path / "m.onnx"
  rc = export.main(["--weights", str(weights), "--format", "onnx", "--height", str(H),
                    "--width", str(W), "--batch", "2", "--input-dtype", "float32",
                    "--out", str(out_file)])
  assert rc == 0
  printed = capsys.readouterr().out
  assert "input  image    float32  (2, 64, 96, 3)" in printed
  assert "output depth    float32  (2, 16, 24)" in printed
  sess = ort_session(ort, str(out_file))
  x = images(2, seed=7)
  segm, depth = sess.run(["segm", "depth"], {"image": x.astype(np.float32)})
  ref = quarter_reference(variables, x)
  assert rel_l2(segm, ref["segm"]) < 1e-4
  assert rel_l2(depth, ref["depth"]) < 1e-4


def test_onnx_friendly_max_pool_is_exact():
  from hydrajax import onnx_ops
  from hydrajax.models import layers
  x = jax.random.normal(jax.random.key(1), (2, 9, 11, 5))
  np.testing.assert_array_equal(onnx_ops.max_pool_5x5_nchw(x), layers.max_pool_5x5(x))


@pytest.mark.parametrize("bad,message", [
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--weights", "{tmp}/missing.npz"], "weights file not found"),
    (["--height", "0"], "height must be a positive int"),
    (["--batch", "0"], "batch must be a positive int"),
    (["--platforms", "cpu", "--format", "onnx"], "--platforms applies to --format stablehlo"),
])
def test_cli_bad_arguments_fail_and_write_nothing(bad, message, variables, tmp_path, capsys):
  weights = tmp_path / "w.npz"
  hydrajax.save(weights, variables)
  args = {"--weights": str(weights), "--format": "stablehlo", "--height": str(H),
          "--width": str(W), "--out": str(tmp_path / "out" / "m.bin")}
  for flag, value in zip(bad[::2], bad[1::2]):
    args[flag] = value.format(tmp=tmp_path)
  argv = [item for pair in args.items() for item in pair]
  try:
    rc = export.main(argv)
  except SystemExit as e:  # argparse rejects unknown choices itself
    rc = e.code
  assert rc != 0
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
