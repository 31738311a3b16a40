"""Live video from a camera: the same side-by-side pictures as `--video`, recorded to a file.

    hydrajax-predict --weights nyud.npz --camera 0 --out live.mp4 [--smooth 0.6] [--max-frames 300]
    hydrajax-predict --onnx model_int8.onnx --camera 0 --out live.mp4   (an exported graph)

Frames come from camera N (/dev/videoN on Linux) through imageio's FFMPEG plugin, one network
call per frame (batch 1: the least latency), until `--max-frames` or Ctrl-C; the recording is
complete either way (written atomically when the loop ends). Ctrl-C is taken after the frame in
progress and exits with status 130 (video.encode_stream).

Temporal smoothing (`--smooth S`, off by default): a still camera's predictions flicker from
frame to frame. With S in (0, 1), each frame's depth and class logits become an exponential
moving average, out_t = (1 - S) * new_t + S * out_{t-1}, and the labels are the argmax of the
averaged logits. Larger S is steadier but lags behind motion by about S / (1 - S) frames.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from hydrajax.inference import full_res
from hydrajax.inference import exported
from hydrajax.inference import video

DEFAULT_FPS = 15.0  # the recording's frame rate when the camera reports none


class Smoother:
  """Exponential moving average of "depth" and "segm" logits over successive frames
  (weight `strength` on the past; 0 returns every frame unchanged). A frame of another
  size restarts the average."""

  def __init__(self, strength: float):
    if not 0.0 <= strength < 1.0:
      raise ValueError(f"--smooth must be in [0, 1) (the weight of the past), got {strength}")
    self.strength = strength
    self._state: dict[str, np.ndarray] = {}

  def __call__(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(outputs)
    for key in ("depth", "segm"):
      if key not in out or self.strength == 0.0:
        continue
      if not np.issubdtype(np.asarray(out[key]).dtype, np.floating):
        raise ValueError(f"smoothing needs {key} as floats (logits), got "
                         f"{np.asarray(out[key]).dtype}")
      new = np.asarray(out[key], np.float32)
      prev = self._state.get(key)
      if prev is not None and prev.shape == new.shape:
        new = (1.0 - self.strength) * new + self.strength * prev
      self._state[key] = new
      out[key] = new
    return out


def open_camera(index: int) -> tuple[Iterator[np.ndarray], float]:
  """(frames, frames per second) of camera `index`; ValueError naming it if it cannot be
  opened."""
  import imageio.v2 as imageio_v2
  try:
    reader = imageio_v2.get_reader(f"<video{index}>", format="FFMPEG")
  except (IndexError, OSError, RuntimeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"camera {index}: cannot open it ({first}); is /dev/video{index} there "
                     f"and free?") from None
  fps = float(reader.get_meta_data().get("fps") or DEFAULT_FPS)

  def frames():
    with reader:
      yield from reader
  return frames(), fps


def record(variables: Mapping[str, Any], frames: Iterable[np.ndarray], dst: str | os.PathLike,
           *, fps: float = DEFAULT_FPS, smooth: float = 0.0, max_frames: int | None = None,
           palette: str = "auto", max_depth: float | None = None, progress: bool = True,
           max_side: int = full_res.DEFAULT_MAX_SIDE) -> video.VideoReport:
  """Run the network (weights, or an exported.load model) on each frame of `frames` (any
  iterable of (H, W, 3) uint8: a camera, or fabricated frames in tests), smoothed by
  `smooth`, and record the pictures to `dst`."""
  smoother = Smoother(smooth)
  if max_frames is not None:
    frames = (f for _, f in zip(range(max_frames), frames))
  return video.encode_stream(variables, frames, dst, fps=fps, total=max_frames, batch_size=1,
                             palette=palette, max_depth=max_depth, progress=progress,
                             max_side=max_side, smooth=smoother if smooth else None,
                             desc="camera")


def run(variables_path: str, index: int, dst: str, *, onnx: str = "", runtime: str = "file",
        smooth: float = 0.0,
        max_frames: int | None = None, palette: str = "auto", max_depth: float | None = None,
        progress: bool = True, max_side: int = full_res.DEFAULT_MAX_SIDE,
        opener: Callable[[int], tuple[Iterable[np.ndarray], float]] | None = None) -> int:
  """CLI body of `hydrajax-predict --camera N`: the weights, or the ONNX graph `onnx` (e.g.
  int8, the fastest on a CPU); errors -> a message and exit status 2; Ctrl-C -> the frames so
  far recorded, one line, exit status 130. `opener(N)` gives (frames, fps); default
  `open_camera`."""
  from hydrajax import weights
  try:
    Smoother(smooth)  # range check before the camera opens
    variables = exported.load(onnx, runtime) if onnx else weights.load(variables_path)
    frames, fps = (opener or open_camera)(index)
    report = record(variables, frames, dst, fps=fps, smooth=smooth, max_frames=max_frames,
                    palette=palette, max_depth=max_depth, progress=progress, max_side=max_side)
  except video.NoFrames:
    print(f"error: camera {index}: no frames received", file=sys.stderr)
    return 2
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"stopped by Ctrl-C: nothing written to {dst}", file=sys.stderr)
    return video.INTERRUPTED
  if report.interrupted:
    print(f"stopped by Ctrl-C: wrote {report.frames} camera frames to {dst}", file=sys.stderr)
    return video.INTERRUPTED
  print(f"wrote {report.frames} camera frames to {dst}: {report.fps:.2f} frames/s overall, "
        f"{report.model_fps:.2f} frames/s in the network" + (f", smoothing {smooth:g}"
                                                              if smooth else ""))
  return 0
