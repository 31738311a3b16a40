"""hydrajax.inference.predict (CLI and library) and hydrajax.inference.visualize on the real sample frames."""
import contextlib
import io
import os

import numpy as np
import pytest
from PIL import Image

import hydrajax
from hydrajax.inference import predict
from hydrajax.inference import visualize
from tests.helpers.samples import DATA, KITTI, NYUD



@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, variables):
  """One CLI run over NYUD + KITTI PNGs, a JPEG, a missing file and a non-image."""
  tmp = tmp_path_factory.mktemp("predict")
  weights = str(tmp / "model.npz")
  hydrajax.save(weights, variables)
  jpeg = str(tmp / "photo.jpg")
  Image.open(NYUD).convert("RGB").save(jpeg, quality=90)
  not_image = str(tmp / "notes.png")
  with open(not_image, "w") as f:
    f.write("not an image")
  missing = str(tmp / "missing.png")
  out = tmp / "out"
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    code = predict.main(["--weights", weights, NYUD, jpeg, missing, not_image, KITTI,
                         "--out", str(out), "--no-progress"])
  return code, out, stderr.getvalue(), {"missing": missing, "not_image": not_image}


def test_cli_writes_outputs_at_input_size(cli_run):
  _, out, _, _ = cli_run
  for stem, (h, w) in (("000464_rgb", (480, 640)), ("photo", (480, 640)),
                       ("000099_rgb", (370, 1226))):
    segm = np.asarray(Image.open(out / f"{stem}_segm.png"))
    assert segm.shape == (h, w) and segm.dtype == np.uint8 and segm.max() < 40
    depth_img = Image.open(out / f"{stem}_depth.png")
    assert depth_img.mode == "I;16" and depth_img.size == (w, h)
    vis = np.asarray(Image.open(out / f"{stem}_vis.png"))
    assert vis.shape == (h, 3 * w + 2 * 4, 3) and vis.dtype == np.uint8


def test_cli_side_by_side_shows_input_segm_and_depth(cli_run, variables):
  _, out, _, _ = cli_run
  image = np.asarray(Image.open(KITTI).convert("RGB"))
  vis = np.asarray(Image.open(out / "000099_rgb_vis.png"))
  w = image.shape[1]
  np.testing.assert_array_equal(vis[:, :w], image)
  labels = np.asarray(Image.open(out / "000099_rgb_segm.png"))
  np.testing.assert_array_equal(vis[:, w + 4:2 * w + 4],
                                visualize.colorize_segm(labels, visualize.NYUD_PALETTE))
  depth_mm = np.asarray(Image.open(out / "000099_rgb_depth.png")).astype(np.float64)
  expected = np.asarray(hydrajax.apply(variables, image)["depth"])
  # The same network and interpolation (full_res's two taps, ~1e-7 relative from apply's
  # form), stored as whole millimetres: half a step, plus the float32 rounding of
  # depth * 1000 (~1e-7 m at tens of metres).
  np.testing.assert_allclose(depth_mm / 1000.0, np.minimum(expected, 65.535), atol=5e-4 + 1e-6)


def test_cli_names_failed_files_and_exits_nonzero(cli_run):
  code, out, stderr, bad = cli_run
  assert code == 1
  assert f"failed: {bad['missing']}: no such file" in stderr
  assert f"failed: {bad['not_image']}: not a readable image" in stderr
  assert not list(out.glob("missing*")) and not list(out.glob("notes*"))


def test_predict_files_reports_failures_by_path(tmp_path, variables):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 truncated jpeg")
  report = predict.predict_files(variables, [str(bad), str(tmp_path / "nope.png")],
                                 tmp_path / "out", progress=False)
  assert report.written == {}
  assert set(report.failed) == {str(bad), str(tmp_path / "nope.png")}
  assert "broken.jpg" in report.failed[str(bad)] and "no such file" in report.failed[
      str(tmp_path / "nope.png")]


def test_cli_rejects_missing_weights(tmp_path, capsys):
  code = predict.main(["--weights", str(tmp_path / "none.npz"), NYUD, "--out", str(tmp_path)])
  assert code == 2
  assert "none.npz" in capsys.readouterr().err


def test_palettes_match_the_published_colour_maps():
  nyud = np.load(os.path.join(DATA, "nyud", "cmap_nyud.npy"))
  kitti = np.load(os.path.join(DATA, "kitti", "cmap_kitti.npy"))
  labels = np.array([[0, 5, 39, 255]])
  # The authors colour NYUD label l with CMAP[l + 1] (uint8 wrap: 255 -> row 0, black).
  np.testing.assert_array_equal(visualize.colorize_segm(labels, visualize.NYUD_PALETTE),
                                nyud[(labels + 1) % 256])
  kitti_labels = np.array([[0, 1, 2, 3, 4, 5, 6]])
  np.testing.assert_array_equal(visualize.KITTI6_PALETTE, kitti)  # 6 classes + void
  np.testing.assert_array_equal(visualize.colorize_segm(kitti_labels, visualize.palette_for(6)),
                                kitti[kitti_labels].astype(np.uint8))
  assert len(np.unique(visualize.palette_for(46), axis=0)) == 46


def test_colorize_depth_runs_dark_to_bright_and_clips():
  depth = np.array([[0.0, 2.0, 4.0, 8.0, 20.0, -1.0]])
  rgb = visualize.colorize_depth(depth, max_depth=8.0)
  assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
  brightness = rgb.astype(int).sum(-1)[0]
  assert np.all(np.diff(brightness[:4]) > 0)
  np.testing.assert_array_equal(rgb[0, 3], rgb[0, 4])  # clipped at max_depth
  np.testing.assert_array_equal(rgb[0, 0], [13, 8, 135])
  masked = visualize.colorize_depth(depth, 8.0, invalid_color=(255, 255, 255))
  np.testing.assert_array_equal(masked[0, [0, 5]], [[255, 255, 255]] * 2)
  with pytest.raises(ValueError, match="max_depth"):
    visualize.colorize_depth(depth, 0.0)


def test_side_by_side_pads_different_heights():
  a = np.zeros((4, 3, 3), np.uint8)
  b = np.full((2, 5), 7, np.uint8)
  out = visualize.side_by_side(a, b, gap=1, background=255)
  assert out.shape == (4, 9, 3)
  np.testing.assert_array_equal(out[:2, 4:], 7)
  np.testing.assert_array_equal(out[2:, 4:], 255)
  np.testing.assert_array_equal(out[:, 3], 255)
