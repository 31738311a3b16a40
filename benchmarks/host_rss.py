"""What hydrajax leaves in its host program's memory: RSS kept after the host allocates and
frees 300 MB, in a fresh process per set-up, after one 480x640 `hydrajax.apply`.

    python benchmarks/host_rss.py [--out benchmarks/results/host_rss.json]

Set-ups: `import` (import hydrajax and call it, no opt-in), `fast_cpu`
(hydrajax.runtime.fast_cpu() first), `scoped` (the C++ kernels, and the malloc settings only
around the call: hugepages.reusing_freed_memory). glibc's defaults give a 300 MB block back
on free (it is an mmap); with malloc reuse it stays in the process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUPS = ("import", "fast_cpu", "scoped")


def worker(setup: str) -> dict:
  import contextlib

  import jax
  import numpy as np

  import hydrajax
  from hydrajax.runtime import hugepages
  if setup == "fast_cpu":
    hydrajax.runtime.fast_cpu()
  elif setup == "scoped":
    hydrajax.runtime.fast_cpu(malloc_reuse=False)
  scope = hugepages.reusing_freed_memory if setup == "scoped" else contextlib.nullcontext
  variables = hydrajax.init(jax.random.key(0), num_classes=40)
  with scope():
    jax.block_until_ready(hydrajax.apply(variables, np.zeros((480, 640, 3), np.uint8)))

  def rss_mb() -> float:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  before = rss_mb()
  block = b"\1" * (300 << 20)  # the host program's own allocation, touched, then freed
  del block
  return {"setup": setup, "rss_kept_mb": round(rss_mb() - before, 1),
          "rss_mb": round(before, 1)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "host_rss.json"))
  p.add_argument("--worker", choices=SETUPS, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker)))
    return 0
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "HYDRAJAX_MALLOC_REUSE", "HYDRAJAX_CPU_KERNELS")}
  env["PYTHONPATH"] = ROOT
  rows = []
  for setup in SETUPS:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", setup],
                         env=env, capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.splitlines()[-1]))
    print(f"{setup:10s} RSS kept after the host's 300 MB allocate/free: "
          f"{rows[-1]['rss_kept_mb']:7.1f} MB")
  from hydrajax.runtime import atomic
  atomic.write_bytes_atomic(args.out, (json.dumps({"rows": rows}, indent=1) + "\n").encode())
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
