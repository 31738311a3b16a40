"""`hydrajax-data check ROOT`: what a folder dataset holds and what is wrong, before training.

    hydrajax-data check /data/mine [--depth-scale 1000] [--val-fraction 0.1]
    python -m hydrajax.data.check /data/mine

One screen: images per split and how many have segmentation / depth / both / neither, the
class histogram (pixels and images per class, classes never seen, ids outside the classes),
depth range and percentiles in metres (with a hint when the scale looks wrong), then every
problem naming its file: unreadable files, labels of the wrong kind or size, orphans.
Exit status 1 when anything would stop training, else 0 (2 for a bad command line).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

import numpy as np

from hydrajax.data import folder
from hydrajax.data.pngio import BadSampleError

_DEPTH_SAMPLES = 4096  # valid depth pixels kept per frame for the percentiles


@dataclasses.dataclass
class Report:
  """The counts of `inspect`; `problems` (path, message) stop training, `warnings` not."""
  root: str
  splits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
  class_names: tuple[str, ...] = ()
  class_pixels: np.ndarray | None = None
  class_images: np.ndarray | None = None
  depth_values: np.ndarray | None = None
  problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.problems


def inspect(root: str, depth_scale: float = folder.DEFAULT_DEPTH_SCALE,
            val_fraction: float = 0.1, split_seed: int = 0) -> Report:
  """Reads every file of the folder (decoding it) and gathers the report."""
  report = Report(root)
  try:
    classes = folder.read_classes(root)
    folder.read_intrinsics(root)
  except folder.FolderError as e:
    report.problems.append(("", str(e)))
    classes = None
  try:
    found = folder.scan(root)
  except folder.FolderError as e:
    report.problems.append(("", str(e)))
    return report
  report.problems += found.problems
  report.problems += [(p, f"{p}: a label without an image (expected "
                          f"{folder._image_for(p)})") for p in found.orphans]
  if found.ignored:
    report.warnings.append(f"{len(found.ignored)} file(s) of other types ignored, e.g. "
                           f"{found.ignored[0]}")
  num = len(classes.names) if classes else 0
  report.class_names = classes.names if classes else ()
  pixels, images = np.zeros(256, np.int64), np.zeros(256, np.int64)
  depth = []
  outside: dict[int, str] = {}
  for split in folder.SPLITS:
    counts = dict.fromkeys(("images", "segm", "depth", "both", "neither"), 0)
    for f in folder.split_frames(found, split, val_fraction, split_seed):
      counts["images"] += 1
      counts["segm"] += f.segm is not None
      counts["depth"] += f.depth is not None
      counts["both"] += f.segm is not None and f.depth is not None
      counts["neither"] += f.segm is None and f.depth is None
      bad = folder.check_headers(f)
      if f.segm and classes is None:
        bad.append((f.segm, f"{f.segm}: segmentation labels need ROOT/classes.txt (one class "
                            f"name per line, in id order)"))
      report.problems += bad
      if bad:
        continue
      try:
        hw = folder.read_image(f.image).shape[:2]
        if f.segm:
          ids = folder.read_segm(f.segm, hw, classes)
          hist = np.bincount(ids.ravel(), minlength=256)
          pixels += hist
          images += hist > 0
          for v in np.flatnonzero(hist[:255]):
            if v >= num:
              outside.setdefault(int(v), f.segm)
        if f.depth:
          d = folder.read_depth(f.depth, hw, depth_scale)
          valid = d[d > 0]
          if valid.size > _DEPTH_SAMPLES:
            valid = np.random.default_rng(0).choice(valid, _DEPTH_SAMPLES, replace=False)
          depth.append(valid)
      except BadSampleError as e:
        report.problems.append((f.image, str(e)))
    report.splits[split] = counts
  for v, path in sorted(outside.items()):
    report.problems.append((path, f"{path}: class id {v} (and maybe others) is outside the "
                                  f"{num} classes of the classes file and not 255 (ignore)"))
  report.class_pixels, report.class_images = pixels, images
  report.depth_values = np.concatenate(depth) if depth else np.zeros(0, np.float32)
  if not found.has_val:
    report.warnings.append(f"no ROOT/val: validation is a seeded {val_fraction:.0%} of train "
                           f"(split_seed {split_seed})")
  return report


def depth_hint(values: np.ndarray, depth_scale: float) -> str | None:
  """A hint when the depth values look like another unit than metres."""
  if not values.size:
    return None
  median = float(np.median(values))
  if median > 100:
    return (f"median depth {median:.4g} m: is depth_scale {depth_scale:g} right? (16-bit "
            f"PNGs in millimetres need 1000; float files must be metres)")
  if median < 0.05:
    return (f"median depth {median:.4g} m: is depth_scale {depth_scale:g} too large, or are "
            f"the float files not in metres?")
  return None


def format_report(r: Report, depth_scale: float = folder.DEFAULT_DEPTH_SCALE,
                  max_lines: int = 12) -> str:
  """The one-screen text of a report."""
  lines = [f"folder {r.root}"]
  for split, c in r.splits.items():
    lines.append(f"  {split:<5} {c['images']:>6} images: {c['segm']} with segm, {c['depth']} "
                 f"with depth, {c['both']} both, {c['neither']} neither")
  if r.class_names and r.class_pixels is not None:
    total = max(int(r.class_pixels[:len(r.class_names)].sum()), 1)
    lines.append(f"  classes ({len(r.class_names)}): pixels (share) / images")
    cells = [f"{i:>3} {n[:14]:<14} {int(r.class_pixels[i]):>10} ({r.class_pixels[i] / total:5.1%})"
             f" / {int(r.class_images[i])}" for i, n in enumerate(r.class_names)]
    lines += [f"    {cell}" for cell in cells[:40]]
    if len(cells) > 40:
      lines.append(f"    ... {len(cells) - 40} more")
    never = [n for i, n in enumerate(r.class_names) if r.class_pixels[i] == 0]
    if never:
      lines.append(f"  never seen: {', '.join(never)}")
    lines.append(f"  ignored pixels (255): {int(r.class_pixels[255])}")
  if r.depth_values is not None and r.depth_values.size:
    p = np.percentile(r.depth_values, [1, 50, 99])
    lines.append(f"  depth (m): min {r.depth_values.min():.3g}, p1 {p[0]:.3g}, median "
                 f"{p[1]:.3g}, p99 {p[2]:.3g}, max {r.depth_values.max():.3g}")
    hint = depth_hint(r.depth_values, depth_scale)
    if hint:
      lines.append(f"  hint: {hint}")
  lines += [f"  note: {w}" for w in r.warnings]
  if r.problems:
    lines.append(f"  {len(r.problems)} problem(s) that stop training:")
    lines += [f"    {m}" for _, m in r.problems[:max_lines]]
    if len(r.problems) > max_lines:
      lines.append(f"    ... {len(r.problems) - max_lines} more")
  else:
    lines.append("  no problems: ready to train")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  c = sub.add_parser("check", help="report what a folder dataset holds and what is wrong")
  c.add_argument("root", help="the folder (ROOT/train/images, ...)")
  c.add_argument("--depth-scale", type=float, default=folder.DEFAULT_DEPTH_SCALE,
                 help="16-bit depth value per metre (default 1000: millimetres)")
  c.add_argument("--val-fraction", type=float, default=0.1,
                 help="without ROOT/val: the share of train used for validation")
  c.add_argument("--split-seed", type=int, default=0)
  c.add_argument("--all", action="store_true", help="list every problem, not the first 12")
  args = p.parse_args(argv)
  if not args.depth_scale > 0:
    print(f"error: --depth-scale must be positive, got {args.depth_scale}", file=sys.stderr)
    return 2
  report = inspect(args.root, args.depth_scale, args.val_fraction, args.split_seed)
  print(format_report(report, args.depth_scale, 10 ** 9 if args.all else 12))
  return 0 if report.ok else 1


def cli() -> int:
  """The `hydrajax-data` console script (`python -m hydrajax data`); the sub-command may be
  left out: `hydrajax-data ROOT`."""
  argv = sys.argv[1:]
  if argv and argv[0] not in ("check", "-h", "--help"):
    argv = ["check"] + argv
  return main(argv)


if __name__ == "__main__":
  sys.argv[0] = "python -m hydrajax.data.check"
  sys.exit(cli())
