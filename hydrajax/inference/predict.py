"""Run a converted or trained model on image files and write pictures and raw maps.

    python -m hydrajax.inference.predict --weights nyud.npz photo.jpg frame.png --out preds/
    hydrajax-predict --weights nyud.npz --video in.mp4 --out out.mp4         (inference/video.py)
    hydrajax-predict --weights nyud.npz --camera 0 --out live.mp4 --smooth 0.5   (camera.py)
    hydrajax-predict --weights nyud.npz --bag in.bag --topic /cam/image_raw --out out.mcap   (bag.py)

Images larger than `--max-side` pixels (default 1280) on their long side go through the
network as a copy shrunk to that size (PIL bilinear, aspect kept); the outputs are upsampled
back to the input size in blocks of rows (`hydrajax.inference.full_res`), so a 4000x3000 photo needs
no full-size logits. `--max-side 0` runs the network at the input's own resolution (memory
then grows with the image: the network's activations at full size).

Per input `NAME.ext` it writes to the output directory:
- `NAME_vis.png`: input | colour-coded segmentation | colour-mapped depth [| normals];
- `NAME_segm.png`: class ids (uint8, or uint16 for > 256 classes), at the input size;
- `NAME_depth.png`: depth in millimetres, 16-bit (values above 65.535 m saturate);
- `NAME_normals.png` (3-task models): normals as RGB, (n + 1) / 2 * 255;
- with `--points`, `NAME.ply`: the metric point cloud (binary PLY: x, y, z float32 metres,
  the image's RGB, the class id `label` and its colour class_red/green/blue), from every
  pixel (every k-th row and column above `--max-side`). The camera's intrinsics come from
  `--intrinsics fx,fy,cx,cy` (pixels at the image's size), else `--fov DEG` (horizontal),
  else the weights' stored intrinsics, else the dataset's camera (NYUDv2's Kinect for 40
  classes, KITTI's P2 for 6), each rescaled to the image; the choice is printed.
`--onnx model.onnx` runs an exported graph (float or int8, `hydrajax-export --format onnx
[--int8]`) with onnxruntime instead of weights, `--onnx model.xml` an OpenVINO IR (`--format
openvino`) with OpenVINO (`--runtime auto`: the fastest installed runtime for the file): the
same files, at the graph's fixed input size in place of `--max-side`
(hydrajax/inference/onnx_runner.py); no `--points`.
Images are read by `hydrajax.data.pngio.load_rgb`: any mode (palette, CMYK, grey, 16-bit) as
RGB, EXIF orientation applied, and files above `--max-pixels` (width x height, read from the
header) refused before decoding. A missing, unreadable, oversized file, or one the network runs
out of memory on (named with its size), is reported by name; the other images are still
processed and the command exits with status 1 at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from hydrajax import api, weights
from hydrajax.data import pngio
from hydrajax.runtime import atomic
from hydrajax.inference import bag
from hydrajax.inference import full_res
from hydrajax.inference import exported
from hydrajax.inference import onnx_runner
from hydrajax.inference import points as points_lib
from hydrajax.runtime import cpu
from hydrajax.inference import video
from hydrajax.inference import visualize

@dataclasses.dataclass
class PredictReport:
  """written: input path -> files written; failed: input path -> error message."""
  written: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)


def load_image(path: str | os.PathLike, *,
               max_pixels: int = pngio.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Read an image file as (H, W, 3) RGB uint8 (`pngio.load_rgb`); errors (ValueError) name
  the file."""
  return pngio.load_rgb(path, max_pixels=max_pixels)


def _write_png(path: str, array: np.ndarray) -> None:
  """Write a PNG atomically; uint16 2-D arrays as 16-bit grey."""
  img = Image.fromarray(np.ascontiguousarray(array))  # uint16 (H, W) -> mode "I;16"
  atomic.write_atomic(path, lambda f: img.save(f, format="PNG"))


def predict_files(variables: Mapping[str, Any], paths: Iterable[str | os.PathLike],
                  out_dir: str | os.PathLike, *, palette: str = "auto",
                  max_depth: float | None = None, progress: bool = True,
                  max_side: int = full_res.DEFAULT_MAX_SIDE,
                  intrinsics: points_lib.CameraChoice | None = None,
                  max_pixels: int = pngio.DEFAULT_MAX_PIXELS) -> PredictReport:
  """Predict every image in `paths` and write its files into `out_dir` (created).

  Images may have any size (each new size compiles the network once); above `max_side`
  pixels on the long side the network sees a shrunk copy (0: never), see
  `full_res.dense_predictions`. Files above `max_pixels` (width x height) are refused unread.
  With `intrinsics`, a PLY point cloud per image too. `variables` may be an
  `onnx_runner.ExportedModel` instead of weights (then `max_side` does not apply). Failures
  (unreadable files, out of memory)
  do not stop the loop; they are collected in the returned report by input path.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  colours, clip = onnx_runner.display_settings(variables, palette, max_depth)
  report, used_stems = PredictReport(), set()
  paths = [os.fspath(p) for p in paths]
  for path in tqdm(paths, desc="predict", unit="image", disable=not progress):
    try:
      image = load_image(path, max_pixels=max_pixels)
    except ValueError as e:
      report.failed[path] = str(e)
      continue
    try:
      if isinstance(variables, onnx_runner.ExportedModel):
        outputs = variables.dense_predictions(image)
      else:
        outputs = full_res.dense_predictions(variables, image, max_side=max_side)
    except Exception as e:  # noqa: BLE001 - only out-of-memory is caught, the rest re-raised
      if not full_res.is_out_of_memory(e):
        raise
      h, w = image.shape[:2]
      sh, sw = full_res.working_size((h, w), max_side)
      report.failed[path] = (f"{path}: out of memory for a {w}x{h} image (network input "
                             f"{sw}x{sh}); lower --max-side")
      continue
    stem = _unique_stem(os.path.splitext(os.path.basename(path))[0], used_stems)
    written = []
    for suffix, array in visualize.render(image, outputs, colours, clip).items():
      target = os.path.join(out_dir, f"{stem}_{suffix}.png")
      _write_png(target, array)
      written.append(target)
    if intrinsics is not None:
      written.append(_write_points(os.path.join(out_dir, f"{stem}.ply"), image, outputs,
                                   intrinsics, colours, max_side))
    report.written[path] = written
  return report


def _write_points(target: str, image: np.ndarray, outputs: Mapping[str, np.ndarray],
                  intrinsics: points_lib.CameraChoice, colours: np.ndarray,
                  max_side: int) -> str:
  """Back-project one image's predicted depth and write `target` (.ply); returns it."""
  height, width = image.shape[:2]
  stride = max(1, -(-max(height, width) // max_side)) if max_side > 0 else 1
  cloud = points_lib.points(outputs["depth"], intrinsics.for_image(height, width), colors=image,
                            labels=outputs.get("segm"), stride=stride)
  points_lib.write_ply(target, cloud, colours if "segm" in outputs else None)
  return target


def _unique_stem(stem: str, used: set[str]) -> str:
  """Same-named inputs from different folders get _1, _2, ... instead of overwriting."""
  candidate, i = stem, 0
  while candidate in used:
    i += 1
    candidate = f"{stem}_{i}"
  used.add(candidate)
  return candidate


def build_parser() -> argparse.ArgumentParser:
  """The CLI's arguments (kept separate so other inputs, e.g. video, can be added)."""
  parser = argparse.ArgumentParser(  # prog: the name it was run by
      description="Predict segmentation and depth for images with hydrajax weights.")
  weights.add_source_args(parser, onnx=True)
  parser.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...)")
  parser.add_argument("--out", default=None,
                      help="output directory (a file for --video, --camera, --bag)")
  parser.add_argument("--palette", default="auto", choices=visualize.PALETTE_CHOICES,
                      help="segmentation colours (auto: the weights' own, else by number of "
                           "classes)")
  parser.add_argument("--max-depth", type=float, default=None,
                      help="depth colour-map clip in metres (default 8 NYUD, 80 KITTI, 10 other)")
  parser.add_argument("--max-side", type=int, default=full_res.DEFAULT_MAX_SIDE,
                      help="run the network on a copy of at most this many pixels on the "
                           "long side; outputs are still at the input size (default "
                           f"{full_res.DEFAULT_MAX_SIDE}; 0 = the input's own size)")
  parser.add_argument("--max-pixels", type=int, default=pngio.DEFAULT_MAX_PIXELS,
                      help="refuse image files with more pixels (width x height) than this, "
                           f"before decoding them (default {pngio.DEFAULT_MAX_PIXELS})")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  parser.add_argument("--points", action="store_true",
                      help="also write NAME.ply: the metric point cloud (needs plyfile: "
                           'pip install -e ".[points]")')
  parser.add_argument("--intrinsics", default=None, metavar="FX,FY,CX,CY",
                      help="camera intrinsics in pixels at the images' size, for --points")
  parser.add_argument("--fov", type=float, default=None, metavar="DEG",
                      help="horizontal field of view in degrees, for --points (used when "
                           "--intrinsics is not given)")
  parser.add_argument("--video", default=None,
                      help="input video: write the visualisation video to --out (a .mp4 file)")
  parser.add_argument("--camera", type=int, default=None, metavar="N",
                      help="live camera N (/dev/videoN): record the visualisation video to "
                           "--out (a .mp4 file) until --max-frames or Ctrl-C")
  parser.add_argument("--smooth", type=float, default=0.0, metavar="S",
                      help="with --camera: temporal smoothing of depth and labels, the weight "
                           "of the past in [0, 1) (default 0: off)")
  video.add_video_args(parser)
  bag.add_bag_args(parser)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.out is None and not args.foxglove:
    parser.error("the following arguments are required: --out")
  try:
    if not args.onnx:
      args.weights = weights.choose(args.weights, args.workdir)
    elif args.points:
      raise ValueError("--points needs weights (--weights or --workdir), not --onnx")
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.camera is not None and (args.images or args.video is not None):
    print("error: give either --camera or images/--video, not both", file=sys.stderr)
    return 2
  if args.video is not None and args.images:
    print("error: give either --video or images, not both", file=sys.stderr)
    return 2
  if args.bag is not None or args.foxglove:
    return bag.run(args)
  if args.camera is not None:
    from hydrajax.inference import camera
    return camera.run(args.weights, args.camera, args.out, onnx=args.onnx, runtime=args.runtime,
                      smooth=args.smooth, max_frames=args.max_frames, palette=args.palette,
                      max_depth=args.max_depth, progress=not args.no_progress,
                      max_side=args.max_side)
  if args.video is not None:
    return video.run(args.weights, args.video, args.out, onnx=args.onnx, runtime=args.runtime,
                     batch_size=args.batch,
                     palette=args.palette, max_depth=args.max_depth,
                     max_frames=args.max_frames, progress=not args.no_progress,
                     max_side=args.max_side, max_pixels=args.max_pixels)
  if not args.images:
    print("error: no input images given", file=sys.stderr)
    return 2
  try:
    if args.max_depth is not None and not 0 < args.max_depth < float("inf"):
      raise ValueError(f"--max-depth must be a positive number of metres, got {args.max_depth}")
    if args.max_side < 0:
      raise ValueError(f"--max-side must be >= 0 pixels (0 = no limit), got {args.max_side}")
    if args.max_pixels < 1:
      raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
      raise ValueError(f"--out {args.out} is a file; give a directory for the predictions")
    variables = (exported.load(args.onnx, args.runtime, max_pixels=args.max_pixels)
                 if args.onnx
                 else weights.load(args.weights))
    intrinsics = None
    if args.points:
      if "depth" not in api.model_config(variables)["tasks"]:
        raise ValueError(f"--points needs depth: {args.weights} has no depth head")
      intrinsics = points_lib.camera_choice(variables, args.intrinsics, args.fov, args.weights)
    report = predict_files(variables, args.images, args.out, palette=args.palette,
                           max_depth=args.max_depth, progress=not args.no_progress,
                           max_side=args.max_side, intrinsics=intrinsics,
                           max_pixels=args.max_pixels)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote predictions for {len(report.written)} image(s) to {args.out}")
  for path, message in report.failed.items():
    print(f"failed: {message}", file=sys.stderr)
  return 1 if report.failed else 0


def cli() -> int:
  """The `hydrajax-predict` console script (and `python -m hydrajax predict`). A video or a
  camera is many runs of the network, so for one it first relaunches with huge pages
  (hydrajax/runtime/hugepages.py); a few images are not worth the second start-up. Either
  way it takes the fast CPU path (hydrajax/runtime/cpu.py)."""
  known = build_parser().parse_known_args()[0]
  if known.video is not None or known.camera is not None or known.bag is not None:
    cpu.tune_tool("hydrajax-predict", "hydrajax.inference.predict")
  else:
    cpu.fast_cpu()
  return main()


if __name__ == "__main__":
  sys.argv[0] = "python -m hydrajax.inference.predict"
  sys.exit(cli())
