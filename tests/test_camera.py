"""hydrajax-predict --camera: temporal smoothing and the live loop, on fabricated frames
through an injected camera (no /dev/video device needed)."""
import contextlib
import io
import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import hydrajax
from hydrajax.inference import camera, predict, visualize
from tests.helpers.samples import NYUD



def test_smoothing_off_returns_each_frame_unchanged():
  s = camera.Smoother(0.0)
  for value in (1.0, 3.0):
    out = s({"depth": np.full((2, 2), value, np.float32), "segm": np.zeros((2, 2, 3))})
    np.testing.assert_array_equal(out["depth"], value)


def test_smoothing_averages_depth_exponentially():
  s = camera.Smoother(0.5)
  got = [float(s({"depth": np.full((2, 2), d, np.float32)})["depth"][0, 0])
         for d in (1.0, 3.0, 3.0, 3.0)]
  np.testing.assert_allclose(got, [1.0, 2.0, 2.5, 2.75])


def test_smoothing_steadies_flickering_labels():
  """Logits that flip each frame between a weak class 1 and a strong class 0 give steady
  class 0 when smoothed; a frame of another size restarts the average."""
  strong0 = np.array([[[2.0, 0.0]]])
  weak1 = np.array([[[0.0, 0.5]]])
  s = camera.Smoother(0.6)
  labels = [int(s({"segm": x})["segm"].argmax(-1)[0, 0]) for x in (strong0, weak1) * 3]
  assert labels == [0] * 6
  assert [int(x.argmax(-1)[0, 0]) for x in (strong0, weak1) * 3] == [0, 1] * 3
  restarted = s({"segm": np.zeros((2, 2, 2)) + [0.0, 1.0]})["segm"]
  assert restarted.shape == (2, 2, 2) and np.all(restarted.argmax(-1) == 1)


def test_smoothing_strength_must_be_below_one():
  with pytest.raises(ValueError, match=r"--smooth must be in \[0, 1\)"):
    camera.Smoother(1.0)


def _frames(n, size=(48, 64)):
  image = np.asarray(Image.open(NYUD).convert("RGB").resize(size[::-1]))
  rng = np.random.default_rng(0)
  for _ in range(n):  # a noisy still camera
    yield np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def test_record_draws_the_smoothed_outputs_of_every_frame(tmp_path, variables, monkeypatch):
  """The pictures are drawn (visualize.render, as for --video) from the exponential average
  of hydrajax.apply's outputs over the frames so far, and one is written per frame."""
  drawn, render = [], visualize.render

  def spy(image, outputs, *args):
    drawn.append({k: np.array(v) for k, v in outputs.items()})
    return render(image, outputs, *args)
  monkeypatch.setattr(visualize, "render", spy)
  report = camera.record(variables, _frames(4), tmp_path / "live.mp4", fps=10, smooth=0.75,
                         progress=False)
  assert report.frames == 4 and len(drawn) == 4
  video = iio.imread(tmp_path / "live.mp4", plugin="FFMPEG")
  assert video.shape == (4, 48, 3 * 64 + 2 * 4, 3)
  want = None
  for frame, got in zip(_frames(4), drawn):
    new = {k: np.asarray(v) for k, v in hydrajax.apply(variables, frame).items()}
    want = new if want is None else {k: 0.25 * new[k] + 0.75 * want[k] for k in new}
    np.testing.assert_allclose(got["depth"], want["depth"], rtol=1e-5)
    np.testing.assert_allclose(got["segm"], want["segm"], rtol=1e-4, atol=1e-5)
  assert not np.allclose(drawn[-1]["depth"], np.asarray(
      hydrajax.apply(variables, list(_frames(4))[-1])["depth"]), rtol=1e-7, atol=0)


def test_predict_camera_runs_the_loop_on_an_injected_camera(tmp_path, variables, monkeypatch):
  weights = str(tmp_path / "model.npz")
  hydrajax.save(weights, variables)
  opened = []

  def fake_camera(index):
    opened.append(index)
    return _frames(100), 12.0
  monkeypatch.setattr(camera, "open_camera", fake_camera)
  out = tmp_path / "live.mp4"
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    code = predict.main(["--weights", weights, "--camera", "3", "--out", str(out),
                         "--max-frames", "4", "--smooth", "0.5", "--no-progress"])
  assert code == 0 and opened == [3]
  assert "wrote 4 camera frames" in stdout.getvalue() and "smoothing 0.5" in stdout.getvalue()
  assert iio.imread(out, plugin="FFMPEG").shape[0] == 4


def test_predict_camera_errors_name_the_camera(tmp_path, variables):
  weights = str(tmp_path / "model.npz")
  hydrajax.save(weights, variables)
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = camera.run(weights, 0, str(tmp_path / "o.mp4"), progress=False,
                      opener=lambda i: (iter(()), 10.0))
  assert code == 2 and "camera 0: no frames received" in err.getvalue()
  assert not (tmp_path / "o.mp4").exists()
  with contextlib.redirect_stderr(err):
    code = predict.main(["--weights", weights, "--camera", "0", "--video", "x.mp4",
                         "--out", str(tmp_path / "o.mp4")])
  assert code == 2 and "either --camera or images/--video" in err.getvalue()


def test_open_camera_without_a_device_says_which(monkeypatch):
  if os.path.exists("/dev/video97"):
    pytest.skip("this machine has a /dev/video97")
  with pytest.raises(ValueError, match=r"camera 97: cannot open it .*/dev/video97"):
    camera.open_camera(97)



def _no_escape(run, *args, **kwargs):
  """run(*args, **kwargs); a KeyboardInterrupt that escapes it fails the test (rather than
  stopping pytest)."""
  try:
    return run(*args, **kwargs)
  except KeyboardInterrupt:
    pytest.fail("KeyboardInterrupt escaped the command")


def test_ctrl_c_during_inference_keeps_the_recording_of_the_frames_so_far(
    tmp_path, weights_file, monkeypatch, capsys):
  """Ctrl-C while the network runs on frame 10: the 9 frames drawn so far are a playable
  live.mp4, the command says so in one line and exits with 130."""
  from hydrajax import api
  monkeypatch.setattr(camera, "open_camera", lambda index: (_frames(100), 12.0))
  apply, calls = api.apply, []

  def interrupted_apply(variables, images):
    calls.append(1)
    if len(calls) == 10:
      raise KeyboardInterrupt
    return apply(variables, images)
  monkeypatch.setattr(api, "apply", interrupted_apply)
  out = tmp_path / "live.mp4"
  code = _no_escape(predict.main, ["--weights", weights_file, "--camera", "0", "--out",
                                   str(out), "--no-progress"])
  captured = capsys.readouterr()
  assert code == 130
  assert captured.err.strip().splitlines() == [
      f"stopped by Ctrl-C: wrote 9 camera frames to {out}"]
  assert iio.imread(out, plugin="FFMPEG").shape[0] == 9
  assert os.listdir(tmp_path) == ["live.mp4"]  # no temp file left


def test_ctrl_c_before_the_first_frame_writes_nothing_and_exits_130(
    tmp_path, weights_file, capsys):
  def camera_interrupted_at_once(index):
    def frames():
      raise KeyboardInterrupt
      yield
    return frames(), 12.0
  out = tmp_path / "live.mp4"
  code = _no_escape(camera.run, weights_file, 0, str(out), progress=False,
                    opener=camera_interrupted_at_once)
  assert code == 130
  assert capsys.readouterr().err.strip() == f"stopped by Ctrl-C: nothing written to {out}"
  assert os.listdir(tmp_path) == []
