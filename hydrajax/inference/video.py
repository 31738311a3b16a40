"""Video and camera-like streams: batched inference, side-by-side visualisation per frame.

    hydrajax-predict --weights nyud.npz --video IN.mp4 --out OUT.mp4 [--batch 4]

Frames are decoded with imageio's FFMPEG plugin (imageio-ffmpeg ships the ffmpeg binary),
grouped into batches of `batch_size` (the last batch is padded by repeating its last frame,
so one compiled shape serves the whole video), run through `hydrajax.apply`, rendered as
input | segmentation | depth [| normals] (`visualize.render`), and encoded as H.264 at the
input's frame rate. The output is written to a temp file beside OUT and renamed at the end.
Frames above `--max-side` pixels on the long side (default 1280, as for photos) are shrunk
before the network (PIL bilinear, aspect kept) and the video is rendered at that size: a 4K
frame's full-size logits would be ~1.3 GB at 40 classes. Running out of memory stops with one
line naming the frame size and batch. `--onnx model.onnx` runs an exported graph (float or
int8) instead of weights (hydrajax/inference/onnx_runner.py). Ctrl-C stops after the frame in
progress and keeps the video of the frames so far (exit status 130).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from tqdm import tqdm

from hydrajax import api
from hydrajax.runtime import atomic
from hydrajax.data import pngio
from hydrajax.inference import full_res
from hydrajax.inference import exported
from hydrajax.inference import onnx_runner
from hydrajax.inference import visualize

DEFAULT_BATCH = 4
INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT, as shells report it)


@dataclasses.dataclass
class VideoReport:
  """frames: frames written; seconds: wall time of the whole loop (decode, model, render,
  encode, and the first call's compile); model_frames / model_seconds: frames and time
  inside the network (blocked on its result), without the first batch (it compiles) when
  there is more than one; interrupted: Ctrl-C ended the stream (the frames so far are in
  the file)."""
  frames: int
  seconds: float
  model_frames: int
  model_seconds: float
  interrupted: bool = False

  @property
  def fps(self) -> float:
    return self.frames / self.seconds if self.seconds > 0 else float("nan")

  @property
  def model_fps(self) -> float:
    return self.model_frames / self.model_seconds if self.model_seconds > 0 else float("nan")


def batches(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
  """Group (H, W, 3) frames into (n <= batch_size, H, W, 3) arrays, in order. A frame of
  another size than the first raises ValueError naming its index."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  buffer, shape = [], None
  for i, frame in enumerate(frames):
    frame = np.asarray(frame)
    if frame.ndim == 2:
      frame = np.repeat(frame[..., None], 3, axis=-1)
    frame = frame[..., :3]  # drop alpha
    shape = shape or frame.shape
    if frame.shape != shape:
      raise ValueError(f"frame {i} has shape {frame.shape}, earlier frames {shape}")
    buffer.append(frame)
    if len(buffer) == batch_size:
      yield np.stack(buffer)
      buffer = []
  if buffer:
    yield np.stack(buffer)


def shrink_frames(frames: Iterable[np.ndarray], max_side: int) -> Iterator[np.ndarray]:
  """Frames whose long side exceeds `max_side` pixels shrunk to it (`full_res.working_size`,
  PIL bilinear), the others unchanged; max_side <= 0 leaves all unchanged."""
  for frame in frames:
    frame = np.asarray(frame)
    yield full_res.resize_image(frame, full_res.working_size(frame.shape[:2], max_side))


def predict_stream(variables: Mapping[str, Any], frames: Iterable[np.ndarray], *,
                   batch_size: int = DEFAULT_BATCH,
                   timing: list[tuple[int, float]] | None = None, max_side: int = 0
                   ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """Yield (frame, outputs) per frame of any iterable (a video reader, a camera loop).

  outputs are `hydrajax.apply`'s at the frame's resolution: "segm" logits (H, W, C),
  "depth" (H, W) metres[, "normals"]. Frames above `max_side` are shrunk first and yielded
  shrunk (0: never). Batches are padded to `batch_size` so the network compiles once;
  `timing`, if given, receives (frames, seconds in the model) per batch. Out of memory in
  the network raises full_res.OutOfMemory naming the frame size and batch. `variables` may
  be an exported graph (`exported.load`) instead of weights.
  """
  for batch in batches(shrink_frames(frames, max_side), batch_size):
    n = len(batch)
    padded = batch if n == batch_size else np.concatenate(
        [batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
    start = time.perf_counter()
    try:
      if isinstance(variables, onnx_runner.ExportedModel):
        out = variables(padded)
      else:
        out = jax.block_until_ready(api.apply(variables, padded))
    except Exception as e:  # noqa: BLE001 - only out-of-memory is caught, the rest re-raised
      if not full_res.is_out_of_memory(e):
        raise
      h, w = batch.shape[1:3]
      raise full_res.OutOfMemory(
          f"out of memory running the network on {batch_size} frame(s) of {w}x{h}; lower "
          "--max-side or --batch") from e
    if timing is not None:
      timing.append((n, time.perf_counter() - start))
    out = {k: np.asarray(v[:n]) for k, v in out.items()}
    for i in range(n):
      yield batch[i], {k: v[i] for k, v in out.items()}


def _even(image: np.ndarray, background: int = 255) -> np.ndarray:
  """Pad (H, W, 3) to even H and W: H.264 in yuv420p needs them."""
  h, w = image.shape[:2]
  return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=background)


def process_video(variables: Mapping[str, Any], src: str | os.PathLike, dst: str | os.PathLike,
                  *, batch_size: int = DEFAULT_BATCH, palette: str = "auto",
                  max_depth: float | None = None, max_frames: int | None = None,
                  progress: bool = True,
                  max_side: int = full_res.DEFAULT_MAX_SIDE,
                  max_pixels: int = pngio.DEFAULT_MAX_PIXELS) -> VideoReport:
  """Read video `src`, write the side-by-side visualisation of every frame to `dst` (.mp4).

  A video whose frames (width x height, from its metadata) exceed `max_pixels` is refused
  before any frame is decoded; frames above `max_side` pixels on the long side are shrunk
  first (0: never). Returns frame
  count and timings. `dst` appears only when all frames were written; out of memory raises
  ValueError naming `src`, the frame size and the batch.
  """
  import imageio.v3 as iio

  src, dst = os.fspath(src), os.fspath(dst)
  if not os.path.isfile(src):
    raise FileNotFoundError(f"{src}: no such video file")
  try:
    meta = iio.immeta(src, plugin="FFMPEG")
  except Exception as e:  # imageio raises OSError or its own errors for non-videos
    raise ValueError(f"{src}: not a readable video ({e})") from e
  w, h = (int(v) for v in meta.get("size") or (0, 0))
  if w * h > max_pixels:
    raise ValueError(f"{src}: frames of {w}x{h} ({w * h} pixels) exceed the limit of "
                     f"{max_pixels} pixels (--max-pixels)")
  fps_in = float(meta.get("fps") or 25.0)
  total = meta.get("duration", 0) * fps_in
  total = int(round(total)) if math.isfinite(total) and total > 0 else None
  if max_frames is not None:
    total = min(total or max_frames, max_frames)
  frames = iio.imiter(src, plugin="FFMPEG")
  if max_frames is not None:
    frames = (f for i, f in zip(range(max_frames), frames))
  try:
    return encode_stream(variables, frames, dst, fps=fps_in, total=total, batch_size=batch_size,
                         palette=palette, max_depth=max_depth, progress=progress,
                         max_side=max_side)
  except full_res.OutOfMemory as e:
    raise ValueError(f"{src}: {e}") from e
  except NoFrames:
    raise ValueError(f"{src}: no frames decoded") from None


class NoFrames(ValueError):
  """The frame source ended before its first frame."""


def encode_stream(variables: Mapping[str, Any], frames: Iterable[np.ndarray],
                  dst: str | os.PathLike, *, fps: float, total: int | None = None,
                  batch_size: int = DEFAULT_BATCH, palette: str = "auto",
                  max_depth: float | None = None, progress: bool = True,
                  max_side: int = full_res.DEFAULT_MAX_SIDE,
                  smooth: Callable[[dict], dict] | None = None,
                  desc: str = "video") -> VideoReport:
  """Run the network on `frames` ((H, W, 3) uint8, any iterable: a video, a camera) and
  encode each frame's side-by-side picture into `dst` (H.264 at `fps`), written atomically.
  `smooth`, if given, maps each frame's outputs, in order, before they are drawn (temporal
  smoothing). Raises NoFrames when `frames` is empty, full_res.OutOfMemory from the network.

  Ctrl-C ends the stream, not the file: the frames encoded so far are closed into `dst` and
  the report says `interrupted`. A SIGINT (in the main thread) is taken after the frame in
  progress, so the encoder is never cut mid-frame. KeyboardInterrupt is raised, and nothing
  written, when no frame was encoded yet, or when a KeyboardInterrupt (a second Ctrl-C)
  killed the encoder inside a frame and left no playable file."""
  import imageio.v2 as imageio_v2

  dst = os.fspath(dst)
  colours, clip = onnx_runner.display_settings(variables, palette, max_depth)
  timing, count, start = [], 0, time.perf_counter()
  interrupted = False
  with atomic.atomic_path(dst, suffix=os.path.splitext(dst)[1] or ".mp4") as tmp:
    writer = imageio_v2.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264",
                                   macro_block_size=2)
    with _first_sigint_deferred() as stop, writer, \
        tqdm(total=total, desc=desc, unit="frame", disable=not progress) as bar:
      encoding = False  # True while a KeyboardInterrupt could land inside the encoder
      try:
        for frame, outputs in predict_stream(variables, frames, batch_size=batch_size,
                                             timing=timing, max_side=max_side):
          if smooth is not None:
            outputs = smooth(outputs)
          picture = _even(visualize.render(frame, outputs, colours, clip)["vis"])
          encoding = True
          writer.append_data(picture)
          encoding = False
          count += 1
          bar.update(1)
          bar.set_postfix(fps=f"{count / (time.perf_counter() - start):.1f}")
          if stop.requested:
            break
      except KeyboardInterrupt:
        if not count:
          raise
        interrupted = True
    interrupted = interrupted or stop.requested
    if interrupted and (count == 0 or encoding and not _playable(tmp)):
      raise KeyboardInterrupt  # nothing to keep, or the encoder was killed mid-frame
    if count == 0:
      raise NoFrames("no frames")
  steady = timing[1:] or timing
  return VideoReport(count, time.perf_counter() - start, sum(n for n, _ in steady),
                     sum(t for _, t in steady), interrupted)


def _playable(path: str) -> bool:
  """Whether a closed video file has a readable header (an encoder killed before it
  finished leaves an MP4 without one)."""
  import imageio.v3 as iio
  try:
    iio.immeta(path, plugin="FFMPEG")
  except Exception:  # noqa: BLE001 - imageio raises OSError or its own errors
    return False
  return True


class _Stop:
  requested = False


@contextlib.contextmanager
def _first_sigint_deferred() -> Iterator[_Stop]:
  """Within the block, the first SIGINT (Ctrl-C) only sets `.requested` (the encoder's
  ffmpeg is killed when a KeyboardInterrupt lands inside it, losing the file); the next
  SIGINT raises KeyboardInterrupt as usual. Outside the main thread, nothing changes."""
  stop = _Stop()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return
  previous = signal.getsignal(signal.SIGINT)
  if previous is None:  # installed outside Python: restore Python's own
    previous = signal.default_int_handler

  def handler(signum, frame):
    stop.requested = True
    signal.signal(signal.SIGINT, previous)
  signal.signal(signal.SIGINT, handler)
  try:
    yield stop
  finally:
    signal.signal(signal.SIGINT, previous)


def add_video_args(parser: argparse.ArgumentParser) -> None:
  """The video options of `hydrajax-predict --video` (and --camera)."""
  parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                      help=f"frames per network call (default {DEFAULT_BATCH})")
  parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")


def run(variables_path: str, src: str, dst: str, *, onnx: str = "", runtime: str = "file",
        batch_size: int = DEFAULT_BATCH,
        palette: str = "auto", max_depth: float | None = None, max_frames: int | None = None,
        progress: bool = True, max_side: int = full_res.DEFAULT_MAX_SIDE,
        max_pixels: int = pngio.DEFAULT_MAX_PIXELS) -> int:
  """CLI body: load weights (or the ONNX graph `onnx`), process, print frames and fps;
  errors -> message, exit 2; Ctrl-C -> the frames so far written, one line, exit 130."""
  from hydrajax import weights
  try:
    if batch_size < 1:
      raise ValueError(f"--batch must be >= 1, got {batch_size}")
    if max_side < 0:
      raise ValueError(f"--max-side must be >= 0 pixels (0 = no limit), got {max_side}")
    if max_pixels < 1:
      raise ValueError(f"--max-pixels must be >= 1, got {max_pixels}")
    variables = exported.load(onnx, runtime) if onnx else weights.load(variables_path)
    report = process_video(variables, src, dst, batch_size=batch_size, palette=palette,
                           max_depth=max_depth, max_frames=max_frames, progress=progress,
                           max_side=max_side, max_pixels=max_pixels)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"stopped by Ctrl-C: nothing written to {dst}", file=sys.stderr)
    return INTERRUPTED
  if report.interrupted:
    print(f"stopped by Ctrl-C: wrote the first {report.frames} frames to {dst}", file=sys.stderr)
    return INTERRUPTED
  print(f"wrote {report.frames} frames to {dst}: {report.fps:.2f} frames/s overall, "
        f"{report.model_fps:.2f} frames/s in the network (batch {batch_size})")
  return 0
