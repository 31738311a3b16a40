"""Exported StableHLO and ONNX models compute what hydrajax computes; the CLI fails cleanly."""
import collections
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from hydrajax import api
from hydrajax.export import cli as export
from tests.helpers.numerics import rel_l2

H, W = 64, 96


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
  return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


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


def onnx_outputs(sess, x):
  return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))


@pytest.fixture(scope="module")
def onnx_quarter(variables):
  """ONNX model bytes, 1/4-resolution outputs, symbolic batch, uint8 input."""
  pytest.importorskip("onnx")
  return export.export_onnx(variables, H, W)


def test_onnx_quarter_resolution_symbolic_batch_matches_model(variables, onnx_quarter):
  ort = pytest.importorskip("onnxruntime")
  sess = ort_session(ort, onnx_quarter)
  for n in (1, 3):
    x = images(n, seed=30 + n)
    out = onnx_outputs(sess, x)
    ref = quarter_reference(variables, x)
    assert sorted(out) == ["depth", "segm"]
    assert out["segm"].shape == (n, H // 4, W // 4, 40)
    # Same products in float32, summed in another order (BN folded): ~1e-7 relative.
    assert rel_l2(out["segm"], ref["segm"]) < 1e-4
    assert rel_l2(out["depth"], ref["depth"]) < 1e-4


def test_onnx_full_resolution_symbolic_batch_matches_apply(variables):
  ort = pytest.importorskip("onnxruntime")
  data = export.export_onnx(variables, H, W, full_resolution=True)
  sess = ort_session(ort, data)
  assert [o.name for o in sess.get_outputs()] == ["segm", "depth", "labels"]
  assert sess.get_inputs()[0].shape == ["N", H, W, 3]
  for n in (1, 3):
    x = images(n, seed=20 + n)
    check_full(onnx_outputs(sess, x), variables, x)


def test_onnx_three_tasks_align_corners_matches_apply():
  ort = pytest.importorskip("onnxruntime")
  variables = hydrajax.init(2, num_classes=5, tasks=("segm", "depth", "normals"),
                            align_corners=True)
  sess = ort_session(ort, export.export_onnx(variables, 40, 56, full_resolution=True))
  x = np.random.default_rng(8).integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
  out, ref = onnx_outputs(sess, x), hydrajax.apply(variables, x)
  for task in ("segm", "depth", "normals"):
    assert rel_l2(out[task], ref[task]) < 1e-4, task
  np.testing.assert_allclose(np.linalg.norm(out["normals"], axis=-1), 1.0, atol=1e-5)


def test_onnx_graph_is_native_nchw_and_passes_full_check(onnx_quarter, capfd):
  onnx = pytest.importorskip("onnx")
  ort = pytest.importorskip("onnxruntime")
  model = onnx.load_from_string(onnx_quarter)
  onnx.checker.check_model(model, full_check=True)
  ops = collections.Counter(node.op_type for node in model.graph.node)
  assert not {"Einsum", "Expand", "Where", "Gather", "Shape", "BatchNormalization",
              "Reshape", "MatMul"} & set(ops), ops
  assert ops["Transpose"] == 2, ops  # the input's and segm's layout change
  # 52 encoder convs (BN folded), 6 + 3 decoder 1x1s, 16 CRP convs, 2 x 2 in the heads
  assert ops["Conv"] == 1 + 17 * 3 + 9 + 16 + 4, ops
  assert ops["MaxPool"] == 16 and ops["Resize"] == 3, ops
  assert ops["Clip"] == 17 * 2 + 1 + 4 + 2, ops  # ReLU6
  batch_dims = {v.type.tensor_type.shape.dim[0].dim_param
                for v in [*model.graph.input, *model.graph.output]}
  assert batch_dims == {"N"}
  capfd.readouterr()
  options = ort.SessionOptions()
  options.log_severity_level = 1  # info and up: a shape-merge warning would show here
  ort.InferenceSession(onnx_quarter, options, providers=["CPUExecutionProvider"])
  log = capfd.readouterr().err
  assert "[I:onnxruntime" in log  # onnxruntime's log is captured, so silence means no warning
  assert "[W:" not in log and "[E:" not in log, log


def test_cli_onnx_fixed_batch_quarter_resolution(variables, tmp_path, capsys):
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
