"""Page faults per `hydrajax.apply` call under glibc malloc settings, each in a fresh process.

    python benchmarks/malloc_faults.py [--height 480 --width 640] [--calls 8] \
        [--out benchmarks/results/malloc_faults.json]

Modes (hydrajax/runtime/hugepages.py; docs/performance.md, "The library call in a plain
process"):
  defaults      glibc's own settings (`import hydrajax` alone changes none)
  nommap_only   mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 64 MiB, arenas untouched
  reuse         the opt-in, hydrajax.runtime.reuse_freed_memory() (the above + M_ARENA_MAX 1)
  hugetlb       GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (what the relaunched tools run with)
Per mode: minor page faults, kernel (sys) seconds and wall ms of each call after 2 warm-ups
(40-class random model, uint8 input), and the peak RSS. Times are only as good as the
machine's quiet: the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"defaults": {},
         "nommap_only": {},
         "reuse": {},
         "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}


def worker(mode: str, height: int, width: int, calls: int) -> dict:
  import ctypes
  import resource
  import time
  if mode == "nommap_only":
    mallopt = ctypes.CDLL(None).mallopt
    for param, value in ((-4, 0), (-1, 1 << 30), (-2, 64 << 20)):
      mallopt(param, value)
  import jax
  import numpy as np

  import hydrajax
  from hydrajax.runtime import hugepages
  if mode == "reuse":
    hugepages.reuse_freed_memory()
  variables = hydrajax.init(0, num_classes=40)
  x = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
  for _ in range(2):
    jax.block_until_ready(hydrajax.apply(variables, x))
  rows = []
  for _ in range(calls):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    jax.block_until_ready(hydrajax.apply(variables, x))
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    rows.append((1e3 * (t1 - t0), r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
  with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
  return {"ms": [round(r[0], 1) for r in rows], "minflt": [r[1] for r in rows],
          "sys_s": [round(r[2], 4) for r in rows], "peak_rss_mb": round(hwm / 1024),
          "reuse_applied": bool(hugepages._reuse_applied),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=640)
  p.add_argument("--calls", type=int, default=8)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "malloc_faults.json"))
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker, args.height, args.width, args.calls)))
    return 0
  result = {"height": args.height, "width": args.width, "load_before": os.getloadavg(),
            "modes": {}}
  for mode, extra in MODES.items():
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "HYDRAJAX_MALLOC_REUSE")}
    env.update(extra, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HYDRAJAX_HUGEPAGES="0")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", mode,
                           "--height", str(args.height), "--width", str(args.width),
                           "--calls", str(args.calls)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-2000:]}")
    result["modes"][mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    row = result["modes"][mode]
    print(f"{mode:12s} faults/call {row['minflt']}  peak RSS {row['peak_rss_mb']} MB  "
          f"ms {row['ms']}", flush=True)
  result["load_after"] = os.getloadavg()
  sys.path.insert(0, ROOT)
  from hydrajax.runtime import atomic
  atomic.write_bytes_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
