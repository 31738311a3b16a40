"""`python -m hydrajax NAME [ARGS]`: every command-line tool by name, for places where the
console scripts (`hydrajax-NAME`) are not on PATH, such as notebooks and some clusters.

    python -m hydrajax predict --weights w.npz photo.jpg --out preds/
    python -m hydrajax NAME --help
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# name -> (module, entry function, what it does); each also installed as `hydrajax-NAME`
TOOLS = {
    "convert": ("hydrajax.convert.official", "main",
                "convert a PyTorch checkpoint to hydrajax weights (.npz)"),
    "predict": ("hydrajax.inference.predict", "cli",
                "predict on images, a video or a camera: pictures, depth, points"),
    "export": ("hydrajax.export.cli", "main", "export a graph: ONNX (float, int8) or StableHLO"),
    "distill": ("hydrajax.train.distill", "cli", "label a dataset's frames with a teacher"),
    "data": ("hydrajax.data.check", "cli", "check a folder dataset before training"),
    "demo": ("hydrajax.inference.demo", "cli", "the demo page on 127.0.0.1 (photos, webcam, 3D)"),
}
PROG = "python -m hydrajax"  # also hydrajax.runtime.hugepages.DISPATCHER


def usage() -> str:
  rows = "\n".join(f"  {name:8s} {text}" for name, (_, _, text) in TOOLS.items())
  return (f"usage: {PROG} NAME [ARGS]   (or hydrajax-NAME [ARGS])\n\ntools:\n{rows}\n\n"
          f"{PROG} NAME --help describes one.")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0 if argv else 2
  name = argv[0]
  if name not in TOOLS:
    print(f"error: no tool named {name!r}; expected one of {', '.join(TOOLS)} "
          f"({PROG} --help lists them)", file=sys.stderr)
    return 2
  module, function, _ = TOOLS[name]
  # The tool parses sys.argv and names itself after sys.argv[0] (its --help, its relaunch).
  sys.argv = [f"{PROG} {name}", *argv[1:]]
  return getattr(importlib.import_module(module), function)() or 0


if __name__ == "__main__":
  sys.exit(main())
