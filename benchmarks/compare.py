"""hydrajax vs the PyTorch reference, side by side on this machine.

    python benchmarks/compare.py                 # everything, a few minutes on 2 cores
    python benchmarks/compare.py --quick         # fewer repeats, no 400x400 training
    python benchmarks/compare.py --skip-torch-compile --out /tmp/compare.json

Each variant (jax / torch eager channels_last / torch.compile) runs in its own worker
process, so its peak RSS is its own; the workers stay alive and the parent interleaves
their timed rounds (jax, torch, jax, torch, ...), so a change in machine load hits all
variants alike and the ratios stay comparable (bfloat16, `--bf16`, is timed in a second
pass: see `main`). Times are medians over all timed runs
after warm-up; compilation (XLA, inductor) is timed separately. FLOPs come from XLA's
cost analysis of the compiled program. The load average is recorded with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = {  # name -> (kind, batch, height, width)
    "infer_1x480x640": ("infer", 1, 480, 640),
    "train_4x256x256": ("train", 4, 256, 256),
    "train_8x400x400": ("train", 8, 400, 400),
}
VARIANTS = ("jax", "torch_eager", "torch_compile", "jax_bf16")


def _load() -> dict:
  one, five, fifteen = os.getloadavg()
  return {"loadavg_1m": round(one, 2), "loadavg_5m": round(five, 2),
          "loadavg_15m": round(fifteen, 2), "cpus": os.cpu_count()}


# ----------------------------------------------------------------------------- worker

def _rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _serve(variant: str, workload: str) -> None:
  """Worker: read commands on stdin ("setup", "time N", "quit"), answer JSON lines."""
  import compare_cases as cases  # this script's directory is sys.path[0]
  kind, batch, h, w = WORKLOADS[workload]
  base_rss = _rss_mb()
  runner = None
  for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "setup":
      t0 = time.perf_counter()
      runner, info = cases.build(variant, kind, batch, h, w)
      info["setup_s"] = time.perf_counter() - t0
      answer = info
    elif cmd[0] == "time":
      answer = {"times_s": [runner() for _ in range(int(cmd[1]))]}
    else:
      break
    answer["rss_base_mb"], answer["rss_peak_mb"] = base_rss, _rss_mb()
    print(json.dumps(answer), flush=True)


class Worker:
  def __init__(self, variant: str, workload: str):
    self.variant = variant
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", variant, workload],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

  def ask(self, cmd: str) -> dict:
    self.proc.stdin.write(cmd + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.variant} worker died (exit {self.proc.wait()})")
    return json.loads(line)

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- parent

def run_workload(workload: str, variants: list[str], rounds: int, per_round: int) -> dict:
  import numpy as np
  results = {}
  workers = {}
  for v in variants:  # one at a time, so setups (compilation) do not overlap
    wk = Worker(v, workload)
    try:
      results[v] = wk.ask("setup")
      workers[v] = wk
      wk.ask(f"time {max(1, per_round // 2)}")  # extra warm-up (allocator, caches)
    except (RuntimeError, json.JSONDecodeError) as e:
      results[v] = {"error": str(e)}
      wk.close()
  times = {v: [] for v in workers}
  for _ in range(rounds):
    for v, wk in workers.items():
      ans = wk.ask(f"time {per_round}")
      times[v] += ans["times_s"]
      results[v]["rss_peak_mb"] = ans["rss_peak_mb"]
  for v, wk in workers.items():
    wk.close()
    results[v]["runs"] = len(times[v])
    results[v]["median_ms"] = 1000 * float(np.median(times[v]))
    results[v]["iqr_ms"] = [1000 * float(q) for q in np.percentile(times[v], [25, 75])]
  return results


def print_table(report: dict) -> None:
  print(f"\nload: {report['load_before']} -> {report['load_after']}")
  head = (f"{'workload':18} {'variant':14} {'median ms':>10} {'vs eager':>9} {'compile s':>10} "
          f"{'peak RSS MB':>12} {'GFLOP':>7}")
  print(head)
  print("-" * len(head))
  for wl, res in report["workloads"].items():
    eager = res.get("torch_eager", {}).get("median_ms")
    for v, r in res.items():
      if "error" in r:
        print(f"{wl:18} {v:14} error: {r['error'][:60]}")
        continue
      ratio = f"{r['median_ms'] / eager:.2f}x" if eager else "-"
      comp = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
      flops = f"{r['flops'] / 1e9:.1f}" if r.get("flops") else "-"
      print(f"{wl:18} {v:14} {r['median_ms']:10.1f} {ratio:>9} {comp:>10} "
            f"{r['rss_peak_mb']:12.0f} {flops:>7}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "compare.json"))
  p.add_argument("--quick", action="store_true", help="3 rounds of 2, no 400x400 training")
  p.add_argument("--skip-torch-compile", action="store_true")
  p.add_argument("--bf16", action="store_true", help="also time jax with bfloat16 compute")
  p.add_argument("--skip-train", action="store_true")
  p.add_argument("--skip-infer", action="store_true")
  p.add_argument("--workloads", nargs="*", default=None, choices=sorted(WORKLOADS))
  p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per variant")
  p.add_argument("--per-round", type=int, default=None, help="timed runs per round")
  p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.serve:
    _serve(*args.serve)
    return 0

  workloads = args.workloads or [
      w for w in WORKLOADS
      if not (args.skip_train and w.startswith("train"))
      and not (args.skip_infer and w.startswith("infer"))
      and not (args.quick and w == "train_8x400x400")]
  rounds = args.rounds or (3 if args.quick else 5)
  per_round = args.per_round or (2 if args.quick else 3)
  variants = [v for v in VARIANTS if not (args.skip_torch_compile and v == "torch_compile")
              and not (v == "jax_bf16" and not args.bf16)]
  report = {"load_before": _load(), "rounds": rounds, "per_round": per_round,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "workloads": {}}
  for wl in workloads:
    print(f"[{time.strftime('%H:%M:%S')}] {wl} ...", flush=True)
    wl_variants = [v for v in variants if v != "torch_compile" or wl.startswith("infer")]
    # bfloat16 runs in a pass of its own: an idle second JAX process holding a training
    # state slowed the float32 JAX train step by ~25% (903 vs 702 ms, measured).
    groups = [[v for v in wl_variants if v != "jax_bf16"]]
    if "jax_bf16" in wl_variants:
      groups.append(["jax_bf16"])
    report["workloads"][wl] = {}
    for group in groups:
      report["workloads"][wl].update(run_workload(wl, group, rounds, per_round))
  report["load_after"] = _load()
  import jax
  import torch
  report["versions"] = {"jax": jax.__version__, "torch": torch.__version__,
                        "python": sys.version.split()[0]}
  print_table(report)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(report, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
