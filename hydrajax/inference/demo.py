"""hydrajax-demo: a local web page (Gradio) that runs the network on a photo or a webcam stream.

    pip install -e ".[demo]"     # in the hydrajax checkout
    hydrajax-demo --weights nyud.npz [--size 240x320] [--port 7860]
    hydrajax-demo --onnx nyud_int8.onnx      (an exported graph: int8 is the fastest on a CPU)

The page (served on 127.0.0.1 only; on a public Gradio link only with `--share`) shows the
segmentation over the picture with a legend of the classes in view, the depth colour map with
its scale in metres, the labelled metric point cloud in an interactive 3D view (a PLY file,
drawn as points), and the frames per second reached. Every frame is resized to one fixed size
(`--size`, default 240x320; an ONNX graph's own size) so the compiled network is reused and
the page stays interactive on a CPU. Uploads that are not images, uploads and webcam frames
larger than `--max-pixels`, get a message on the page instead of outputs. The webcam tab has a
temporal smoothing slider (off by default; `hydrajax.inference.camera.Smoother`). Each browser
tab has its own state (`Session`); the point cloud files live in a work folder removed when
the demo closes, and Gradio's cache of uploads and pictures is trimmed as the page runs
(`DELETE_CACHE`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import os
import shutil
import sys
import tempfile
import time
import weakref
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hydrajax import api
from hydrajax.data import pngio
from hydrajax.inference import camera
from hydrajax.inference import exported
from hydrajax.inference import onnx_runner
from hydrajax.inference import points as points_lib
from hydrajax.inference import visualize

DEFAULT_SIZE = (240, 320)  # (H, W) the network runs at
DEFAULT_MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding
OVERLAY_ALPHA = 0.5  # weight of the class colour in the segmentation overlay
FALLBACK_FOV = 60.0  # degrees, for webcams of models without stored or dataset intrinsics
POINT_STRIDE = 2  # every 2nd row and column of the working size goes into the 3D view
CLOUD_EVERY = 10  # the webcam's 3D view reloads every 10th frame: one per frame stalls the page
# Gradio's cache holds every upload and every picture shown (two per webcam frame): every
# minute, the files older than 10 minutes (long shown by then) are deleted, and all of them
# when the server stops.
DELETE_CACHE = (60, 600)


class InputError(ValueError):
  """An upload the demo cannot use; its message is shown on the page."""


def class_names(variables: Mapping[str, Any], num_classes: int) -> list[str]:
  """Class names from the weights metadata, else the dataset's for 40 (NYUDv2) or 6 (KITTI-6)
  classes, else "class i"."""
  stored = ((variables.get(api.META_KEY) or {}).get("class_names")
            if isinstance(variables, Mapping) else None)
  if stored and len(stored) == num_classes:
    return [str(n) for n in stored]
  from hydrajax.data.kitti import KITTI6_CLASSES
  from hydrajax.data.nyud import NYUD40_CLASSES
  known = {len(NYUD40_CLASSES): NYUD40_CLASSES, len(KITTI6_CLASSES): KITTI6_CLASSES}
  return list(known.get(num_classes, [f"class {i}" for i in range(num_classes)]))


def read_upload(path: str | os.PathLike | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """An uploaded file -> (H, W, 3) uint8 RGB, read as predict reads files (`pngio.load_rgb`:
  any mode, EXIF orientation, the size checked from the header before decoding); InputError
  naming the file for a missing, non-image or too large file."""
  if path is None:
    raise InputError("no image: upload a photo (PNG, JPEG, ...) or start the webcam")
  path = os.fspath(path)
  try:
    return pngio.load_rgb(path, max_pixels=max_pixels)
  except ValueError as e:  # the upload's temporary folder means nothing to the user
    raise InputError(str(e).replace(path, os.path.basename(path))) from None


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, 3) uint8 -> (h, w, 3) uint8 (PIL bilinear; the aspect follows `size`)."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """(h, w, 3) uint8 image and (h, w) class ids -> the class colours blended over the image
  with weight `alpha` (rounded to uint8)."""
  colours = visualize.colorize_segm(labels, palette).astype(np.float32)
  return np.round(alpha * colours + (1 - alpha) * image.astype(np.float32)).astype(np.uint8)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def depth_panel(depth: np.ndarray, max_depth: float, bar_width: int = 16) -> np.ndarray:
  """(h, w) metres -> (h, w + scale, 3) uint8: the plasma colour map (0 .. max_depth m) and a
  vertical colour bar labelled in metres (near at the top, as the colours run)."""
  h = depth.shape[0]
  colours = visualize.colorize_depth(depth, max_depth)
  ramp = np.linspace(0.0, max_depth, h)[:, None].repeat(bar_width, axis=1)
  bar = visualize.colorize_depth(ramp, max_depth)
  font = _font(max(9, min(14, h // 16)))
  label_width = 44
  canvas = Image.new("RGB", (colours.shape[1] + 6 + bar_width + label_width, h), "white")
  canvas.paste(Image.fromarray(colours), (0, 0))
  x0 = colours.shape[1] + 6
  canvas.paste(Image.fromarray(bar), (x0, 0))
  draw = ImageDraw.Draw(canvas)
  ticks = np.linspace(0.0, max_depth, 5)
  for t in ticks:
    y = int(round(t / max_depth * (h - 1)))
    draw.line([(x0 + bar_width, y), (x0 + bar_width + 3, y)], fill="black")
    draw.text((x0 + bar_width + 5, min(max(y - 6, 0), h - 12)), f"{t:g} m", fill="black",
              font=font)
  return np.asarray(canvas)


def legend_html(labels: np.ndarray, palette: np.ndarray, names: Sequence[str],
                limit: int = 12) -> str:
  """HTML swatches of the classes in `labels`, largest area first (at most `limit`)."""
  ids, counts = np.unique(labels, return_counts=True)
  order = np.argsort(-counts, kind="stable")[:limit]
  items = []
  for i in order:
    c = int(ids[i])
    r, g, b = (int(v) for v in palette[c])
    share = 100.0 * counts[i] / labels.size
    items.append(f'<span class="hj-class" data-class="{c}" style="display:inline-block;'
                 f'margin:2px 8px 2px 0"><span style="display:inline-block;width:12px;'
                 f'height:12px;background:rgb({r},{g},{b});border:1px solid #444;'
                 f'vertical-align:middle"></span> {html.escape(names[c])} {share:.0f}%</span>')
  return '<div id="hj-legend-items">' + "".join(items) + "</div>"


@dataclasses.dataclass
class Frame:
  """One processed frame: the resized input (h, w, 3), class ids (h, w), depth (h, w) metres,
  seconds in the network."""
  image: np.ndarray
  labels: np.ndarray
  depth: np.ndarray
  seconds: float


class Engine:
  """The network at one fixed input size: `hydrajax.apply` (compiled once for (1, h, w, 3)),
  or an exported graph (`onnx_runner.ExportedModel`, e.g. int8) at the graph's own size."""

  def __init__(self, model: Mapping[str, Any] | onnx_runner.ExportedModel,
               size: tuple[int, int] = DEFAULT_SIZE):
    self.onnx = isinstance(model, onnx_runner.ExportedModel)
    cfg = model.config() if self.onnx else api.model_config(model)
    missing = {"segm", "depth"} - set(cfg["tasks"])
    if missing:
      raise ValueError(f"the demo needs segmentation and depth; the model lacks "
                       f"{sorted(missing)}")
    size = model.size if self.onnx else tuple(size)
    if min(size) < 16:
      raise ValueError(f"--size must be at least 16x16 pixels, got {size[0]}x{size[1]}")
    self.model, self.size = model, size
    self.num_classes = cfg["num_classes"]

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """(H, W, 3) image -> (the (h, w, 3) image the network saw, its outputs as
    `hydrajax.apply` gives them: "segm" logits (h, w, C), "depth" (h, w) metres; seconds)."""
    small = resize_to(np.ascontiguousarray(image[..., :3]), self.size)
    start = time.perf_counter()
    if self.onnx:
      out = {k: v[0] for k, v in self.model(small[None]).items()}
    else:
      out = jax.block_until_ready(api.apply(self.model, small))
    seconds = time.perf_counter() - start
    return small, {k: np.asarray(v) for k, v in out.items()}, seconds


class Session:
  """One browser tab's state (a gr.State for each of its upload and webcam handlers, which
  may run at once): the webcam's frame count, frame times and smoother, and the point cloud
  file the tab shows, removed when the next one replaces it or the session ends."""

  def __init__(self):
    self.count, self.times, self.smoother, self.ply = 0, [], camera.Smoother(0.0), None

  def show(self, ply: str | None) -> None:
    """`ply` is now the tab's file (None: it keeps its current one); the old one is removed
    (Gradio has copied it to its cache when the event that returned it ended)."""
    if ply is not None:
      old, self.ply = self.ply, ply
      _remove(old)

  def close(self) -> None:
    _remove(self.ply)
    self.ply = None


def _remove(path: str | None) -> None:
  if path:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _error_html(error: Exception) -> str:
  return f'<span id="hj-error">{html.escape(str(error))}</span>'


class Demo:
  """The page's logic, without Gradio: turns an image into the page's outputs."""

  def __init__(self, variables: Mapping[str, Any] | onnx_runner.ExportedModel, *,
               size: tuple[int, int] = DEFAULT_SIZE,
               intrinsics: str | None = None, fov: float | None = None,
               max_depth: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               workdir: str | None = None, weights_name: str = "weights"):
    if max_pixels < 1:
      raise ValueError(f"--max-pixels must be >= 1, got {max_pixels}")
    self.engine = Engine(variables, size)
    h, w = self.engine.size
    if h * w > max_pixels:  # checked before the network is ever run at that size
      what = f"{variables.path}: the graph's input" if self.engine.onnx else "--size"
      raise ValueError(f"{what} {w}x{h} = {w * h} pixels is above --max-pixels {max_pixels}")
    self.palette, self.max_depth = onnx_runner.display_settings(variables, "auto", max_depth)
    self.names = class_names(variables, self.engine.num_classes)
    self.camera = points_lib.camera_choice(variables, intrinsics, fov, weights_name,
                                           fallback_fov=FALLBACK_FOV)
    self.max_pixels = max_pixels
    self.workdir = workdir
    if workdir is None:  # ours: removed by close(), or at exit
      self.workdir = tempfile.mkdtemp(prefix="hydrajax-demo-")
      self._cleanup = weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)

  def close(self) -> None:
    """Removes the work folder the demo made (not one it was given)."""
    if hasattr(self, "_cleanup"):
      self._cleanup()

  def process(self, image: np.ndarray, smoother: camera.Smoother | None = None, *,
              cloud: bool = True) -> dict[str, Any]:
    """(H, W, 3) uint8 -> {"overlay", "depth" (images), "legend" (HTML), "ply" (the path of
    a new file in the work folder; None without `cloud`), "frame" (Frame), "intrinsics" (used,
    at the working size), "camera" (their description, at the image's size)}. `smoother` (a
    webcam stream's) averages depth and logits over the frames it has seen. InputError for
    an image above `max_pixels`."""
    h, w = image.shape[:2]
    if h * w > self.max_pixels:
      raise InputError(f"a {w}x{h} frame ({w * h} pixels) is above --max-pixels "
                       f"{self.max_pixels}")
    small, out, seconds = self.engine(image)
    if smoother is not None:
      out = smoother(out)
    frame = Frame(small, out["segm"].argmax(-1), out["depth"], seconds)
    chosen = self.camera.for_image(h, w)
    k = chosen.scaled(*frame.depth.shape)
    ply = None
    if cloud:
      points = points_lib.points(frame.depth, k, labels=frame.labels, stride=POINT_STRIDE)
      # Shown with the class colours, y up (the viewer's convention: the photo's way up).
      points.colors = self.palette[np.clip(points.labels, 0, len(self.palette) - 1)]
      points.xyz = points.xyz * np.array([1, -1, 1], np.float32)
      fd, ply = tempfile.mkstemp(prefix="cloud_", suffix=".ply", dir=self.workdir)
      os.close(fd)  # a name no other call or tab gets
      points_lib.write_ply(ply, points, self.palette)
    return {"overlay": overlay(frame.image, frame.labels, self.palette),
            "depth": depth_panel(frame.depth, self.max_depth),
            "legend": legend_html(frame.labels, self.palette, self.names),
            "ply": ply, "frame": frame, "intrinsics": k, "camera": chosen.describe()}

  def upload(self, path: str | os.PathLike | None, session: Session | None
             ) -> tuple[dict[str, Any] | None, str, Session]:
    """The Photo tab: (`process`'s outputs, or None for a bad upload; the status or error
    HTML; the tab's session)."""
    session = session or Session()
    try:
      out = self.process(read_upload(path, self.max_pixels))
    except InputError as e:
      return None, _error_html(e), session
    session.show(out["ply"])
    return out, self.status(out, None, 1), session

  def webcam_frame(self, image: np.ndarray, strength: float, session: Session | None
                   ) -> tuple[dict[str, Any] | None, str, Session]:
    """The Webcam tab, one frame: as `upload`; the point cloud is made for every
    CLOUD_EVERY-th frame only (the frames whose cloud the page shows), else "ply" is None."""
    session = session or Session()
    if session.smoother.strength != strength:
      session.smoother = camera.Smoother(float(strength))
    session.count += 1
    session.times = (session.times + [time.perf_counter()])[-20:]
    try:
      out = self.process(np.asarray(image), session.smoother,
                         cloud=session.count % CLOUD_EVERY == 1)
    except InputError as e:
      return None, _error_html(e), session
    session.show(out["ply"])
    times = session.times
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    return out, self.status(out, fps, session.count, session.smoother.strength), session

  def status(self, out: Mapping[str, Any], fps: float | None, frames: int,
             smoothing: float = 0.0) -> str:
    """The status line of one `process` output (its own intrinsics, not another tab's)."""
    frame, (h, w) = out["frame"], self.engine.size
    rate = f"{fps:.1f} frames/s over {frames} frames" if fps else f"{frames} frame(s)"
    if smoothing:
      rate += f" · smoothing {smoothing:g}"
    return (f'<span id="hj-status" data-frames="{frames}">network {frame.seconds * 1000:.0f} ms '
            f'at {w}x{h} · {rate} · intrinsics: {html.escape(out["camera"])}</span>')


def share_requested(environ: Mapping[str, str] = os.environ) -> str | None:
  """What asks Gradio to share the page on a public link by itself when launch() is not
  given `share` (GRADIO_SHARE=true, a Kaggle or SageMaker notebook, Colab); None if nothing."""
  if environ.get("GRADIO_SHARE", "").lower() == "true":
    return "GRADIO_SHARE=true"
  if environ.get("KAGGLE_KERNEL_RUN_TYPE"):
    return "Kaggle"
  if os.path.exists("/home/ec2-user/SageMaker"):
    return "SageMaker"
  if "google.colab" in sys.modules:
    return "Colab"
  return None


def build(demo: Demo, *, stream_every: float = 0.2):
  """The Gradio Blocks of the page (not launched)."""
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
  import gradio as gr

  def on_upload(path, session):
    out, status, session = demo.upload(path, session)
    if out is None:
      return None, None, None, "", status, session
    return out["overlay"], out["depth"], out["ply"], out["legend"], status, session

  def on_frame(image, strength, session):
    if image is None:
      return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), session
    out, status, session = demo.webcam_frame(image, strength, session)
    if out is None:
      return gr.skip(), gr.skip(), gr.skip(), gr.skip(), status, session
    ply = out["ply"] if out["ply"] is not None else gr.skip()
    return out["overlay"], out["depth"], ply, out["legend"], status, session

  def end_session(session):  # Gradio deletes a closed tab's state, calling this on it
    if session is not None:
      session.close()

  with gr.Blocks(title="hydrajax: segmentation, depth and 3D", delete_cache=DELETE_CACHE) as page:
    gr.Markdown("## hydrajax: semantic segmentation + metric depth, in 3D\n"
                "Upload a photo or stream the webcam. Everything runs on this machine.")
    with gr.Row():
      with gr.Column(scale=1):
        with gr.Tab("Photo"):
          upload = gr.File(label="photo", file_types=["image"], type="filepath",
                           elem_id="hj-upload")
        with gr.Tab("Webcam", elem_id="hj-webcam-tab"):
          webcam = gr.Image(label="webcam", sources=["webcam"], streaming=True, type="numpy",
                            elem_id="hj-webcam")
          smooth = gr.Slider(0.0, 0.9, value=0.0, step=0.1, elem_id="hj-smooth",
                             label="temporal smoothing: weight of the past frames (0 = off)")
        status = gr.HTML(elem_id="hj-status-box")
        legend = gr.HTML(elem_id="hj-legend")
      with gr.Column(scale=2):
        with gr.Row():
          segm = gr.Image(label="segmentation", format="png", elem_id="hj-segm",
                          interactive=False, height=260)
          depth = gr.Image(label="depth (m)", format="png", elem_id="hj-depth",
                           interactive=False, height=260)
        cloud = gr.Model3D(label="point cloud (metres, class colours)", elem_id="hj-3d",
                           height=360, interactive=False, clear_color=(0.08, 0.08, 0.1, 1.0),
                           camera_position=(-60, 70, None))
    # One state per tab and handler (the two handlers run at once: separate queues).
    photo_session = gr.State(None, delete_callback=end_session)
    webcam_session = gr.State(None, delete_callback=end_session)
    outputs = [segm, depth, cloud, legend, status]
    upload.change(on_upload, inputs=[upload, photo_session], outputs=outputs + [photo_session],
                  concurrency_limit=1)
    webcam.stream(on_frame, inputs=[webcam, smooth, webcam_session],
                  outputs=outputs + [webcam_session], stream_every=stream_every,
                  concurrency_limit=1)
  return page


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  from hydrajax import weights
  weights.add_source_args(parser, onnx=True)
  parser.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}",
                      help="HxW the network runs at (default %(default)s; an --onnx graph "
                           "runs at its own size)")
  parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
  parser.add_argument("--intrinsics", default=None, metavar="FX,FY,CX,CY",
                      help="camera intrinsics in pixels at the uploaded images' size")
  parser.add_argument("--fov", type=float, default=None, metavar="DEG",
                      help="horizontal field of view in degrees (default: the weights' "
                           f"intrinsics, the dataset's camera, else {FALLBACK_FOV:g})")
  parser.add_argument("--max-depth", type=float, default=None,
                      help="depth colour-map clip in metres (default 8 NYUD, 80 KITTI)")
  parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="largest upload or webcam frame in pixels (default %(default)s)")
  parser.add_argument("--share", action="store_true",
                      help="also serve the page on a public Gradio link (off unless given, "
                           "even where GRADIO_SHARE, Kaggle or SageMaker ask for one)")
  return parser


def parse_size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"--size must be HxW in pixels, e.g. 240x320, got {text!r}") from None
  return h, w


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    import gradio  # noqa: F401
  except ImportError:
    print('error: the demo needs Gradio: pip install -e ".[demo]" in the hydrajax checkout',
          file=sys.stderr)
    return 2
  from hydrajax import weights
  try:
    if args.max_pixels < 1:
      raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.onnx:
      variables = exported.load(args.onnx, args.runtime, max_pixels=args.max_pixels)
      name = args.onnx
    else:
      name = weights.choose(args.weights, args.workdir)
      variables = weights.load(name)
    demo = Demo(variables, size=parse_size(args.size), intrinsics=args.intrinsics, fov=args.fov,
                max_depth=args.max_depth, max_pixels=args.max_pixels,
                weights_name=name)
    demo.engine(np.zeros(demo.engine.size + (3,), np.uint8))  # compile before serving
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  asked = share_requested()
  if asked and not args.share:
    print(f"note: {asked} asks Gradio for a public link; the page stays on 127.0.0.1 "
          f"(--share to share it)", file=sys.stderr)
  try:
    build(demo).launch(server_name="127.0.0.1", server_port=args.port, share=args.share,
                       max_file_size="100mb", show_error=True)
  except (OSError, ValueError) as e:  # a busy port; a notebook that needs a public link
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    demo.close()
  return 0


def cli() -> int:
  """The `hydrajax-demo` console script (`python -m hydrajax demo`): a server that runs the
  network on every frame, so it tunes its process first (runtime/cpu.py)."""
  from hydrajax.runtime import cpu
  cpu.tune_tool("hydrajax-demo", "hydrajax.inference.demo")
  return main()


if __name__ == "__main__":
  sys.argv[0] = "python -m hydrajax.inference.demo"
  sys.exit(cli())
