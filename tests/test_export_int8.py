"""The int8 ONNX export: loads under full graph optimisation, passes the full check, keeps the
float graph's signature and predictions; the ONNX runner and evaluator around it."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import hydrajax
from hydrajax.data.synthetic import SyntheticScenes
from hydrajax.evaluate import metrics, onnx_eval
from hydrajax.export import cli as export
from hydrajax.export import quantize
from hydrajax.inference import full_res, onnx_runner, predict

H, W = 64, 96


@pytest.fixture(scope="module")
def tiny():
  """(weights, float graph bytes, int8 graph bytes) of a random 5-class model at 64x96,
  calibrated on 4 synthetic training images."""
  variables = hydrajax.init(0, num_classes=5)
  float_graph = export.export_onnx(variables, H, W)
  images = quantize.images_from_config("configs/synthetic.py", (H, W), count=4)
  return variables, float_graph, quantize.quantize(float_graph, images,
                                                   keep_float=("depth_head",))


def held_out(n=3):
  """Synthetic scenes of another seed than the calibration's, at the graph's size."""
  src = SyntheticScenes(n, 72, 96, seed=12345)
  return np.stack([full_res.resize_image(src[i]["image"], (H, W)) for i in range(n)])


def full_optimisation_runner(model: bytes):
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_int8_loads_under_full_optimisation_and_agrees_with_float(tiny):
  _, float_graph, int8_graph = tiny
  onnx.checker.check_model(onnx.load_from_string(int8_graph), full_check=True)
  assert export.signature(int8_graph, "onnx") == export.signature(float_graph, "onnx")
  x = held_out()
  ref = dict(zip(["segm", "depth"], ort.InferenceSession(float_graph).run(
      ["segm", "depth"], {"image": x})))
  out = dict(zip(["segm", "depth"], full_optimisation_runner(int8_graph).run(
      ["segm", "depth"], {"image": x})))
  assert out["segm"].shape == (3, H // 4, W // 4, 5) and out["depth"].shape == (3, H // 4, W // 4)
  assert np.mean(out["segm"].argmax(-1) == ref["segm"].argmax(-1)) >= 0.97
  rel = np.linalg.norm(out["depth"] - ref["depth"]) / np.linalg.norm(ref["depth"])
  assert rel < 0.02
  assert not np.array_equal(out["segm"], ref["segm"])  # it is a different (quantized) graph


def float_convs(graph):
  """Conv nodes whose weights are not the output of a DequantizeLinear."""
  producer = {o: n.op_type for n in graph.node for o in n.output}
  return [n for n in graph.node
          if n.op_type == "Conv" and producer.get(n.input[1]) != "DequantizeLinear"]


def test_int8_graph_is_quantized_except_the_kept_float_depth_conv(tiny):
  graph = onnx.load_from_string(tiny[2]).graph
  (kept,) = float_convs(graph)  # keep_float=("depth_head",): the depth head's 3x3 conv
  inits = {t.name: t for t in graph.initializer}
  assert onnx.numpy_helper.to_array(inits[kept.input[1]]).shape == (1, 256, 3, 3)
  # weights per output channel: the stem conv's weights have one scale per channel
  dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
  normalize, stem = [n for n in graph.node if n.op_type == "Conv"][:2]
  assert normalize.name.endswith("_normalize")  # Sub + Div as one depthwise 1x1 conv
  assert onnx.numpy_helper.to_array(inits[dq[stem.input[1]].input[1]]).shape == (32,)
  assert not {"Sub", "Div"} & {n.op_type for n in graph.node}


def test_rewrites_keep_shapes_and_values_for_odd_sizes():
  """Resize by scales (3 -> 5 pixels needs a float32 scale whose product floors to 5 in
  float32 and float64), the normalisation as a conv and the 5x5 max-pools as 1x5 + 5x1
  compute the float graph's outputs."""
  variables = hydrajax.init(0, num_classes=3)
  graph = export.export_onnx(variables, 72, 96)  # decoder sizes 3x3 -> 5x6 -> 9x12 -> 18x24
  rewritten = quantize.separable_max_pools(quantize.normalization_as_conv(
      quantize.resize_sizes_to_scales(onnx.load_from_string(graph))))
  assert [n.op_type for n in rewritten.graph.node][:3] == ["Transpose", "Cast", "Conv"]
  pools = [n for n in rewritten.graph.node if n.op_type == "MaxPool"]
  assert len(pools) == 32 and {tuple(p.attribute[0].ints) for p in pools} == {(1, 5), (5, 1)}
  resizes = [n for n in rewritten.graph.node if n.op_type == "Resize"]
  assert len(resizes) == 3 and all(n.input[3:] == [] and n.input[2] for n in resizes)
  onnx.checker.check_model(rewritten, full_check=True)
  x = np.random.default_rng(0).integers(0, 256, (1, 72, 96, 3), dtype=np.uint8)
  a = ort.InferenceSession(graph).run(None, {"image": x})
  b = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"image": x})
  for u, v in zip(a, b):
    assert u.shape == v.shape
    np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)


def test_cli_int8_from_image_folder_writes_runnable_graph(tiny, tmp_path, capsys):
  variables = tiny[0]
  hydrajax.save(tmp_path / "w.npz", variables)
  folder = tmp_path / "frames"
  folder.mkdir()
  for i, image in enumerate(held_out(2)):
    Image.fromarray(image).save(folder / f"{i}.png")
  (folder / "notes.txt").write_text("not an image")
  out = tmp_path / "m.onnx"
  rc = export.main(["--weights", str(tmp_path / "w.npz"), "--format", "onnx", "--height", str(H),
                    "--width", str(W), "--out", str(out), "--int8", "--calibrate-images",
                    str(folder), "--calibrate-count", "2"])
  assert rc == 0, capsys.readouterr().err
  assert "int8" in capsys.readouterr().out
  model = onnx_runner.OnnxModel(out)
  assert model.config() == {"num_classes": 5, "tasks": ("segm", "depth"),
                            "align_corners": False}
  assert float_convs(onnx.load(out).graph) == []  # the default: everything int8


@pytest.mark.parametrize("extra,message", [
    (["--int8", "--calibrate-config", "configs/synthetic.py"], "--int8 applies to --format onnx"),
    (["--format", "onnx", "--int8"], "exactly one of --calibrate-config"),
    (["--format", "onnx", "--calibrate-images", "."], "--calibrate-images applies to --int8"),
    (["--format", "onnx", "--int8", "--calibrate-images", "{tmp}/none"], "no such directory"),
    (["--format", "onnx", "--int8", "--calibrate-images", "{tmp}"], "no image files"),
    (["--format", "onnx", "--int8", "--calibrate-config", "configs/none.py"], "no such file"),
    (["--format", "onnx", "--int8", "--calibrate-images", ".", "--calibrate-data-dir", "."],
     "--calibrate-data-dir applies to --calibrate-config only"),
    (["--format", "onnx", "--int8", "--calibrate-config", "configs/nyud.py",
      "--calibrate-data-dir", "{tmp}/nyud"], "{tmp}/nyud"),
    (["--format", "onnx", "--int8", "--calibrate-config", "configs/synthetic.py",
      "--keep-float", "encoder"], "unknown float parts"),
])
def test_cli_int8_bad_arguments_fail_and_write_nothing(extra, message, tiny, tmp_path, capsys):
  hydrajax.save(tmp_path / "w.npz", tiny[0])
  argv = ["--weights", str(tmp_path / "w.npz"), "--height", str(H), "--width", str(W),
          "--out", str(tmp_path / "out" / "m.onnx")]
  if "--format" not in extra:
    argv += ["--format", "stablehlo"]
  argv += [e.format(tmp=tmp_path) for e in extra]
  assert export.main(argv) == 2
  assert message.format(tmp=tmp_path) in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_onnx_runner_matches_apply_at_another_image_size(tmp_path):
  """The float graph through OnnxModel at an image size equal to the graph's gives
  hydrajax.apply's outputs; predict --onnx writes the same files as predict --weights."""
  variables = hydrajax.init(1, num_classes=4)
  path = tmp_path / "f.onnx"
  path.write_bytes(export.export_onnx(variables, H, W))
  model = onnx_runner.OnnxModel(path)
  x = held_out(1)
  out, ref = model(x), hydrajax.apply(variables, x)
  for task in ("segm", "depth"):
    assert out[task].shape == ref[task].shape
    np.testing.assert_allclose(out[task], np.asarray(ref[task]), rtol=1e-3, atol=1e-5)
  dense = model.dense_predictions(np.zeros((50, 70, 3), np.uint8))
  assert dense["segm"].shape == (50, 70) and dense["depth"].shape == (50, 70)
  Image.fromarray(x[0]).save(tmp_path / "a.png")
  report = predict.predict_files(model, [tmp_path / "a.png"], tmp_path / "pred", progress=False)
  assert sorted(p.rsplit("_", 1)[1] for p in report.written[str(tmp_path / "a.png")]) == [
      "depth.png", "segm.png", "vis.png"]
  segm = np.asarray(Image.open(tmp_path / "pred" / "a_segm.png"))
  assert np.mean(segm == np.asarray(ref["segm"][0]).argmax(-1)) > 0.999


def test_onnx_evaluator_pools_metrics_like_jax(tmp_path):
  """Metrics of the float graph equal the sums computed from hydrajax.apply's predictions."""
  from ml_collections.config_flags import config_flags
  config = config_flags.ConfigFileFlagParser(name="config").parse("configs/synthetic.py")
  config.synthetic.height, config.synthetic.width = H, W
  config.eval.max_examples = 3
  variables = hydrajax.init(2, num_classes=config.num_classes)
  path = tmp_path / "f.onnx"
  path.write_bytes(export.export_onnx(variables, H, W))
  source = SyntheticScenes(3, H, W, seed=5)
  result = onnx_eval.evaluate_onnx(onnx_runner.OnnxModel(path), config, source)
  images = np.stack([source[i]["image"] for i in range(3)])
  ref = hydrajax.apply(variables, images)
  conf = metrics.segm_confusion(np.asarray(ref["segm"]).argmax(-1),
                                np.stack([source[i]["segm"] for i in range(3)]), 7)
  sums = metrics.depth_sums(ref["depth"], np.stack([source[i]["depth"] for i in range(3)]))
  expect = {**metrics.segm_metrics(conf), **metrics.depth_metrics(
      {k: float(v) for k, v in sums.items()})}
  assert result["num_examples"] == 3
  assert abs(result["miou"] - expect["miou"]) < 1e-3
  assert abs(result["rmse"] - expect["rmse"]) < 1e-4 * expect["rmse"]
  json.dumps(result)  # the evaluator writes it as JSON


def test_onnx_evaluator_pads_like_the_jax_evaluation_and_gives_its_metrics(tmp_path):
  """Images of 52x90 with a graph exported at their padded size (64x96, eval.pad_to_multiple
  32): the ONNX evaluation equals hydrajax's own evaluation of the same weights."""
  from ml_collections.config_flags import config_flags
  from hydrajax.evaluate import loop
  config = config_flags.ConfigFileFlagParser(name="config").parse("configs/synthetic.py")
  config.eval.max_examples, config.eval.batch_size = 3, 4
  variables = hydrajax.init(3, num_classes=config.num_classes)
  path = tmp_path / "f.onnx"
  path.write_bytes(export.export_onnx(variables, H, W))
  source = SyntheticScenes(3, H - 12, W - 6, seed=6)
  got = onnx_eval.evaluate_onnx(onnx_runner.OnnxModel(path), config, source)
  want, _ = loop.evaluate(variables, config, source)
  assert got["num_examples"] == want["num_examples"] == 3
  for key in ("miou", "pixel_acc", "delta1"):
    assert abs(got[key] - want[key]) < 1e-6, key
  # The same input to the network: float rounding only (resizing instead moves RMSE by ~1e-5).
  for key in ("rmse", "abs_rel"):
    assert abs(got[key] - want[key]) < 2e-6 * want[key], key


def test_onnx_evaluator_refuses_a_graph_of_other_classes(tmp_path):
  from ml_collections.config_flags import config_flags
  config = config_flags.ConfigFileFlagParser(name="config").parse("configs/synthetic.py")
  path = tmp_path / "f.onnx"
  path.write_bytes(export.export_onnx(hydrajax.init(0, num_classes=3), H, W))
  with pytest.raises(ValueError, match="f.onnx is a model with 3 classes"):
    onnx_eval.run(config, str(tmp_path / "run"), str(path))
  assert not (tmp_path / "run").exists()


def test_calibration_folder_skips_hidden_files(tmp_path):
  """macOS's `._NAME.png` resource forks and unfinished `.tmp-*` writes are not images:
  the calibration reads the two real images and stops on neither."""
  for i, image in enumerate(held_out(2)):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
  (tmp_path / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
  (tmp_path / ".tmp-123-0123abcd.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # cut short
  images = quantize.images_from_folder(str(tmp_path), (H, W), count=10)
  np.testing.assert_array_equal(images, held_out(2))
