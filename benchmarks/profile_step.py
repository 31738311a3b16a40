"""Where a compiled hydrajax step spends its time, per layer, from an XLA profile.

    python benchmarks/profile_step.py train      # batch 4 at 256x256, forward+backward+SGD
    python benchmarks/profile_step.py infer      # batch 1 at 480x640, hydrajax.apply

Traces a few runs with jax.profiler, maps each executed XLA op to the layer it came from
(the op_name metadata of the compiled HLO), and prints milliseconds per layer, forward
("F") and backward ("B") apart. Times are per op and summed over the thread pool, so they
add up to more than the wall time when ops overlap on the two cores.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import numpy as np

import compare_cases  # this script's directory is sys.path[0]

SHAPES = {"train": (4, 256, 256), "infer": (1, 480, 640)}
SKIP = ("$", "Thunk", "Pjit", "Slinky", "Common", "Parse", "end:", "Handle", "Allocate",
        "Python")


def layer_of(op_name: str, depth: int) -> str:
  parts = [p for p in op_name.split("/")
           if p and not p.startswith(("jit(", "jvp(", "transpose(")) and p != "HydraNet"]
  return ("B " if "transpose(" in op_name else "F ") + "/".join(parts[:depth])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("kind", choices=sorted(SHAPES))
  p.add_argument("--depth", type=int, default=3, help="layer path components to group by")
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--top", type=int, default=30)
  args = p.parse_args()
  from hydrajax.runtime import hugepages
  hugepages.relaunch()  # profile the step as train.py runs it (HYDRAJAX_HUGEPAGES=0: without)
  import jax

  run, info = compare_cases.build_jax(args.kind, *SHAPES[args.kind])
  hlo = compare_cases.LAST_COMPILED.as_text()
  names = {m.group(1): m.group(2) for m in re.finditer(
      r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', hlo, re.M)}
  for _ in range(3):
    run()
  wall = float(np.median([run() for _ in range(5)]) * 1e3)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(args.runs):
        run()
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_layer, per_kind = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e["name"].startswith(SKIP):
      continue
    ms = e.get("dur", 0) / 1e3 / args.runs
    kind = e["name"].rsplit(".", 1)[0] if e["name"].rsplit(".", 1)[-1].isdigit() else e["name"]
    per_kind[kind] += ms
    per_layer[layer_of(names.get(e["name"], "?"), args.depth)] += ms
  print(f"{args.kind} {SHAPES[args.kind]}: wall {wall:.1f} ms (median of 5), "
        f"ops {sum(per_kind.values()):.1f} ms summed over threads, compile "
        f"{info['compile_s']:.1f} s")
  print("\nper layer:")
  for name, ms in per_layer.most_common(args.top):
    print(f"  {ms:8.2f} ms  {name}")
  print("\nper XLA op kind:")
  for name, ms in per_kind.most_common(12):
    print(f"  {ms:8.2f} ms  {name}")


if __name__ == "__main__":
  main()
