"""Images/s of the NYUD-layout training pipeline with full augmentation.

Fabricates NYUDv2-format frames (480x640 RGB, uint8 masks, uint16 depth PNGs) in a temporary
directory, then times `train_dataset` (scale 0.5-2.0, 400x400 crop, flip) for each worker count.

  python benchmarks/data_throughput.py --workers 0 2 --out benchmarks/results/data_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

from hydrajax.data import NYUDv2, SyntheticScenes, train_dataset


def fabricate_nyud(root: str, n: int, height: int = 480, width: int = 640) -> None:
    """Writes `n` frames in the prepared NYUDv2 layout, with natural-looking (compressible) content."""
    synth = SyntheticScenes(n, height, width, seed=123)
    for sub in ("rgb", "masks", "depth"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lines = []
    for i in range(n):
        s, name = synth[i], f"{i + 1:06d}.png"
        Image.fromarray(s["image"]).save(os.path.join(root, "rgb", name))
        Image.fromarray(s["segm"]).save(os.path.join(root, "masks", name))
        Image.fromarray(np.round(s["depth"] * 5000).astype(np.uint16)).save(os.path.join(root, "depth", name))
        lines.append(f"rgb/{name}\tmasks/{name}\tdepth/{name}\n")
    with open(os.path.join(root, "train_list_depth.txt"), "w") as f:
        f.writelines(lines)


def measure(source, workers: int, batch_size: int, crop: int, batches: int, warmup: int) -> dict:
    """Times `batches` batches after `warmup` (worker start-up excluded)."""
    it = iter(train_dataset(source, global_batch_size=batch_size, crop_size=crop, seed=0, num_workers=workers))
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    assert batch["image"].shape == (batch_size, crop, crop, 3)
    return {"workers": workers, "batch_size": batch_size, "crop": crop, "batches": batches,
            "seconds": round(seconds, 3), "images_per_s": round(batches * batch_size / seconds, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--frames", type=int, default=24, help="fabricated frames (cycled)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=400)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/data_throughput.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as root:
        fabricate_nyud(root, args.frames)
        source = NYUDv2(root, "train")
        rows = [measure(source, w, args.batch_size, args.crop, args.batches, args.warmup) for w in args.workers]

    print(f"NYUD layout 480x640 -> {args.crop}x{args.crop} crops, scale 0.5-2.0 + flip, batch {args.batch_size}")
    print("| workers | images/s | seconds |\n|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['images_per_s']:.1f} | {r['seconds']:.2f} |")
    result = {"benchmark": "data_throughput", "machine": platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
