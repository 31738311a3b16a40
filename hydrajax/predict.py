"""Run a converted or trained model on image files and write pictures and raw maps.

    python -m hydrajax.predict --weights nyud.npz photo.jpg frame.png --out preds/

Per input `NAME.ext` it writes to the output directory:
- `NAME_vis.png`: input | colour-coded segmentation | colour-mapped depth [| normals];
- `NAME_segm.png`: class ids (uint8, or uint16 for > 256 classes), at the input size;
- `NAME_depth.png`: depth in millimetres, 16-bit (values above 65.535 m saturate);
- `NAME_normals.png` (3-task models): normals as RGB, (n + 1) / 2 * 255.
A missing or unreadable file is reported by name; the other images are still processed and
the command exits with status 1 at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from hydrajax import api, video, visualize, weights

DEFAULT_MAX_DEPTH = {"nyud": 8.0, "kitti": 80.0, "generic": 10.0}  # metres, display clip


@dataclasses.dataclass
class PredictReport:
  """written: input path -> files written; failed: input path -> error message."""
  written: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)


def load_image(path: str | os.PathLike) -> np.ndarray:
  """Read a PNG/JPEG/... file as (H, W, 3) RGB uint8; errors name the file."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ValueError(f"{path}: a directory, not an image file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from e


def display_settings(variables: Mapping[str, Any], palette: str = "auto",
                     max_depth: float | None = None) -> tuple[np.ndarray, float]:
  """(palette array, depth clip in metres) for a model: NYUD colours and 8 m for 40 classes,
  KITTI colours and 80 m for 6, a generic palette and 10 m otherwise, unless overridden."""
  num_classes = api.model_config(variables)["num_classes"]
  name = palette if palette != "auto" else {40: "nyud", 6: "kitti"}.get(num_classes, "generic")
  colours = visualize.palette_for(max(num_classes, 1), name)
  return colours, float(max_depth if max_depth is not None else DEFAULT_MAX_DEPTH[name])


def render(image: np.ndarray, outputs: Mapping[str, np.ndarray], palette: np.ndarray,
           max_depth: float) -> dict[str, np.ndarray]:
  """Image-resolution outputs of `hydrajax.apply` -> images to save, keyed by file suffix:
  "vis" (side by side), "segm" (label ids), "depth" (uint16 mm), "normals" (RGB)."""
  panels, files = [image], {}
  if "segm" in outputs:
    labels = np.asarray(outputs["segm"]).argmax(-1)
    files["segm"] = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    panels.append(visualize.colorize_segm(labels, palette))
  if "depth" in outputs:
    depth = np.asarray(outputs["depth"], np.float64)
    files["depth"] = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    panels.append(visualize.colorize_depth(depth, max_depth))
  if "normals" in outputs:
    files["normals"] = visualize.colorize_normals(outputs["normals"])
    panels.append(files["normals"])
  files["vis"] = visualize.side_by_side(*panels)
  return files


def _write_png(path: str, array: np.ndarray) -> None:
  """Write a PNG atomically (temp file + rename); uint16 2-D arrays as 16-bit grey."""
  img = Image.fromarray(np.ascontiguousarray(array))  # uint16 (H, W) -> mode "I;16"
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def predict_files(variables: Mapping[str, Any], paths: Iterable[str | os.PathLike],
                  out_dir: str | os.PathLike, *, palette: str = "auto",
                  max_depth: float | None = None, progress: bool = True) -> PredictReport:
  """Predict every image in `paths` and write its files into `out_dir` (created).

  Images may have any size (each new size compiles the network once). Failures do not stop
  the loop; they are collected in the returned report by input path.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  colours, clip = display_settings(variables, palette, max_depth)
  report, used_stems = PredictReport(), set()
  paths = [os.fspath(p) for p in paths]
  for path in tqdm(paths, desc="predict", unit="image", disable=not progress):
    try:
      image = load_image(path)
    except (OSError, ValueError) as e:
      report.failed[path] = str(e)
      continue
    outputs = {k: np.asarray(v) for k, v in api.apply(variables, image).items()}
    stem = _unique_stem(os.path.splitext(os.path.basename(path))[0], used_stems)
    written = []
    for suffix, array in render(image, outputs, colours, clip).items():
      target = os.path.join(out_dir, f"{stem}_{suffix}.png")
      _write_png(target, array)
      written.append(target)
    report.written[path] = written
  return report


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
  parser = argparse.ArgumentParser(
      prog="python -m hydrajax.predict",
      description="Predict segmentation and depth for images with hydrajax weights.")
  parser.add_argument("--weights", required=True,
                      help="hydrajax weights (.npz from hydrajax.convert or training)")
  parser.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--palette", default="auto", choices=("auto", "nyud", "kitti", "generic"),
                      help="segmentation colours (auto: by number of classes)")
  parser.add_argument("--max-depth", type=float, default=None,
                      help="depth colour-map clip in metres (default 8 NYUD, 80 KITTI, 10 other)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  parser.add_argument("--video", default=None,
                      help="input video: write the visualisation video to --out (a .mp4 file)")
  video.add_video_args(parser)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.video is not None:
    if args.images:
      print("error: give either --video or images, not both", file=sys.stderr)
      return 2
    return video.run(args.weights, args.video, args.out, batch_size=args.batch,
                     palette=args.palette, max_depth=args.max_depth,
                     max_frames=args.max_frames, progress=not args.no_progress)
  if not args.images:
    print("error: no input images given", file=sys.stderr)
    return 2
  try:
    if args.max_depth is not None and not 0 < args.max_depth < float("inf"):
      raise ValueError(f"--max-depth must be a positive number of metres, got {args.max_depth}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
      raise ValueError(f"--out {args.out} is a file; give a directory for the predictions")
    variables = weights.load(args.weights)
    report = predict_files(variables, args.images, args.out, palette=args.palette,
                           max_depth=args.max_depth, progress=not args.no_progress)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote predictions for {len(report.written)} image(s) to {args.out}")
  for path, message in report.failed.items():
    print(f"failed: {message}", file=sys.stderr)
  return 1 if report.failed else 0


if __name__ == "__main__":
  sys.exit(main())
