"""Video prediction: a synthetic clip goes through `predict --video` frame for frame."""
import numpy as np
import pytest

import hydrajax
from hydrajax.inference import predict
from hydrajax.inference import video

iio = pytest.importorskip("imageio.v3")
pytest.importorskip("imageio_ffmpeg")

# imageio starts ffmpeg with subprocess (fork + immediate exec), which JAX's fork warning
# cannot tell apart from a bare fork; it is safe here.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

H, W, FRAMES = 64, 96, 10


def synthetic_clip(path, frames=FRAMES):
  """Smooth moving gradients (compress almost losslessly), 10 fps H.264."""
  import imageio.v2 as imageio_v2
  y, x = np.mgrid[0:H, 0:W]
  clip = []
  with imageio_v2.get_writer(path, format="FFMPEG", fps=10, codec="libx264",
                             macro_block_size=2, quality=10) as writer:
    for t in range(frames):
      frame = np.stack([(x * 2 + t * 8) % 256, (y * 3) % 256, np.full_like(x, 40 + 10 * t)],
                       -1).astype(np.uint8)
      writer.append_data(frame)
      clip.append(frame)
  return np.stack(clip)


def test_batches_groups_in_order_and_keeps_the_remainder():
  frames = [np.full((4, 5, 3), i, np.uint8) for i in range(7)]
  out = list(video.batches(frames, 3))
  assert [b.shape[0] for b in out] == [3, 3, 1]
  np.testing.assert_array_equal(np.concatenate(out)[:, 0, 0, 0], np.arange(7))
  with pytest.raises(ValueError, match="frame 1 has shape"):
    list(video.batches([np.zeros((4, 5, 3)), np.zeros((4, 6, 3))], 2))


def test_predict_video_writes_every_frame(weights_file, tmp_path, capsys):
  clip = synthetic_clip(str(tmp_path / "in.mp4"))
  out = tmp_path / "out" / "vis.mp4"
  rc = predict.main(["--weights", weights_file, "--video", str(tmp_path / "in.mp4"),
                     "--out", str(out), "--batch", "4", "--no-progress"])
  assert rc == 0
  assert f"wrote {FRAMES} frames" in capsys.readouterr().out
  frames = np.stack(list(iio.imiter(out, plugin="FFMPEG")))
  gap = 4  # visualize.side_by_side's default gap: input | segm | depth
  assert frames.shape == (FRAMES, H, 3 * W + 2 * gap, 3)
  # the left panel is the input frame again (up to H.264 loss, twice)
  left = frames[:, :, :W].astype(np.float64)
  assert np.mean(np.abs(left - clip)) < 8.0
  assert [p.name for p in out.parent.iterdir()] == ["vis.mp4"]  # no temp files left


def test_video_cli_missing_input_fails_and_writes_nothing(weights_file, tmp_path, capsys):
  out = tmp_path / "out.mp4"
  rc = predict.main(["--weights", weights_file, "--video", str(tmp_path / "missing.mp4"),
                     "--out", str(out)])
  assert rc == 2
  assert "no such video file" in capsys.readouterr().err
  assert list(tmp_path.iterdir()) == []


def test_predict_video_rejects_images_too(weights_file, tmp_path, capsys):
  rc = predict.main(["--weights", weights_file, "--video", "a.mp4", "b.png",
                     "--out", str(tmp_path / "o.mp4")])
  assert rc == 2
  assert "either --video or images" in capsys.readouterr().err


def test_video_missing_weights_fails(tmp_path, capsys):
  synthetic_clip(str(tmp_path / "in.mp4"), frames=2)
  rc = predict.main(["--weights", str(tmp_path / "none.npz"), "--video", str(tmp_path / "in.mp4"),
                     "--out", str(tmp_path / "o.mp4")])
  assert rc == 2
  assert "weights file not found" in capsys.readouterr().err
  assert not (tmp_path / "o.mp4").exists()


def test_frames_above_max_side_are_shrunk_before_the_network(weights_file, tmp_path, capsys):
  synthetic_clip(str(tmp_path / "in.mp4"), frames=3)
  out = tmp_path / "vis.mp4"
  rc = predict.main(["--weights", weights_file, "--video", str(tmp_path / "in.mp4"), "--out",
                     str(out), "--max-side", str(W // 2), "--batch", "3", "--no-progress"])
  assert rc == 0, capsys.readouterr().err
  frames = np.stack(list(iio.imiter(out, plugin="FFMPEG")))
  gap = 4
  assert frames.shape == (3, H // 2, 3 * (W // 2) + 2 * gap, 3)


def test_video_above_the_pixel_limit_is_refused_before_decoding(weights_file, tmp_path, capsys,
                                                                 monkeypatch):
  synthetic_clip(str(tmp_path / "in.mp4"), frames=2)
  out = tmp_path / "vis.mp4"
  monkeypatch.setattr(video, "encode_stream", lambda *a, **k: pytest.fail("frames decoded"))
  rc = predict.main(["--weights", weights_file, "--video", str(tmp_path / "in.mp4"), "--out",
                     str(out), "--max-pixels", str(H * W - 1), "--no-progress"])
  err = capsys.readouterr().err
  assert rc == 2 and f"frames of {W}x{H} ({H * W} pixels) exceed the limit of {H * W - 1}" in err
  assert not out.exists()


def test_shrink_frames_keeps_small_frames_and_the_aspect():
  small, wide = np.zeros((10, 20, 3), np.uint8), np.zeros((1080, 3840, 3), np.uint8)
  out = list(video.shrink_frames([small, wide], 1280))
  assert out[0] is small and out[1].shape == (360, 1280, 3)
  assert list(video.shrink_frames([wide], 0))[0] is wide


def test_out_of_memory_names_the_frame_size_and_writes_nothing(weights_file, tmp_path, capsys,
                                                               monkeypatch):
  import jax
  synthetic_clip(str(tmp_path / "in.mp4"), frames=2)

  def apply(variables, images):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.3GiB")

  monkeypatch.setattr(video.api, "apply", apply)
  out = tmp_path / "o.mp4"
  rc = predict.main(["--weights", weights_file, "--video", str(tmp_path / "in.mp4"), "--out",
                     str(out), "--batch", "2", "--no-progress"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert err == [f"error: {tmp_path / 'in.mp4'}: out of memory running the network on 2 "
                 f"frame(s) of {W}x{H}; lower --max-side or --batch"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_predict_video_runs_an_onnx_graph_like_the_weights(variables, tmp_path, capsys):
  """`--onnx` (hydrajax.inference.onnx_runner) gives the frames the weights give."""
  from hydrajax.export import cli as export
  synthetic_clip(str(tmp_path / "in.mp4"), frames=3)
  (tmp_path / "m.onnx").write_bytes(export.export_onnx(variables, H, W))
  hydrajax.save(tmp_path / "w.npz", variables)
  runs = {}
  for flag, model in (("--onnx", "m.onnx"), ("--weights", "w.npz")):
    out = tmp_path / f"{flag[2:]}.mp4"
    assert predict.main([flag, str(tmp_path / model), "--video", str(tmp_path / "in.mp4"),
                         "--out", str(out), "--batch", "2", "--no-progress"]) == 0
    runs[flag] = np.stack(list(iio.imiter(out, plugin="FFMPEG"))).astype(np.float64)
  assert "wrote 3 frames" in capsys.readouterr().out
  assert runs["--onnx"].shape == runs["--weights"].shape == (3, H, 3 * W + 8, 3)
  assert np.mean(np.abs(runs["--onnx"] - runs["--weights"])) < 1.0


def _writer_calling(monkeypatch, before_frame):
  """The video writer calls before_frame(n, writer) before it encodes frame n (1-based)."""
  import imageio.v2 as imageio_v2
  get_writer = imageio_v2.get_writer

  def spied(*args, **kwargs):
    writer = get_writer(*args, **kwargs)
    append, count = writer.append_data, [0]

    def append_data(image, *more):
      count[0] += 1
      before_frame(count[0], writer)
      return append(image, *more)
    writer.append_data = append_data
    return writer
  monkeypatch.setattr(imageio_v2, "get_writer", spied)


def _predict_no_escape(argv):
  """predict.main; a KeyboardInterrupt that escapes it fails the test (not stops pytest)."""
  try:
    return predict.main(argv)
  except KeyboardInterrupt:
    pytest.fail("KeyboardInterrupt escaped hydrajax-predict")


def test_ctrl_c_while_encoding_finishes_that_frame_and_keeps_the_video(weights_file, tmp_path,
                                                                      capsys, monkeypatch):
  """A real SIGINT arriving while frame 3 is encoded: frame 3 is finished, the video holds
  frames 1-3 and plays, one line says so, exit status 130, Ctrl-C handling restored."""
  import os
  import signal
  synthetic_clip(str(tmp_path / "in.mp4"), frames=6)
  _writer_calling(monkeypatch, lambda n, writer: n == 3 and os.kill(os.getpid(), signal.SIGINT))
  out = tmp_path / "vis.mp4"
  rc = _predict_no_escape(["--weights", weights_file, "--video", str(tmp_path / "in.mp4"),
                           "--out", str(out), "--batch", "2", "--no-progress"])
  assert rc == 130
  assert capsys.readouterr().err.strip().splitlines() == [
      f"stopped by Ctrl-C: wrote the first 3 frames to {out}"]
  assert np.stack(list(iio.imiter(out, plugin="FFMPEG"))).shape[0] == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "vis.mp4"]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_that_kills_the_encoder_mid_frame_writes_nothing(weights_file, tmp_path,
                                                                capsys, monkeypatch):
  """A KeyboardInterrupt inside ffmpeg's writer (a second Ctrl-C) kills the encoder: rather
  than a video without its header, nothing is written; exit status 130."""
  synthetic_clip(str(tmp_path / "in.mp4"), frames=6)

  def interrupt_the_encoder(n, writer):
    if n == 4:
      writer._write_gen.throw(KeyboardInterrupt)  # imageio's ffmpeg feeder, mid-frame
  _writer_calling(monkeypatch, interrupt_the_encoder)
  out = tmp_path / "vis.mp4"
  rc = _predict_no_escape(["--weights", weights_file, "--video", str(tmp_path / "in.mp4"),
                           "--out", str(out), "--batch", "2", "--no-progress"])
  assert rc == 130
  assert capsys.readouterr().err.strip() == f"stopped by Ctrl-C: nothing written to {out}"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
