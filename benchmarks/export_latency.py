"""Latency of the exported models next to `hydrajax.apply` and the PyTorch reference, CPU.

    python benchmarks/export_latency.py [--weights W.npz] [--height 480 --width 640]
        [--rounds 5] [--runs 10] [--threads 2] [--out benchmarks/results/export_latency.json]
    python benchmarks/export_latency.py --height 64 --width 96 --rounds 1 --runs 2 \\
        --out /tmp/smoke.json      # smoke run

Variants (batch 1, uint8 RGB in):
  onnxruntime_quarter  ONNX export, outputs at 1/4 resolution
  onnxruntime_full     ONNX export --full-resolution (logits, depth and labels at H x W)
  onnxruntime_int8     ONNX export --int8 (hydrajax/export/quantize.py, its default float
                       parts), outputs at 1/4 resolution like onnxruntime_quarter; calibrated
                       on --calibrate-count images of --calibrate-config's training split
  openvino_quarter     the OpenVINO IR (--format openvino) of onnxruntime_quarter's graph, in
                       OpenVINO (float32 precision, latency hint, --threads threads)
  openvino_int8        the IR --int8 (NNCF, hydrajax/export/openvino_ir.py), 1/4 resolution,
                       calibrated on the same images as onnxruntime_int8
  openvino_onnx_int8   onnxruntime_int8's QDQ graph read and run by OpenVINO (`--runtime
                       openvino` on the .onnx file; not in the default set)
  torch_eager          the authors' network (tests/helpers/torch_reference.py) in PyTorch eager,
                       channels_last, outputs upsampled to H x W (benchmarks/compare_cases.py)
  hydrajax_apply       `hydrajax.apply` (outputs at H x W), the library's defaults
  hydrajax_apply_fast_cpu  the same after `hydrajax.runtime.fast_cpu()` (malloc reuse and
                       the C++ CPU kernels, which the tools opt into; not in the default set)
  stablehlo_full       the deserialized StableHLO export --full-resolution
  hydrajax_apply_labels  `hydrajax.apply` plus the labels argmax in one jit: the outputs
                       stablehlo_full computes (not in the default set)
Each (variant, round) runs in a fresh process, one process at a time, and the variants'
order rotates between rounds, so a change in machine load hits all alike and no idle
runtime shares the cores. A process loads its model, warms up (2 calls), times `runs` calls,
and reports its peak RSS. The parent reports per variant the median and minimum over all
timed calls, each round's median, the largest peak RSS, the ratio of medians to
torch_eager, and the load average; the JSON is written atomically. Without --weights a
random 40-class model is used (latency does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = ("onnxruntime_quarter", "onnxruntime_full", "torch_eager", "hydrajax_apply",
            "stablehlo_full", "onnxruntime_int8", "openvino_quarter", "openvino_int8",
            "hydrajax_apply_labels", "openvino_onnx_int8", "hydrajax_apply_fast_cpu")
DEFAULT_VARIANTS = VARIANTS[:-3]
ARTIFACTS = {"onnxruntime_quarter": "quarter.onnx", "onnxruntime_full": "full.onnx",
             "onnxruntime_int8": "quarter_int8.onnx", "openvino_quarter": "quarter.xml",
             "openvino_int8": "quarter_int8.xml", "openvino_onnx_int8": "quarter_int8.onnx",
             "hydrajax_apply": "weights.npz", "stablehlo_full": "full.stablehlo",
             "hydrajax_apply_labels": "weights.npz", "hydrajax_apply_fast_cpu": "weights.npz"}


# ----------------------------------------------------------------------------- worker

def _peak_rss_mb() -> float:
  """This process's peak resident memory. (Linux's ru_maxrss would carry the parent's peak
  over fork + exec; VmHWM belongs to this program's own address space.)"""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0  # kB
  raise RuntimeError("no VmHWM in /proc/self/status (peak RSS needs Linux)")


def _runner(variant: str, path: str, image: np.ndarray, threads: int):
  """A zero-argument callable that runs one synchronised inference of `variant`."""
  if variant.startswith("onnxruntime"):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"image": image})
  if variant.startswith("openvino"):
    from hydrajax.export import openvino_ir
    ov = openvino_ir.import_openvino()
    compiled = openvino_ir.compile_model(ov.Core().read_model(path), threads)
    request = compiled.create_infer_request()
    return lambda: request.infer([image])
  if variant == "torch_eager":
    import torch
    torch.set_num_threads(threads)
    from benchmarks import compare_cases
    run, _ = compare_cases.build_torch("infer", *image.shape[:3])
    return run
  import jax
  if variant in ("hydrajax_apply", "hydrajax_apply_fast_cpu"):
    import hydrajax
    if variant == "hydrajax_apply_fast_cpu":
      hydrajax.runtime.fast_cpu()
    variables = hydrajax.load(path)
    return lambda: jax.block_until_ready(hydrajax.apply(variables, image))
  if variant == "hydrajax_apply_labels":
    import hydrajax
    import jax.numpy as jnp
    from hydrajax import api
    variables = hydrajax.load(path)
    model = hydrajax.model_from_variables(variables, impl="xla_cpu")  # what apply runs on CPU without the FFI kernels
    net = {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    @jax.jit
    def with_labels(net, image):  # apply's computation, plus the labels
      raw = model.apply(net, hydrajax.normalize(image), train=False)
      out = api.postprocess(raw, image.shape[1:3], model.align_corners)
      return dict(out, labels=jnp.argmax(out["segm"], axis=-1))
    return lambda: jax.block_until_ready(with_labels(net, image))
  if variant == "stablehlo_full":
    with open(path, "rb") as f:
      exp = jax.export.deserialize(bytearray(f.read()))
    return lambda: jax.block_until_ready(exp.call(image))
  raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def worker(variant: str, path: str, height: int, width: int, runs: int, threads: int) -> dict:
  image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
  t0 = time.perf_counter()
  run = _runner(variant, path, image, threads)
  for _ in range(2):  # warm-up: compilation, allocator, caches
    run()
  setup_s = time.perf_counter() - t0
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    run()
    times.append((time.perf_counter() - t) * 1e3)
  return {"times_ms": times, "setup_s": setup_s, "peak_rss_mb": _peak_rss_mb()}


# ----------------------------------------------------------------------------- parent

def make_artifacts(args: argparse.Namespace, folder: str) -> dict[str, float]:
  """Write the weights and the exports into `folder`; returns export seconds by file."""
  import hydrajax
  from hydrajax.runtime import atomic
  from hydrajax.export import cli as export
  variables = hydrajax.load(args.weights) if args.weights else hydrajax.init(0, num_classes=40)
  hydrajax.save(os.path.join(folder, ARTIFACTS["hydrajax_apply"]), variables)
  seconds = {}
  for name, fmt, full in (("quarter.onnx", "onnx", False), ("full.onnx", "onnx", True),
                          ("full.stablehlo", "stablehlo", True)):
    t0 = time.perf_counter()
    data = export.export(variables, fmt, args.height, args.width, full_resolution=full)
    seconds[name] = time.perf_counter() - t0
    atomic.write_bytes_atomic(os.path.join(folder, name), data)
    int8_wanted = {"onnxruntime_int8", "openvino_onnx_int8"} & set(args.variants)
    if name == "quarter.onnx" and int8_wanted:
      from hydrajax.export import quantize
      t0 = time.perf_counter()
      images = quantize.images_from_config(args.calibrate_config, (args.height, args.width),
                                           args.calibrate_count)
      int8 = quantize.quantize(data, images)
      seconds["quarter_int8.onnx"] = time.perf_counter() - t0
      atomic.write_bytes_atomic(os.path.join(folder, "quarter_int8.onnx"), int8)
    if name == "quarter.onnx" and {"openvino_quarter", "openvino_int8"} & set(args.variants):
      from hydrajax.export import openvino_ir, quantize
      model = openvino_ir.from_onnx(data)
      openvino_ir.save(model, os.path.join(folder, "quarter.xml"))
      if "openvino_int8" in args.variants:
        t0 = time.perf_counter()
        images = quantize.images_from_config(args.calibrate_config, (args.height, args.width),
                                             args.calibrate_count)
        int8 = openvino_ir.quantize(model, images)
        seconds["quarter_int8.xml"] = time.perf_counter() - t0
        openvino_ir.save(int8, os.path.join(folder, "quarter_int8.xml"))
  return seconds


def run_rounds(args: argparse.Namespace, folder: str) -> dict[str, list[dict]]:
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  reports: dict[str, list[dict]] = {v: [] for v in args.variants}
  for r in range(args.rounds):
    order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
    for variant in order:
      path = os.path.join(folder, ARTIFACTS.get(variant, ""))
      cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--artifact", path,
             "--height", str(args.height), "--width", str(args.width),
             "--runs", str(args.runs), "--threads", str(args.threads)]
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
      if proc.returncode != 0:
        raise RuntimeError(f"{variant} worker failed (exit {proc.returncode}):\n{proc.stderr}")
      reports[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
      print(f"round {r + 1}/{args.rounds} {variant:20s} median "
            f"{np.median(reports[variant][-1]['times_ms']):8.1f} ms", flush=True)
  return reports


def summarize(reports: dict[str, list[dict]]) -> dict[str, dict]:
  out = {}
  for variant, rounds in reports.items():
    times = [t for rep in rounds for t in rep["times_ms"]]
    out[variant] = {
        "median_ms": float(np.median(times)), "min_ms": float(np.min(times)),
        "round_medians_ms": [float(np.median(rep["times_ms"])) for rep in rounds],
        "peak_rss_mb": max(rep["peak_rss_mb"] for rep in rounds),
        "setup_s": [rep["setup_s"] for rep in rounds], "runs": len(times)}
  for ref_name, key in (("torch_eager", "torch_eager"), ("onnxruntime_quarter", "float_ort")):
    if ref_name not in out:
      continue
    ref = out[ref_name]
    for stats in out.values():
      stats[f"vs_{key}"] = stats["median_ms"] / ref["median_ms"]
      # each round's median over the reference's median of the same round
      stats[f"round_ratios_vs_{key}"] = [
          a / b for a, b in zip(stats["round_medians_ms"], ref["round_medians_ms"])]
  return out


def _version(pkg: str) -> str | None:
  from importlib.metadata import PackageNotFoundError, version
  try:
    return version(pkg)
  except PackageNotFoundError:
    return None


def _cpu_flags() -> list[str]:
  """The vector extensions that decide int8 speed (VNNI: int8 dot products), from Linux's
  /proc/cpuinfo."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return []
  return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                          "avx512_bf16", "amx_int8", "amx_bf16"))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--weights", default=None, help="hydrajax .npz (default: random 40 classes)")
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=640)
  p.add_argument("--rounds", type=int, default=5, help="processes per variant")
  p.add_argument("--runs", type=int, default=10, help="timed calls per process")
  p.add_argument("--threads", type=int, default=2,
                 help="onnxruntime / OpenVINO / torch inference threads")
  p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
  p.add_argument("--calibrate-config", default=os.path.join(ROOT, "configs", "synthetic.py"),
                 help="the int8 variants: calibration images from this config's training split")
  p.add_argument("--calibrate-count", type=int, default=8)
  p.add_argument("--out",
                 default=os.path.join(ROOT, "benchmarks", "results", "export_latency.json"))
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--artifact", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = set(args.variants) - set(VARIANTS)
  if unknown:
    p.error(f"unknown variants {sorted(unknown)}; expected some of {VARIANTS}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker, args.artifact, args.height, args.width, args.runs,
                            args.threads)))
    return 0
  load_at_start = os.getloadavg()
  with tempfile.TemporaryDirectory() as folder:
    export_s = make_artifacts(args, folder)
    reports = run_rounds(args, folder)
  result = {
      "variants": summarize(reports), "export_s": export_s,
      "config": {"height": args.height, "width": args.width, "batch": 1, "input": "uint8",
                 "rounds": args.rounds, "runs_per_round": args.runs, "threads": args.threads,
                 "weights": args.weights or "random 40-class", "cpu_count": os.cpu_count(),
                 "machine": platform.machine(),
                 **{pkg: _version(pkg) for pkg in ("jax", "onnxruntime", "openvino", "nncf",
                                                   "torch")},
                 "cpu_flags": _cpu_flags(),
                 "load_average_at_start": load_at_start,
                 "load_average_at_end": os.getloadavg()}}
  from hydrajax.runtime import atomic
  atomic.write_bytes_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
  for variant, stats in result["variants"].items():
    print(f"{variant:20s} median {stats['median_ms']:8.1f} ms  min {stats['min_ms']:8.1f} ms"
          f"  peak RSS {stats['peak_rss_mb']:7.0f} MB"
          + (f"  {stats['vs_torch_eager']:.2f}x torch (rounds "
             + ", ".join(f"{r:.2f}" for r in stats["round_ratios_vs_torch_eager"]) + ")"
             if "vs_torch_eager" in stats else "")
          + (f"  {stats['vs_float_ort']:.2f}x float ort (rounds "
             + ", ".join(f"{r:.2f}" for r in stats["round_ratios_vs_float_ort"]) + ")"
             if "vs_float_ort" in stats else ""))
  print(f"load average at start {load_at_start}, at end {os.getloadavg()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
