"""The OpenVINO IR export (float and int8 through NNCF), its runner, and the accuracy guard
of both int8 exports (hydrajax.export.int8_guard)."""
import numpy as np
import pytest

import hydrajax
from hydrajax.export import cli as export
from hydrajax.export import int8_guard
from hydrajax.inference import exported

pytest.importorskip("openvino")
pytest.importorskip("nncf")

H, W = 48, 64


@pytest.fixture(scope="module")
def weights(variables, weights_file):
  """The shared random 40-class segm+depth model (untrained: the widest activation ranges)."""
  return variables, weights_file


def frames(n=2, seed=7):
  return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def export_ir(weights_path, out, *extra):
  argv = ["--weights", weights_path, "--format", "openvino", "--height", str(H),
          "--width", str(W), "--out", str(out), *extra]
  return export.main(argv)


@pytest.fixture(scope="module")
def float_ir(weights, tmp_path_factory):
  """(path of the float IR at full resolution, the CLI's output)."""
  out = tmp_path_factory.mktemp("ir") / "m.xml"
  import contextlib
  import io
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    assert export_ir(weights[1], out, "--full-resolution") == 0
  return out, text.getvalue()


def test_float_ir_computes_apply_and_keeps_the_signature(weights, float_ir):
  variables, _ = weights
  path, printed = float_ir
  assert "(openvino," in printed and "output labels   int32    (N, 48, 64)" in printed
  assert path.with_suffix(".bin").is_file()
  model = exported.load(path)
  assert type(model).__name__ == "OpenVinoModel" and model.full_resolution
  assert model.config() == {"num_classes": 40, "tasks": ("segm", "depth"),
                            "align_corners": False}
  x = frames()
  out, ref = model(x), hydrajax.apply(variables, x)
  for task in ("segm", "depth"):
    ref_t = np.asarray(ref[task])
    assert out[task].shape == ref_t.shape
    assert np.max(np.abs(out[task] - ref_t)) <= 1e-4 * np.max(np.abs(ref_t)), task
  dense = model.dense_predictions(np.zeros((30, 50, 3), np.uint8))
  assert dense["segm"].shape == (30, 50) and dense["depth"].shape == (30, 50)


def test_runtime_choice_by_file_and_on_request(weights, tmp_path):
  variables, _ = weights
  onnx_path = tmp_path / "f.onnx"
  onnx_path.write_bytes(export.export_onnx(variables, H, W))
  assert type(exported.load(onnx_path)).__name__ == "OnnxModel"
  by_openvino = exported.load(onnx_path, "openvino")  # OpenVINO reads ONNX too
  assert by_openvino.runtime == "openvino" and by_openvino.num_classes == 40
  assert exported.load(onnx_path, "auto").runtime == "openvino"  # installed: the fastest
  x = frames(1)
  np.testing.assert_allclose(by_openvino(x)["depth"], exported.load(onnx_path)(x)["depth"],
                             rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="onnxruntime reads ONNX files, not OpenVINO IR"):
    exported.load(tmp_path / "m.xml", "onnxruntime")


def test_predict_evaluate_and_demo_run_the_ir(weights, float_ir, tmp_path):
  """hydrajax-predict --onnx m.xml writes apply's labels; the evaluator and the demo page take
  the IR as they take an ONNX graph."""
  from PIL import Image
  from ml_collections.config_flags import config_flags
  from hydrajax.data.synthetic import SyntheticScenes
  from hydrajax.evaluate import onnx_eval
  from hydrajax.inference import demo, predict
  variables, _ = weights
  path, _ = float_ir
  x = frames(1)
  Image.fromarray(x[0]).save(tmp_path / "a.png")
  assert predict.main(["--onnx", str(path), "--runtime", "auto", str(tmp_path / "a.png"),
                       "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
  segm = np.asarray(Image.open(tmp_path / "pred" / "a_segm.png"))
  want = np.asarray(hydrajax.apply(variables, x)["segm"][0]).argmax(-1)
  assert np.mean(segm == want) > 0.999
  config = config_flags.ConfigFileFlagParser(name="config").parse("configs/synthetic.py")
  config.num_classes = 40
  result = onnx_eval.evaluate_onnx(exported.load(path), config, SyntheticScenes(2, H, W))
  assert result["num_examples"] == 2 and np.isfinite(result["rmse"])
  page = demo.Demo(exported.load(path), workdir=str(tmp_path))
  assert page.engine.size == (H, W) and page.engine.onnx
  small, out, _ = page.engine(np.zeros((60, 80, 3), np.uint8))
  assert small.shape == (H, W, 3) and out["depth"].shape == (H, W)


def test_importing_openvino_leaves_the_environment_as_it_was(monkeypatch):
  """The telemetry switches are set only while OpenVINO and NNCF import."""
  from hydrajax.export import openvino_ir
  monkeypatch.delenv("CI", raising=False)
  monkeypatch.setenv("NNCF_CI", "mine")
  openvino_ir.import_nncf()
  assert "CI" not in __import__("os").environ
  assert __import__("os").environ["NNCF_CI"] == "mine"


def test_ir_without_its_bin_or_not_an_ir_is_named(tmp_path):
  (tmp_path / "m.xml").write_text("<net/>")
  with pytest.raises(FileNotFoundError, match="m.bin are missing"):
    exported.load(tmp_path / "m.xml")
  (tmp_path / "m.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="m.xml: OpenVINO cannot read it"):
    exported.load(tmp_path / "m.xml")


def _signal_stack_is_mapped():
  """Whether the calling thread's alternate signal stack (if any) lies in mapped memory."""
  import ctypes

  class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]
  stack = StackT()
  assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
  if not stack.ss_sp:
    return True
  with open("/proc/self/maps") as maps:
    spans = [[int(a, 16) for a in line.split()[0].split("-")] for line in maps]
  return any(lo <= stack.ss_sp < hi for lo, hi in spans)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux's maps")
def test_runners_freed_in_creation_order_leave_ctrl_c_working(float_ir):
  """Two IR runners freed first-made-first: the main thread's signal stack is still mapped and
  a real SIGINT raises KeyboardInterrupt. (OpenVINO's CPU plugin swaps the thread's signal
  stack per Core and puts back a freed one when Cores are freed in that order; Python runs its
  SIGINT handler on that stack, so the process crashed.)"""
  import gc
  import signal
  import threading
  import time
  first, second = exported.load(float_ir[0]), exported.load(float_ir[0])
  del first
  gc.collect()
  del second
  gc.collect()
  assert _signal_stack_is_mapped()
  with pytest.raises(KeyboardInterrupt):
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    time.sleep(5)


def test_int8_ir_is_quantized_but_the_kept_float_conv_reports_and_runs(weights, tmp_path,
                                                                        capsys):
  import openvino as ov
  from hydrajax.export import openvino_ir
  variables, path = weights
  rc = export_ir(path, tmp_path / "q.xml", "--int8", "--calibrate-config",
                 "configs/synthetic.py", "--calibrate-count", "3", "--keep-float", "depth_head")
  out = capsys.readouterr()
  assert rc == 0, out.err
  assert "int8 vs float on 3 calibration frames: labels" in out.out
  model = ov.Core().read_model(tmp_path / "q.xml")
  ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
  convs = [op for op in ops.values() if op.get_type_name() == "Convolution"]
  float_weights = [c for c in convs if c.input_value(1).get_node().get_type_name() == "Constant"
                   and str(c.input_value(1).get_element_type()) == "<Type: 'float32'>"]
  (kept,) = openvino_ir.float_ops(model, ["depth_head"])
  assert float_weights == [ops[kept]]  # every other conv has int8 weights
  assert ops[kept].input_value(0).get_node().get_type_name() != "FakeQuantize"
  assert (tmp_path / "q.bin").stat().st_size < 0.5 * sum(
      np.asarray(v).nbytes for v in __import__("jax").tree.leaves(variables["params"]))
  model = exported.load(tmp_path / "q.xml")
  x = frames()
  labels = model(x)["segm"].argmax(-1)
  assert np.mean(labels == np.asarray(hydrajax.apply(variables, x)["segm"]).argmax(-1)) > 0.9


@pytest.mark.parametrize("fmt,suffix", [("openvino", "xml"), ("onnx", "onnx")])
def test_int8_below_the_bound_is_refused_naming_the_costliest_layers(fmt, suffix, weights,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
  """A depth bound no int8 graph meets: each quantized layer is measured kept float, the
  error names the costliest with their agreement, and nothing is written."""
  from hydrajax.export import openvino_ir, quantize
  for module in (openvino_ir, quantize):  # two layers to measure, not all (~150)
    real = module.activation_quantizers
    monkeypatch.setattr(module, "activation_quantizers",
                        lambda g, real=real: dict(list(real(g).items())[:2]))
  _, path = weights
  argv = ["--weights", path, "--format", fmt, "--height", str(H), "--width", str(W),
          "--out", str(tmp_path / "out" / f"q.{suffix}"), "--int8",
          "--calibrate-config", "configs/synthetic.py", "--calibrate-count", "1",
          "--int8-max-depth", "1e-9"]
  assert export.main(argv) == 2
  err = capsys.readouterr().err
  assert "below the bounds" in err and "Nothing written" in err
  assert "costliest layers: " in err and ") float -> labels" in err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_bounds_apply_to_int8_only_and_are_checked(weights, tmp_path, capsys):
  _, path = weights
  assert export_ir(path, tmp_path / "m.xml", "--int8-min-labels", "0.9") == 2
  assert "--int8-min-labels applies to --int8" in capsys.readouterr().err
  assert export_ir(path, tmp_path / "m.xml", "--int8", "--calibrate-images", str(tmp_path),
                   "--int8-min-labels", "1.5") == 2
  assert "least label agreement must be in [0, 1]" in capsys.readouterr().err
  assert export_ir(path, tmp_path / "m.onnx") == 2
  assert "NAME.xml" in capsys.readouterr().err
  assert not list(tmp_path.iterdir())


# The guard's choice, on stand-in graphs: a graph is the set of layers kept float, and each
# layer left int8 adds its own (signed) error to the depth, as a measured cost; "cancel"
# int8 offsets the others.
COSTS = {"early": 0.02, "head": 0.04, "resize": 0.01, "cancel": -0.01, "tiny": 0.001}


def fake_run(graph, image):
  if graph == "float":
    error = 0.0
  else:
    error = 0.001 + sum(c for q, c in COSTS.items() if q not in graph)
  depth = np.full((1, *image.shape[1:3]), 1.0 + error)  # the float graph's depth is 1 m
  return {"segm": np.zeros((1, *image.shape[1:3], 2)), "depth": depth}


def fake_guard(bounds, max_float=int8_guard.MAX_FLOAT):
  tried = []

  def without(graph, names):
    tried.append(tuple(names))
    return frozenset(graph) | frozenset(names)

  result = int8_guard.guarded(frozenset(), fake_run, "float", frames(2), list(COSTS), without,
                              bounds, label=str.upper, max_float=max_float)
  return result, tried


def test_guard_keeps_the_costliest_layers_float_until_the_bound_holds():
  result, tried = fake_guard(int8_guard.Bounds(max_depth=0.01))
  # all int8: 0.062; alone: head 0.022, early 0.042, resize 0.052, tiny 0.061, cancel 0.072;
  # head+early 0.002 passes.
  assert tried[:5] == [(q,) for q in COSTS]
  assert tried[5:] == [("head",), ("head", "early")]
  assert result.kept_float == ("head", "early")
  assert result.agreement.depth == pytest.approx(0.002, rel=0.05)
  assert "kept float (2 layers, by measurement): HEAD, EARLY" in result.log[-1]


def test_guard_skips_a_layer_that_makes_the_whole_graph_worse():
  """With "head" and "early" float (0.002), "resize" float overshoots through "cancel"
  (-0.008): left int8, and "tiny" brings the graph within the bound."""
  result, tried = fake_guard(int8_guard.Bounds(max_depth=0.0015))
  assert ("head", "early", "resize") in tried
  assert result.kept_float == ("head", "early", "tiny")
  assert result.agreement.depth == pytest.approx(0.001, rel=0.05)


def test_guard_passes_a_good_graph_untouched():
  result, tried = fake_guard(int8_guard.Bounds(max_depth=0.1))
  assert tried == [] and result.kept_float == () and result.graph == frozenset()


def test_guard_refuses_when_the_allowed_layers_do_not_suffice():
  with pytest.raises(int8_guard.Int8AccuracyError,
                     match="costliest layers: HEAD float -> labels 100.0% equal, depth RMS "
                           "difference 2.2% of the mean depth; .* at best, with 1 of them "
                           "float, labels 100.0% equal, depth RMS difference 2.2%"):
    fake_guard(int8_guard.Bounds(max_depth=0.01), max_float=1)
