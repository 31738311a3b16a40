"""hydrajax.inference.full_res: input-size labels, depth and normals in row blocks, equal to
hydrajax.apply for images up to max_side and to apply's postprocess on a shrunk copy above."""
import jax
import numpy as np
import pytest
from PIL import Image

import hydrajax
from hydrajax import api
from hydrajax.inference import full_res
from hydrajax.inference import predict


@pytest.fixture(scope="module")
def three_tasks():
  """segm + depth + normals, so the normals path is checked too."""
  return hydrajax.init(1, num_classes=40, tasks=("segm", "depth", "normals"))


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _assert_labels_match_logits(labels, logits):
  """Labels equal argmax(logits) except where the top two logits are within 1e-4 (a tie
  that float rounding of the same interpolation may break either way)."""
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4
  np.testing.assert_array_equal(labels[clear], logits.argmax(-1)[clear])
  chosen = np.take_along_axis(logits, labels[..., None].astype(np.int64), -1)[..., 0]
  np.testing.assert_array_less(top2[..., 1] - chosen, 1e-4 + 1e-7)


@pytest.mark.parametrize("align_corners", [False, True])
def test_small_image_matches_apply_in_blocks(three_tasks, align_corners):
  variables = dict(three_tasks)
  if align_corners:
    variables["meta"] = {"align_corners": True}
  image = _image(64, 96)
  # 7 rows per block: 10 blocks, the last one 1 row plus 6 rows of padding.
  out = full_res.dense_predictions(variables, image, block_rows=7)
  ref = {k: np.asarray(v) for k, v in hydrajax.apply(variables, image).items()}
  assert out["segm"].shape == (64, 96) and out["segm"].dtype == np.uint8
  assert out["depth"].shape == (64, 96) and out["depth"].dtype == np.float32
  assert out["normals"].shape == (64, 96, 3) and out["normals"].dtype == np.float32
  _assert_labels_match_logits(out["segm"], ref["segm"])
  # The same network in another compiled program, then the same interpolation as two taps
  # instead of a matrix product / phase slices: equal up to float32 rounding (~1e-7
  # relative per operation, a few operations deep).
  np.testing.assert_allclose(out["depth"], ref["depth"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out["normals"], ref["normals"], rtol=1e-5, atol=1e-6)


def test_large_image_runs_network_on_shrunk_copy(variables):
  image = _image(96, 160, seed=1)
  out = full_res.dense_predictions(variables, image, max_side=64, block_rows=40)
  assert full_res.working_size((96, 160), 64) == (38, 64)
  assert set(out) == {"segm", "depth"}
  assert out["segm"].shape == (96, 160) and out["segm"].dtype == np.uint8
  assert out["depth"].shape == (96, 160) and out["depth"].dtype == np.float32
  # Reference: the network on the PIL-shrunk copy, its raw outputs upsampled to the input
  # size by api.postprocess (the matrix / phase-slice form of the same interpolation).
  small = np.asarray(Image.fromarray(image).resize((64, 38), Image.BILINEAR))
  model = api.model_from_variables(variables)
  raw = jax.jit(lambda v, x: model.apply(v, api.normalize(x), train=False))(
      {"params": variables["params"], "batch_stats": variables["batch_stats"]}, small[None])
  ref = {k: np.asarray(v[0]) for k, v in api.postprocess(raw, (96, 160)).items()}
  _assert_labels_match_logits(out["segm"], ref["segm"])
  np.testing.assert_allclose(out["depth"], ref["depth"], rtol=1e-5, atol=1e-7)


def test_working_size_keeps_aspect_and_small_images():
  assert full_res.working_size((3000, 4000), 1280) == (960, 1280)
  assert full_res.working_size((4000, 3000), 1280) == (1280, 960)
  assert full_res.working_size((480, 640), 1280) == (480, 640)
  assert full_res.working_size((3000, 4000), 0) == (3000, 4000)
  assert full_res.working_size((1, 5000), 100) == (1, 100)


def test_rejects_batches_and_bad_block_rows(variables):
  with pytest.raises(ValueError, match="one image"):
    full_res.dense_predictions(variables, np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="block_rows"):
    full_res.dense_predictions(variables, np.zeros((8, 8, 3), np.uint8), block_rows=0)


def test_cli_max_side_writes_input_size_pngs(tmp_path, variables):
  weights = str(tmp_path / "model.npz")
  hydrajax.save(weights, variables)
  path = str(tmp_path / "wide.png")
  Image.fromarray(_image(96, 160, seed=1)).save(path)
  code = predict.main(["--weights", weights, path, "--out", str(tmp_path / "out"),
                       "--max-side", "64", "--no-progress"])
  assert code == 0
  segm = np.asarray(Image.open(tmp_path / "out" / "wide_segm.png"))
  assert segm.shape == (96, 160) and segm.dtype == np.uint8 and segm.max() < 40
  depth = Image.open(tmp_path / "out" / "wide_depth.png")
  assert depth.mode == "I;16" and depth.size == (160, 96)
  assert predict.main(["--weights", weights, path, "--out", str(tmp_path / "o2"),
                       "--max-side", "-1"]) == 2
