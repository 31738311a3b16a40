"""The OpenVINO IR export (float and int8 through NNCF), its runner, and the accuracy guard
of both int8 exports (hydrajax.export.int8_guard)."""
import re
from types import SimpleNamespace

import numpy as np
import pytest

import hydrajax
from hydrajax.export import cli as export
from hydrajax.export import int8_guard
from hydrajax.inference import exported
from tests.helpers import int8_runs
from tests.helpers.cli import assert_one_error_line
from tests.helpers.configs import tiny_config

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


# The guard on a briefly trained model, where quantization costs most: both int8 exports of
# one model at 32x32 on 2 calibration frames (128 output pixels to measure agreement on;
# smaller inputs run too, in the same time, which goes to building graphs, but leave too few
# pixels). The sensitivity pass measures two residual Adds (an encoder and a decoder one),
# each among the costliest layers of such a model in both runtimes, instead of all ~150
# layers (tests/helpers/int8_runs.py).
SMALL = 32
LAYERS = ("Add_21", "Add_151")
AGREEMENT = re.compile(r"labels ([\d.]+)% equal, depth RMS difference ([\d.]+)% of the mean")


@pytest.fixture(scope="module")
def brief(tmp_path_factory):
  """(variables, weights file) of a 40-class model trained 4 steps (tiny_config's whole
  schedule, the step tests/test_train.py compiles) on one batch of synthetic scenes."""
  import jax
  from hydrajax.data.synthetic import SyntheticScenes
  from hydrajax.train import loop as train_lib
  config = tiny_config()
  devices = jax.local_devices()[:1]
  step = train_lib.pmapped_train_step(config, devices)
  state = train_lib.replicate(train_lib.create_train_state(config), devices)
  scenes = SyntheticScenes(4, 64, 96, seed=1)
  batch = {k: np.stack([scenes[i][k] for i in range(4)])[None]
           for k in ("image", "segm", "depth")}
  losses = []
  for _ in range(config.num_train_steps):
    state, metrics = step(state, batch, train_lib.task_loss_weights(config))
    losses.append(float(metrics["loss"][0]))
  assert losses[-1] < 0.8 * losses[0], losses  # trained, if briefly
  variables = train_lib.unreplicate(state).variables()
  path = str(tmp_path_factory.mktemp("brief") / "brief.npz")
  hydrajax.save(path, variables)
  return variables, path


def int8_argv(weights_path, fmt, out, *extra):
  return ["--weights", weights_path, "--format", fmt, "--height", str(SMALL), "--width",
          str(SMALL), "--out", str(out), "--int8", "--calibrate-config", "configs/synthetic.py",
          "--calibrate-count", "2", "--keep-float", "depth_head", *extra]


def calibration_frames():
  """The frames the exports above calibrate and measure on (`images_from_config`, seed 0)."""
  from hydrajax.export import quantize
  return quantize.images_from_config("configs/synthetic.py", (SMALL, SMALL), count=2)


def measured(run_float, run_int8, frames):
  """(labels, depth) of the int8 graph against the float one, computed here over all pixels
  of all frames (one frame per run): the fraction of equal argmax labels, and the RMS depth
  difference over the float graph's mean depth."""
  ref = [run_float(frames[i:i + 1]) for i in range(len(frames))]
  out = [run_int8(frames[i:i + 1]) for i in range(len(frames))]
  equal = [o["segm"].argmax(-1) == r["segm"].argmax(-1) for o, r in zip(out, ref)]
  diff = [o["depth"].astype(np.float64) - r["depth"] for o, r in zip(out, ref)]
  mean = np.mean([r["depth"].astype(np.float64) for r in ref])
  return float(np.mean(equal)), float(np.sqrt(np.mean(np.square(diff))) / mean)


def reported(text):
  """The agreements `text` prints, in order, as (labels, depth) percentages."""
  return [(float(a), float(b)) for a, b in AGREEMENT.findall(text)]


def same(printed, value):
  """A printed agreement (percent, one decimal) is `value` (fractions) rounded."""
  assert abs(printed[0] - 100 * value[0]) <= 0.05 + 1e-6, (printed, value)
  assert abs(printed[1] - 100 * value[1]) <= 0.05 + 1e-6, (printed, value)


def check_refusal(run, out_dir, base, singles):
  """The export below a zero depth bound (no int8 graph meets it): refused in one line that
  names the measured layers by the depth each restores, with the agreements measured here,
  and the best it reached, better than all int8; nothing written."""
  assert run["rc"] == 2
  assert_one_error_line(run["err"], "below the bounds", "Nothing written")
  assert not out_dir.exists()
  ranked = sorted(singles, key=lambda layer: singles[layer][1])
  assert re.findall(r"(\w+) \(\w+\) float ->", run["err"]) == ranked
  printed = reported(run["err"])  # all int8, each layer float, the best reached
  assert len(printed) == len(ranked) + 2, run["err"]
  same(printed[0], base)
  for layer, agreement in zip(ranked, printed[1:-1]):
    same(agreement, singles[layer])
  assert singles[ranked[0]][1] < base[1]
  assert printed[-1][1] <= printed[1][1]


def onnx_runtime():
  """How the test runs and edits ONNX graphs (onnxruntime, as the export measures them)."""
  import onnxruntime as ort
  from hydrajax.export import quantize

  def runner(graph):
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return lambda x: dict(zip(("segm", "depth"), session.run(["segm", "depth"], {"image": x})))
  return SimpleNamespace(suffix="onnx", module=quantize, runner=runner, from_onnx=bytes,
                         read=lambda path: path.read_bytes())


def openvino_runtime():
  """How the test runs and edits OpenVINO models (the process's one Core, float32)."""
  from hydrajax.export import openvino_ir

  def runner(model):
    compiled = openvino_ir.core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(x):
      result = compiled(x)
      return {name: np.array(result[compiled.output(name)]) for name in ("segm", "depth")}
    return run
  return SimpleNamespace(suffix="xml", module=openvino_ir, runner=runner,
                         from_onnx=openvino_ir.from_onnx, read=openvino_ir.core().read_model)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_guard_of_a_briefly_trained_model_prints_what_is_measured_and_keeps_the_costliest(
    fmt, brief, tmp_path):
  """The refusal as above; then with a bound the costliest layer meets, that layer is the one
  kept float and the written graph agrees as printed, better than all int8. The depth head
  stays float (--keep-float): every other conv of the IR has int8 weights."""
  rt = onnx_runtime() if fmt == "onnx" else openvino_runtime()
  variables, path = brief
  frames = calibration_frames()
  run_float = rt.runner(rt.from_onnx(export.export_onnx(variables, SMALL, SMALL)))
  out = tmp_path / f"q.{rt.suffix}"
  with int8_runs.measured_layers(LAYERS), int8_runs.quantized_once() as int8:
    refused = int8_runs.run_cli(int8_argv(path, fmt, tmp_path / "refused" / out.name,
                                          "--int8-max-depth", "0"))
    (graph,) = int8
    base = measured(run_float, rt.runner(graph), frames)
    singles = {layer.split(" (")[0]: measured(  # the layers the guard measures
        run_float, rt.runner(rt.module.without_quantizers(graph, [q])), frames)
        for q, layer in rt.module.activation_quantizers(graph).items()}
    check_refusal(refused, tmp_path / "refused", base, singles)
    top = min(singles, key=lambda layer: singles[layer][1])
    bound = 1.001 * singles[top][1]
    assert bound < base[1]
    kept = int8_runs.run_cli(int8_argv(path, fmt, out, "--int8-min-labels", "0",
                                       "--int8-max-depth", repr(bound)))
  assert kept["rc"] == 0, kept["err"]
  assert f"kept float (1 layers, by measurement): {top} (" in kept["out"]
  written = measured(run_float, rt.runner(rt.read(out)), frames)
  printed = reported(kept["out"])  # all int8, the sensitivity pass, the written graph
  same(printed[0], base)
  same(printed[-1], written)
  assert written == pytest.approx(singles[top], abs=1e-6) and written[1] < base[1]
  if fmt == "openvino":
    check_int8_ir(out, variables)


def test_int8_ir_guard_candidates_are_activations_named_by_nodes_of_the_float_onnx_graph(
    weights):
  """The layers the OpenVINO guard may keep float are its activation FakeQuantize ops, each
  named once by a node of the float ONNX graph (the names the ONNX path gives); NNCF's weight
  FakeQuantize ops (each feeding a depthwise convolution's weights) are not among them."""
  import onnx
  from hydrajax.export import openvino_ir
  data = export.export_onnx(weights[0], H, W)
  nodes = {node.name for node in onnx.load_from_string(data).graph.node}
  model = openvino_ir.quantize(openvino_ir.from_onnx(data), frames(1))
  candidates = openvino_ir.activation_quantizers(model)
  labels = list(candidates.values())
  assert len(set(labels)) == len(labels)
  assert {label.split(" (")[0] for label in labels} <= nodes
  assert set(LAYERS) <= {label.split(" (")[0] for label in labels}
  fake_quantizers = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
  weight_ports = {op.get_friendly_name() for op in fake_quantizers
                  if any(t.get_index() == 1 and "Convolution" in t.get_node().get_type_name()
                         for t in op.output(0).get_target_inputs())}
  assert weight_ports  # depthwise weights keep a FakeQuantize after their Reshape
  assert weight_ports.isdisjoint(candidates)
  assert len(candidates) == len(fake_quantizers) - len(weight_ports)


def check_int8_ir(path, variables):
  """The int8 IR at `path`, written with --keep-float depth_head: int8 weights in every conv
  but the depth head's last, whose input is not quantized either; its runner loads it."""
  import jax
  from hydrajax.export import openvino_ir
  model = openvino_ir.core().read_model(path)
  ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
  convs = [op for op in ops.values() if op.get_type_name() == "Convolution"]
  float_weights = [c for c in convs if c.input_value(1).get_node().get_type_name() == "Constant"
                   and str(c.input_value(1).get_element_type()) == "<Type: 'float32'>"]
  (kept,) = openvino_ir.float_ops(model, ["depth_head"])
  assert float_weights == [ops[kept]]
  assert ops[kept].input_value(0).get_node().get_type_name() != "FakeQuantize"
  assert path.with_suffix(".bin").stat().st_size < 0.5 * sum(
      np.asarray(v).nbytes for v in jax.tree.leaves(variables["params"]))
  assert exported.load(path).config() == {"num_classes": 40, "tasks": ("segm", "depth"),
                                          "align_corners": False}


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
