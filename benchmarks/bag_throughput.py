"""Frames per second of `hydrajax-predict --bag` against `--video` on the same frames.

    python benchmarks/bag_throughput.py [--frames 48] [--rounds 1] [--out benchmarks/results/bag_throughput.json]

Fabricates FRAMES 480x640 frames (smooth moving gradients), writes them as an MCAP bag
(sensor_msgs/Image rgb8 with CameraInfo, rosbags) and as an H.264 video, makes a random 40-class
model (weights and its int8 ONNX export, calibrated on some of the frames), then runs each
variant as its own `python -m hydrajax predict` process, variants alternating within a round:
bag / video, float weights / `--onnx` int8, and the bag with `--points`. Each reports the
tool's own frames/s (wall time of its loop: decode, network, outputs, writing; the first
batch's compile included, alike for all) and the process's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
H, W = 480, 640


def frames(n: int) -> list[np.ndarray]:
  y, x = np.mgrid[0:H, 0:W]
  return [np.stack([(x // 2 + 8 * t) % 256, (y // 2) % 256, np.full_like(x, (40 + 5 * t) % 256)],
                   -1).astype(np.uint8) for t in range(n)]


def write_inputs(work: str, clip: list[np.ndarray]) -> tuple[str, str]:
  import imageio.v2 as imageio_v2
  from rosbags.rosbag2 import StoragePlugin, Writer
  from hydrajax.inference import rosmsg, roslog
  ts = roslog.typestore(False)
  with Writer(os.path.join(work, "bag"), version=9, storage_plugin=StoragePlugin.MCAP) as w:
    img = w.add_connection("/cam/image_raw", rosmsg.IMAGE, typestore=ts)
    info = w.add_connection("/cam/camera_info", rosmsg.CAMERA_INFO, typestore=ts)
    for t, frame in enumerate(clip):
      hdr = rosmsg.header(ts, t * 10**8, "cam")
      k = points_k()
      w.write(info, t * 10**8, ts.serialize_cdr(rosmsg.camera_info_msg(ts, hdr, k, None, False),
                                                rosmsg.CAMERA_INFO))
      w.write(img, t * 10**8 + 1, ts.serialize_cdr(rosmsg.image_msg(ts, hdr, frame, "rgb8"),
                                                   rosmsg.IMAGE))
  video = os.path.join(work, "in.mp4")
  with imageio_v2.get_writer(video, format="FFMPEG", fps=10, codec="libx264", quality=10,
                             macro_block_size=2) as writer:
    for frame in clip:
      writer.append_data(frame)
  return os.path.join(work, "bag"), video


def points_k():
  from hydrajax.inference import points as points_lib
  return points_lib.NYUD_KINECT


def make_models(work: str, clip: list[np.ndarray]) -> tuple[str, str]:
  import jax
  from PIL import Image
  import hydrajax
  weights = os.path.join(work, "model.npz")
  hydrajax.save(weights, hydrajax.init(jax.random.key(0), num_classes=40))
  calib = os.path.join(work, "calib")
  os.makedirs(calib)
  for i, frame in enumerate(clip[:8]):
    Image.fromarray(frame).save(os.path.join(calib, f"{i}.png"))
  onnx = os.path.join(work, "int8.onnx")
  subprocess.run([sys.executable, "-m", "hydrajax", "export", "--weights", weights, "--format",
                  "onnx", "--height", str(H), "--width", str(W), "--out", onnx, "--int8",
                  "--calibrate-images", calib, "--calibrate-count", "8"], check=True, cwd=ROOT)
  return weights, onnx


def variants(bag: str, video: str, weights: str, onnx: str, work: str) -> dict[str, list[str]]:
  float_, int8 = ["--weights", weights], ["--onnx", onnx]
  bag_args = ["--bag", bag, "--topic", "/cam/image_raw", "--out", os.path.join(work, "o.mcap")]
  video_args = ["--video", video, "--out", os.path.join(work, "o.mp4")]
  return {"bag_float": float_ + bag_args, "video_float": float_ + video_args,
          "bag_int8": int8 + bag_args, "video_int8": int8 + video_args,
          "bag_float_points": float_ + bag_args + ["--points"]}


def run_one(args: list[str]) -> dict:
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "hydrajax", "predict", "--no-progress",
                         "--batch", "4", *args], capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{args}: exit {proc.returncode}: {proc.stderr[-800:]}")
  fps = float(re.search(r"([0-9.]+) frames/s", proc.stdout).group(1))
  return {"fps": fps, "process_seconds": round(wall, 2)}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=48)
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "bag_throughput.json"))
  args = parser.parse_args()
  from hydrajax.runtime import atomic
  with tempfile.TemporaryDirectory() as work:
    clip = frames(args.frames)
    bag, video = write_inputs(work, clip)
    weights, onnx = make_models(work, clip)
    cases = variants(bag, video, weights, onnx, work)
    results: dict[str, list[dict]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(args.rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:  # rotated order
        results[name].append(run_one(cases[name]))
        print(name, results[name][-1], flush=True)
  summary = {name: {"median_fps": float(np.median([x["fps"] for x in runs])), "runs": runs}
             for name, runs in results.items()}
  record = {"frames": args.frames, "size": [H, W], "batch": 4, "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "results": summary}
  atomic.write_bytes_atomic(args.out, json.dumps(record, indent=1).encode())
  print(f"{'variant':<18} frames/s")
  for name, s in summary.items():
    print(f"{name:<18} {s['median_fps']:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
