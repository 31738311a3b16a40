"""Hostile or broken ONNX files given by the user (`--onnx`: predict, evaluate; the demo's in
test_demo.py): each is refused in one line naming the file, before anything of the declared
size is allocated. Each is a tiny valid graph of the exported form
(tests/helpers/onnx_graphs.py) with one thing broken."""
import json
from functools import partial

import numpy as np
import pytest
from onnx import helper

from hydrajax.inference import onnx_runner, predict
from tests.helpers import onnx_graphs
from tests.helpers.cli import assert_one_error_line

H, W = 8, 12
graph_file = partial(onnx_graphs.graph_file, height=H, width=W)


def test_the_plain_graph_loads_and_runs(tmp_path):
  """The base of the broken graphs below is itself fine (so each test breaks one thing)."""
  model = onnx_runner.OnnxModel(graph_file(tmp_path / "ok.onnx",
                                           metadata=json.dumps({"align_corners": True})))
  out = model.raw(np.full((1, H, W, 3), 6, np.uint8))
  np.testing.assert_array_equal(out["depth"], np.full((1, H, W), 6, np.float32))
  assert model.num_classes == 2 and model.align_corners


def test_custom_op_is_refused_in_one_line_naming_the_file(tmp_path):
  path = graph_file(tmp_path / "custom.onnx", op=("Mystery", "com.example.mystery"))
  with pytest.raises(ValueError, match=r"custom.onnx: onnxruntime cannot load it \(.*Mystery"
                     ) as e:
    onnx_runner.OnnxModel(path)
  assert "\n" not in str(e.value)


def test_broken_graph_is_refused_naming_the_file(tmp_path):
  # A node reading a tensor that nothing produces.
  path = graph_file(tmp_path / "broken.onnx",
                    extra=[helper.make_node("Relu", ["nowhere"], ["unused"])])
  with pytest.raises(ValueError, match=r"broken.onnx: onnxruntime cannot load it") as e:
    onnx_runner.OnnxModel(path)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "must be a JSON object, got list"),
    ('"align_corners"', "must be a JSON object, got str"),
    ("{not json", "is not JSON"),
    ('{"align_corners": "no"}', "align_corners must be true or false"),
])
def test_metadata_that_is_not_a_json_object_is_refused_naming_the_file(text, words, tmp_path):
  path = graph_file(tmp_path / "meta.onnx", metadata=text)
  with pytest.raises(ValueError, match=rf"meta.onnx: metadata 'hydrajax'.*{words}"):
    onnx_runner.OnnxModel(path)


def test_declared_size_above_the_pixel_limit_is_refused_before_loading(tmp_path):
  path = graph_file(tmp_path / "huge.onnx", height=100_000, width=100_000)
  with pytest.raises(ValueError, match=r"huge.onnx: input image is 100000x100000 = "
                                       r"10000000000 pixels, above the limit of"):
    onnx_runner.OnnxModel(path)
  with pytest.raises(ValueError, match="above the limit of 95"):
    onnx_runner.OnnxModel(graph_file(tmp_path / "small.onnx"), max_pixels=H * W - 1)


def test_failure_while_running_names_the_file_and_out_of_memory_stays_itself(tmp_path):
  from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException
  model = onnx_runner.OnnxModel(graph_file(tmp_path / "m.onnx"))

  class Failing:
    def __init__(self, error):
      self.error = error

    def run(self, *args):
      raise self.error

  model.session = Failing(Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code\n"
                               "returned while running Mystery node"))
  with pytest.raises(ValueError, match=r"m.onnx: onnxruntime failed running it \(.*Mystery"):
    model.raw(np.zeros((1, H, W, 3), np.uint8))
  model.session = Failing(RuntimeException("Failed to allocate memory for requested buffer"))
  with pytest.raises(RuntimeException):  # predict's out-of-memory report handles it
    model.raw(np.zeros((1, H, W, 3), np.uint8))


def test_predict_cli_prints_one_line_for_a_custom_op_graph(tmp_path, capsys):
  path = graph_file(tmp_path / "custom.onnx", op=("Mystery", "com.example.mystery"))
  image = tmp_path / "a.png"
  from PIL import Image
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image)
  code = predict.main(["--onnx", path, str(image), "--out", str(tmp_path / "out"),
                       "--no-progress"])
  assert code == 2
  assert_one_error_line(capsys.readouterr().err, path, "onnxruntime cannot load it")


def test_predict_cli_refuses_a_graph_above_max_pixels(tmp_path, capsys):
  path = graph_file(tmp_path / "big.onnx", height=16, width=24)
  image = tmp_path / "a.png"
  from PIL import Image
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image)
  code = predict.main(["--onnx", path, str(image), "--out", str(tmp_path / "out"),
                       "--max-pixels", str(16 * 24 - 1), "--no-progress"])
  assert code == 2 and not (tmp_path / "out").exists()
  assert_one_error_line(capsys.readouterr().err, path, f"above the limit of {16 * 24 - 1}")


def test_onnx_evaluation_refuses_bad_metadata_naming_the_file(tmp_path):
  from ml_collections.config_flags import config_flags
  from hydrajax.evaluate import onnx_eval
  config = config_flags.ConfigFileFlagParser(name="config").parse("configs/synthetic.py")
  path = graph_file(tmp_path / "meta.onnx", metadata="[1, 2]")
  with pytest.raises(ValueError, match="meta.onnx: metadata 'hydrajax' must be a JSON object"):
    onnx_eval.run(config, str(tmp_path / "run"), path)
  assert not (tmp_path / "run").exists()
