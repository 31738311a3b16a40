"""Peak memory and wall time of `python -m hydrajax.inference.predict` on one 4000x3000 JPEG.

Fabricates the photo (smooth colour ramps plus noise, so it compresses like a photo) and a
40-class segm+depth model with random weights, then runs the CLI in a fresh subprocess per
setting (compile included, as a user sees it) and reports the child's peak RSS (ru_maxrss
from os.wait4, that process alone) and wall time:

  python benchmarks/predict_memory.py                  # --max-side 1280 (default) and 0
  python benchmarks/predict_memory.py --max-side 1280         # one setting
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fabricate_photo(path: str, height: int = 3000, width: int = 4000) -> None:
  """A JPEG of `height` x `width` with photo-like content."""
  rng = np.random.default_rng(0)
  y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
  x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
  image = np.empty((height, width, 3), np.uint8)
  for c, (fy, fx) in enumerate(((3.0, 2.0), (1.0, 5.0), (4.0, 1.5))):
    ramp = 0.5 + 0.4 * np.sin(2 * np.pi * (fy * y + fx * x))
    noise = rng.normal(0.0, 0.03, (height, width)).astype(np.float32)
    image[..., c] = np.clip((ramp + noise) * 255.0, 0, 255).astype(np.uint8)
  Image.fromarray(image).save(path, quality=90)


def run_predict(weights: str, photo: str, out_dir: str, max_side: int) -> dict:
  """One CLI run in a child process: its exit code, peak RSS (MB) and seconds."""
  cmd = [sys.executable, "-m", "hydrajax.inference.predict", "--weights", weights, photo,
         "--out", out_dir, "--no-progress", "--max-side", str(max_side)]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  # ru_maxrss is in kilobytes on Linux (bytes on macOS).
  scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
  return {"max_side": max_side, "exit_code": os.waitstatus_to_exitcode(status),
          "peak_rss_mb": round(usage.ru_maxrss * scale), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--max-side", type=int, nargs="+", default=[1280, 0],
                      help="settings to measure, one child process each (0 = full size)")
  args = parser.parse_args(argv)

  sys.path.insert(0, ROOT)
  import hydrajax

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    weights, photo = os.path.join(tmp, "model.npz"), os.path.join(tmp, "photo.jpg")
    hydrajax.save(weights, hydrajax.init(0, num_classes=40))
    fabricate_photo(photo)
    for max_side in args.max_side:
      rows.append(run_predict(weights, photo, os.path.join(tmp, f"out{max_side}"), max_side))

  print("python -m hydrajax.inference.predict on a 4000x3000 JPEG, 40 classes + depth, "
        f"{os.cpu_count()} CPUs")
  print("| --max-side | peak RSS | seconds | exit |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['max_side']} | {r['peak_rss_mb']} MB | {r['seconds']} | {r['exit_code']} |")


if __name__ == "__main__":
  main()
