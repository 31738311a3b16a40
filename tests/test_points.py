"""hydrajax.points (pinhole back-projection), the PLY files and `hydrajax-predict --points`."""
import contextlib
import io

import numpy as np
import plyfile
import pytest

import hydrajax
from hydrajax.inference import points, predict
from hydrajax.inference import visualize
from tests.helpers.samples import NYUD

K = points.Intrinsics(100.0, 120.0, 31.5, 23.5, 64, 48)


def test_fronto_parallel_plane_back_projects_to_constant_z_and_metric_xy():
  depth = np.full((48, 64), 2.5, np.float32)
  cloud = hydrajax.points(depth, K)
  assert cloud.xyz.shape == (48 * 64, 3) and cloud.xyz.dtype == np.float32
  np.testing.assert_allclose(cloud.xyz[:, 2], 2.5)
  # Pixel (row 0, column 0): u = 0, v = 0.
  np.testing.assert_allclose(cloud.xyz[0], [(0 - 31.5) * 2.5 / 100, (0 - 23.5) * 2.5 / 120, 2.5],
                             rtol=1e-6)
  # The plane's width at 2.5 m spans 63 pixel steps of 2.5 / fx metres.
  np.testing.assert_allclose(np.ptp(cloud.xyz[:, 0]), 63 * 2.5 / 100, rtol=1e-6)
  np.testing.assert_allclose(np.ptp(cloud.xyz[:, 1]), 47 * 2.5 / 120, rtol=1e-6)


def test_box_in_front_of_a_wall_keeps_its_metric_size_and_drops_invalid_pixels():
  """A 1 m-away box (its image computed with the pinhole model) in front of a 4 m wall,
  with holes (0, NaN, inf, negative) that must vanish."""
  fx = fy = 50.0
  cx, cy = 31.5, 23.5
  k = points.Intrinsics(fx, fy, cx, cy, 64, 48)
  depth = np.full((48, 64), 4.0)
  # Box face 0.4 m wide, 0.2 m tall, centred on the axis at z = 1 m: columns u with
  # |u - cx| * 1 / fx <= 0.2, rows |v - cy| / fy <= 0.1.
  u, v = np.meshgrid(np.arange(64), np.arange(48))
  box = (np.abs(u - cx) / fx <= 0.2) & (np.abs(v - cy) / fy <= 0.1)
  depth[box] = 1.0
  depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = 0.0, np.nan, np.inf, -1.0
  labels = np.where(box, 7, 3)
  cloud = hydrajax.points(depth, k, labels=labels)
  assert len(cloud.xyz) == 48 * 64 - 4
  assert np.all(np.isfinite(cloud.xyz)) and np.all(cloud.xyz[:, 2] > 0)
  front = cloud.xyz[cloud.labels == 7]
  np.testing.assert_allclose(front[:, 2], 1.0)
  assert np.all(np.abs(front[:, 0]) <= 0.2 + 1e-6) and np.all(np.abs(front[:, 1]) <= 0.1 + 1e-6)
  # The pixels nearest the edges sit within one pixel step (1 m / fx) of the box's edges.
  assert np.ptp(front[:, 0]) > 0.4 - 2 / fx and np.ptp(front[:, 1]) > 0.2 - 2 / fy
  wall = cloud.xyz[cloud.labels == 3]
  np.testing.assert_allclose(wall[:, 2], 4.0)
  # The wall extends as far as the image edge: (0 - cx) * 4 / fx.
  np.testing.assert_allclose(wall[:, 0].min(), -cx * 4 / fx, rtol=1e-6)


def test_intrinsics_at_the_original_size_are_rescaled_to_the_depth_map():
  """A 2x smaller depth map with the original-size intrinsics gives the same metric points
  as the full-size map (half-pixel resize convention: pixel centres move with the edges)."""
  full = points.Intrinsics(100.0, 100.0, 63.5, 47.5, 128, 96)
  small = full.scaled(48, 64)
  assert (small.fx, small.fy, small.cx, small.cy) == (50.0, 50.0, 31.5, 23.5)
  depth = np.full((48, 64), 3.0)
  np.testing.assert_allclose(hydrajax.points(depth, full).xyz, hydrajax.points(depth, small).xyz)
  # The image's edge (u = -0.5) still maps to the same ray at both sizes.
  cloud = hydrajax.points(depth, full)
  np.testing.assert_allclose(cloud.xyz[:, 0].min(), (0 - 31.5) * 3.0 / 50.0)


def test_stride_keeps_the_coordinates_of_the_pixels_it_keeps():
  depth = np.random.default_rng(0).uniform(0.5, 5.0, (48, 64))
  every = hydrajax.points(depth, K)
  some = hydrajax.points(depth, K, stride=3)
  assert len(some.xyz) == 16 * 22
  index = some.pixels[:, 0] * 64 + some.pixels[:, 1]
  np.testing.assert_array_equal(some.xyz, every.xyz[index])


def test_fov_gives_the_focal_length_of_the_image_width():
  k = points.from_fov(90.0, 48, 64)
  np.testing.assert_allclose([k.fx, k.fy, k.cx, k.cy], [32.0, 32.0, 31.5, 23.5])
  with pytest.raises(ValueError, match="--fov"):
    points.from_fov(180.0, 48, 64)


def test_bad_inputs_name_the_shape_or_key():
  with pytest.raises(ValueError, match=r"depth must be one \(H, W\)"):
    hydrajax.points(np.ones((2, 48, 64)), K)
  with pytest.raises(ValueError, match=r"colors must be \(H, W, 3\)"):
    hydrajax.points(np.ones((48, 64)), K, colors=np.zeros((48, 63, 3), np.uint8))
  with pytest.raises(ValueError, match="fx, fy > 0"):
    points.Intrinsics(0.0, 1.0, 0.0, 0.0, 4, 4)
  with pytest.raises(ValueError, match="lack cy"):
    points.from_mapping({"fx": 1, "fy": 1, "cx": 0, "width": 4, "height": 4}, "w.npz metadata")
  with pytest.raises(ValueError, match="--intrinsics must be four numbers"):
    points.parse_intrinsics("500,500,320", 480, 640)


def test_ply_round_trips_through_plyfile(tmp_path):
  rng = np.random.default_rng(1)
  depth = rng.uniform(0.5, 8.0, (48, 64)).astype(np.float32)
  depth[5, 5] = 0.0
  image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
  labels = rng.integers(0, 40, (48, 64))
  cloud = hydrajax.points(depth, K, colors=image, labels=labels)
  path = tmp_path / "cloud.ply"
  points.write_ply(path, cloud, visualize.NYUD_PALETTE)
  data = plyfile.PlyData.read(str(path))
  assert not data.text and data.byte_order == "<"
  v = data["vertex"]
  assert v.count == 48 * 64 - 1
  assert v["x"].dtype == np.float32 and v["red"].dtype == np.uint8
  np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), cloud.xyz)
  np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), cloud.colors)
  np.testing.assert_array_equal(v["label"], cloud.labels)
  np.testing.assert_array_equal(np.stack([v["class_red"], v["class_green"], v["class_blue"]], -1),
                                visualize.NYUD_PALETTE[cloud.labels])


def _run_predict(args):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = predict.main(args)
  return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small_nyud(tmp_path_factory):
  """The NYUD frame shrunk 8x (80x60): the Kinect's 640x480 intrinsics must be rescaled."""
  path = str(tmp_path_factory.mktemp("small") / "000464_rgb.png")
  predict.Image.open(NYUD).convert("RGB").resize((80, 60), predict.Image.BILINEAR).save(path)
  return path


def test_predict_points_writes_a_metric_ply_with_nyud_defaults(tmp_path, weights_file,
                                                               small_nyud):
  out = tmp_path / "out"
  code, stdout, err = _run_predict(["--weights", weights_file, small_nyud, "--out", str(out),
                                    "--points", "--no-progress"])
  assert code == 0, err
  assert "NYUDv2 Kinect defaults" in stdout and "fx=518.9" in stdout
  v = plyfile.PlyData.read(str(out / "000464_rgb.ply"))["vertex"]
  depth_mm = np.asarray(predict.Image.open(out / "000464_rgb_depth.png")).astype(np.float64)
  labels = np.asarray(predict.Image.open(out / "000464_rgb_segm.png"))
  assert v.count == np.count_nonzero(depth_mm)
  # Pixel (row 0, column 0) is the first point: its z is the depth PNG's value (mm).
  assert abs(v["z"][0] * 1000 - depth_mm[0, 0]) <= 0.5
  cx, fx = (325.5824 + 0.5) / 8 - 0.5, 518.8579 / 8
  np.testing.assert_allclose(v["x"][0], (0 - cx) * v["z"][0] / fx, rtol=1e-5)
  np.testing.assert_array_equal(v["label"], labels[depth_mm > 0])


def test_predict_points_takes_explicit_intrinsics_and_fov_first(tmp_path, weights_file,
                                                                small_nyud):
  out = tmp_path / "out"
  code, stdout, err = _run_predict(["--weights", weights_file, small_nyud, "--out", str(out),
                                    "--points", "--fov", "90", "--no-progress"])
  assert code == 0, err
  assert "--fov 90" in stdout and "fx=40 " in stdout
  v = plyfile.PlyData.read(str(out / "000464_rgb.ply"))["vertex"]
  np.testing.assert_allclose(v["x"][0], (0 - 39.5) * v["z"][0] / 40.0, rtol=1e-5)
  code, stdout, _ = _run_predict(["--weights", weights_file, small_nyud, "--out", str(out),
                                  "--points", "--fov", "90", "--intrinsics", "60,60,40,30",
                                  "--no-progress"])
  assert code == 0 and "--intrinsics 60,60,40,30" in stdout
  v = plyfile.PlyData.read(str(out / "000464_rgb.ply"))["vertex"]
  np.testing.assert_allclose(v["x"][0], (0 - 40) * v["z"][0] / 60.0, rtol=1e-5)


def test_predict_points_uses_the_weights_stored_intrinsics_before_dataset_defaults(
    tmp_path, variables, small_nyud):
  path = str(tmp_path / "model.npz")
  stored = {"fx": 400.0, "fy": 400.0, "cx": 300.0, "cy": 200.0, "width": 640, "height": 480}
  hydrajax.save(path, variables, meta={"intrinsics": stored})
  out = tmp_path / "out"
  code, stdout, err = _run_predict(["--weights", path, small_nyud, "--out", str(out),
                                    "--points", "--no-progress"])
  assert code == 0, err
  assert f"({path} metadata)" in stdout and "Kinect" not in stdout
  v = plyfile.PlyData.read(str(out / "000464_rgb.ply"))["vertex"]
  cx, fx = (300.0 + 0.5) / 8 - 0.5, 400.0 / 8
  np.testing.assert_allclose(v["x"][0], (0 - cx) * v["z"][0] / fx, rtol=1e-5)


def test_a_default_camera_of_another_aspect_ratio_is_warned_about(capsys):
  choice = points.CameraChoice(default=points.NYUD_KINECT)
  assert choice.for_image(240, 320) is points.NYUD_KINECT
  assert "warning" not in capsys.readouterr().err
  choice.for_image(370, 1226)
  err = capsys.readouterr().err
  assert "for 640x480 images, stretched to 1226x370" in err and "--intrinsics or --fov" in err


def test_predict_points_without_a_known_camera_says_what_to_give(tmp_path, small_nyud):
  path = str(tmp_path / "model7.npz")
  hydrajax.save(path, hydrajax.init(0, num_classes=7))
  code, _, err = _run_predict(["--weights", path, small_nyud, "--out", str(tmp_path / "o"),
                               "--points", "--no-progress"])
  assert code == 2 and "--intrinsics fx,fy,cx,cy or --fov DEG" in err
  assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
  code, _, err = _run_predict(["--weights", path, small_nyud, "--out", str(tmp_path / "o"),
                               "--points", "--intrinsics", "1,2", "--no-progress"])
  assert code == 2 and "--intrinsics must be four numbers" in err


def test_a_subnormal_or_tiny_focal_length_is_refused_not_turned_into_infinite_points():
  with pytest.raises(ValueError, match=r"fx=5e-320, fy=500.0 are too small for a 640x480 "
                                       r"image"):
    points.Intrinsics(5e-320, 500.0, 320.0, 240.0, 640, 480)
  with pytest.raises(ValueError, match="too small"):
    points.parse_intrinsics("500,1e-300,320,240", 480, 640)
  wide = points.Intrinsics(0.5, 0.5, 31.5, 23.5, 64, 48)  # absurd, yet finite: allowed
  assert np.isfinite(hydrajax.points(np.ones((48, 64)), wide).xyz).all()
  with pytest.raises(ValueError, match="beyond float32's range"):
    hydrajax.points(np.full((48, 64), 3e38), wide)


def test_predict_refuses_a_subnormal_focal_length_before_any_image(tmp_path, weights_file,
                                                                    small_nyud):
  code, _, err = _run_predict(["--weights", weights_file, small_nyud, "--out",
                               str(tmp_path / "o"), "--points", "--intrinsics",
                               "5e-320,5e-320,320,240", "--no-progress"])
  assert code == 2 and "fx=5e-320, fy=5e-320 are too small" in err
  assert not (tmp_path / "o").exists()
