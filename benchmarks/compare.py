"""hydrajax vs the PyTorch reference, each variant alone in a fresh process, over several rounds.

    python benchmarks/compare.py                 # 5 rounds, all workloads (~20 min idle, 2 cores)
    python benchmarks/compare.py --quick         # one round: a look, not a result
    python benchmarks/compare.py --tiny --quick  # smoke run at tiny sizes (seconds of timing)

Variants: `jax` (`hydrajax.apply` for inference; the real `train_lib.train_step`, pmapped as
training runs it, for training), `torch_eager` (the authors' network, tests/helpers/torch_reference.py,
channels_last, 2 threads), `torch_compile` (the same forward under torch.compile, inference
only), `jax_xla` (hydrajax with HYDRAJAX_CPU_KERNELS=0: its XLA-only CPU form, without the
FFI kernels of hydrajax/models/ops/cpu_kernels.cc), and with `--bf16` `jax_bf16` (bfloat16
compute). The jax processes tune themselves as train.py and evaluate.py do (hydrajax/runtime/cpu.py:
relaunch with glibc's huge-page tunable, C++ kernels). The library in a plain Python process:
`jax_4k` imports hydrajax and calls it, opting into nothing (glibc's defaults, XLA's forms);
`jax_4k_fast` first calls `hydrajax.runtime.fast_cpu()` (malloc reuse and the C++ kernels);
`jax_4k_scoped` takes the C++ kernels but confines the malloc settings to each call
(hugepages.reusing_freed_memory). `torch_eager_hugepages` / `torch_compile_hugepages` give
PyTorch the same tunable. Each process records the GLIBC_TUNABLES it ran with. Each (round, variant) is
one process that compiles, warms up, times `--runs` runs and exits, with nothing else of ours alive; the
variants alternate within a round and their order rotates between rounds, so machine load
drifts hit all alike. Reported per variant: median and minimum over all runs, the median of each
round, compile time, peak RSS; and per round the ratio of medians to `--baseline`, with its
spread over rounds: on shared machines one command's time moves 20-35% between rounds, so judge
the worst round's ratio, never one run.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORKLOADS = {  # name -> (kind, batch, height, width)
    "infer_1x480x640": ("infer", 1, 480, 640),
    "train_4x256x256": ("train", 4, 256, 256),
    "train_8x400x400": ("train", 8, 400, 400),
}
TINY_WORKLOADS = {  # --tiny: the same procedure in seconds (a smoke test, not a measurement)
    "infer_1x64x96": ("infer", 1, 64, 96),
    "train_2x64x64": ("train", 2, 64, 64),
}
VARIANTS = ("jax", "torch_eager", "torch_compile", "jax_xla", "jax_4k", "torch_eager_hugepages",
            "torch_compile_hugepages", "jax_bf16", "jax_4k_fast", "jax_4k_scoped")
JAX_VARIANTS = ("jax", "jax_xla", "jax_4k", "jax_bf16", "jax_4k_fast", "jax_4k_scoped")
# Variant -> environment of its process. The jax variants also relaunch as hydrajax's command-
# line tools do (hydrajax/runtime/cpu.py), except jax_4k*: hydrajax in a plain Python process.
VARIANT_ENV = {"jax_xla": {"HYDRAJAX_CPU_KERNELS": "0"},
               "torch_eager_hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
               "torch_compile_hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}


def _load() -> dict:
  one, five, fifteen = os.getloadavg()
  return {"loadavg_1m": round(one, 2), "loadavg_5m": round(five, 2),
          "loadavg_15m": round(fifteen, 2), "cpus": os.cpu_count()}


# ----------------------------------------------------------------------------- worker

def _rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(variant: str, kind: str, batch: int, h: int, w: int, threads: int):
  from benchmarks import compare_cases as cases
  if variant in JAX_VARIANTS:
    from hydrajax.models.ops import ffi_build
    run, info = cases.build_jax(kind, batch, h, w,
                                "bfloat16" if variant == "jax_bf16" else "float32")
    return run, {**info, "cpu_kernels": ffi_build.available()}
  if variant.startswith("torch_"):
    return cases.build_torch(kind, batch, h, w, compiled=variant.startswith("torch_compile"),
                             threads=threads)
  raise ValueError(f"unknown variant {variant!r}")


def serve(variant: str, kind: str, batch: int, h: int, w: int, warmup: int, runs: int,
          threads: int) -> dict:
  """One process's whole life: build (compile), warm up, time `runs` runs."""
  from hydrajax.runtime import cpu, hugepages
  if variant == "jax_4k_fast":
    cpu.fast_cpu()  # the library user's opt-in
  elif variant == "jax_4k_scoped":
    cpu.fast_cpu(malloc_reuse=False)
  elif variant in JAX_VARIANTS and variant != "jax_4k":
    cpu.tune_tool()  # as train.py and evaluate.py do
  base_rss = _rss_mb()
  t0 = time.perf_counter()
  run, info = _build(variant, kind, batch, h, w, threads)
  if variant == "jax_4k_scoped":  # the malloc settings only while hydrajax runs
    unscoped = run

    def run():
      with hugepages.reusing_freed_memory():
        return unscoped()
  info["setup_s"] = time.perf_counter() - t0
  for _ in range(warmup):  # allocator, caches, thread pools
    run()
  info["times_s"] = [run() for _ in range(runs)]
  info["rss_base_mb"], info["rss_peak_mb"] = base_rss, _rss_mb()
  info["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES")
  return info


def run_process(variant: str, workload: tuple, warmup: int, runs: int, threads: int) -> dict:
  kind, batch, h, w = workload
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             **VARIANT_ENV.get(variant, {}))
  if variant.startswith("jax_4k") and "GLIBC_TUNABLES" in env:  # 4 KiB pages even if the shell set it
    env["GLIBC_TUNABLES"] = ":".join(t for t in env["GLIBC_TUNABLES"].split(":")
                                     if not t.startswith("glibc.malloc.hugetlb="))
  cmd = [sys.executable, os.path.abspath(__file__), "--serve",
         json.dumps([variant, kind, batch, h, w, warmup, runs, threads])]
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
  return json.loads(lines[-1])


# ----------------------------------------------------------------------------- parent

def run_workload(workload: tuple, variants: list[str], rounds: int, warmup: int, runs: int,
                 threads: int, baseline: str) -> dict:
  """Every variant once per round in its own process; order rotated each round."""
  import numpy as np
  per_round = {v: [] for v in variants}
  for r in range(rounds):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      per_round[v].append(run_process(v, workload, warmup, runs, threads))
  results = {}
  for v, answers in per_round.items():
    ok = [a for a in answers if "error" not in a]
    if not ok:
      results[v] = {"error": answers[0]["error"]}
      continue
    times = np.concatenate([a["times_s"] for a in ok])
    compile_s = [a["compile_s"] for a in ok if a.get("compile_s") is not None]
    results[v] = {
        "runs": int(times.size), "rounds": len(ok), "median_ms": 1e3 * float(np.median(times)),
        "min_ms": 1e3 * float(times.min()),
        "round_median_ms": [1e3 * float(np.median(a["times_s"])) for a in answers
                            if "error" not in a],
        "compile_s": float(np.median(compile_s)) if compile_s else None,
        "flops": ok[0].get("flops"), "rss_peak_mb": max(a["rss_peak_mb"] for a in ok),
        "cpu_kernels": ok[0].get("cpu_kernels"), "glibc_tunables": ok[0].get("glibc_tunables"),
        "errors": [a["error"] for a in answers if "error" in a]}
  base = [a for a in per_round.get(baseline, [])]
  for v, answers in per_round.items():
    if v == baseline or "error" in results[v] or not base:
      continue
    ratios = [float(np.median(a["times_s"]) / np.median(b["times_s"]))
              for a, b in zip(answers, base) if "error" not in a and "error" not in b]
    if ratios:
      results[v][f"ratio_to_{baseline}"] = {"per_round": ratios, "min": min(ratios),
                                            "median": float(np.median(ratios)),
                                            "max": max(ratios)}
  return results


def print_table(report: dict) -> None:
  base = report["baseline"]
  print(f"\nload: {report['load_before']} -> {report['load_after']}; {report['rounds']} "
        f"round(s) of {report['runs']} runs per process")
  head = (f"{'workload':18} {'variant':24} {'median ms':>10} {'min ms':>9} "
          f"{'ratio to ' + base + ' (rounds)':>34} {'compile s':>10} {'peak RSS MB':>12}")
  print(head)
  print("-" * len(head))
  for wl, res in report["workloads"].items():
    for v, r in res.items():
      if "error" in r:
        print(f"{wl:18} {v:24} error: {r['error'][:80]}")
        continue
      q = r.get(f"ratio_to_{base}")
      ratio = (f"{q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f})" if q else "-")
      comp = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
      print(f"{wl:18} {v:24} {r['median_ms']:10.1f} {r['min_ms']:9.1f} {ratio:>34} "
            f"{comp:>10} {r['rss_peak_mb']:12.0f}")


def write_json(path: str, report: dict) -> None:
  """Atomically (readers never see half a file); imported here so the parent stays light
  while the timed processes run."""
  from hydrajax.runtime import atomic
  atomic.write_bytes_atomic(path, (json.dumps(report, indent=1) + "\n").encode())


def _versions() -> dict:
  out = {"python": sys.version.split()[0]}
  for name in ("jax", "jaxlib", "torch"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "compare.json"))
  p.add_argument("--quick", action="store_true", help="one round")
  p.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test of the procedure")
  p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --quick: 1)")
  p.add_argument("--runs", type=int, default=10, help="timed runs per process")
  p.add_argument("--warmup", type=int, default=3, help="untimed runs per process after compiling")
  p.add_argument("--workloads", nargs="*", default=None,
                 choices=sorted(WORKLOADS) + sorted(TINY_WORKLOADS))
  p.add_argument("--variants", nargs="*", default=None, choices=VARIANTS)
  p.add_argument("--skip-torch-compile", action="store_true")
  p.add_argument("--bf16", action="store_true", help="also time jax with bfloat16 compute")
  p.add_argument("--baseline", default="torch_eager", choices=VARIANTS)
  p.add_argument("--torch-threads", type=int, default=2)
  p.add_argument("--serve", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.serve:
    print(json.dumps(serve(*json.loads(args.serve))), flush=True)
    return 0

  table = TINY_WORKLOADS if args.tiny else WORKLOADS
  workloads = args.workloads or list(table)
  rounds = args.rounds or (1 if args.quick else 5)
  variants = args.variants or (["jax", "torch_eager", "torch_compile"] +
                               (["jax_bf16"] if args.bf16 else []))
  if args.skip_torch_compile:
    variants = [v for v in variants if not v.startswith("torch_compile")]
  report = {"load_before": _load(), "rounds": rounds, "runs": args.runs, "warmup": args.warmup,
            "baseline": args.baseline, "torch_threads": args.torch_threads,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": _versions(),
            "workloads": {}}
  all_workloads = {**WORKLOADS, **TINY_WORKLOADS}
  for wl in workloads:
    print(f"[{time.strftime('%H:%M:%S')}] {wl} ...", flush=True)
    kind = all_workloads[wl][0]
    wl_variants = [v for v in variants if not v.startswith("torch_compile") or kind == "infer"]
    report["workloads"][wl] = run_workload(all_workloads[wl], wl_variants, rounds, args.warmup,
                                           args.runs, args.torch_threads, args.baseline)
  report["load_after"] = _load()
  print_table(report)
  write_json(args.out, report)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
