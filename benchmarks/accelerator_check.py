"""Everything worth knowing about hydrajax on a GPU (or TPU), in one command, in under 8 minutes.

    python benchmarks/accelerator_check.py                    # on the machine with the GPU
    python benchmarks/accelerator_check.py --platform cpu --tiny --out /tmp/check.json  # dry run

1. the device JAX sees (platform, kind, versions);
2. the layer and model parity tests (tests/test_layers.py, tests/test_models.py,
   tests/test_ops.py) run ON that device;
3. inference (`hydrajax.apply`'s program) at 1x480x640 in float32 and bfloat16, for each layer
   form worth timing there (hydrajax.models.ops: "native", "xla_cpu");
4. the real training step (`train_lib.train_step`) at 4x400x400 and 8x400x400, per
   implementation (float32; `--train-dtypes float32 bfloat16` adds mixed precision);
5. the input pipeline's images/s with all the machine's cores (NYUD-layout 480x640 PNGs,
   scale 0.5-2.0, 400x400 crop, flip) against the images/s each training step consumes;
6. the training loop over that pipeline without and with device prefetch
   (`flax.jax_utils.prefetch_to_device`, 2 batches ahead).
Each measurement runs in a fresh process, so its compile time and peak device memory
(`device.memory_stats()["peak_bytes_in_use"]`) are its own. Steps left when the time budget
(`--budget-min`, default 7.5) runs out are recorded as skipped. Writes one JSON (`--out`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PARITY_TESTS = ("tests/test_layers.py", "tests/test_models.py", "tests/test_ops.py")
FULL = {"infer": (1, 480, 640), "train": ((4, 400, 400), (8, 400, 400)), "crop": 400,
        "frames": (480, 640)}
TINY = {"infer": (1, 64, 96), "train": ((2, 64, 64),), "crop": 64, "frames": (72, 96)}


# ----------------------------------------------------------------------------- child side

def _device_memory() -> dict:
  """Peak and current bytes on the first device (None where the backend keeps no stats)."""
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"peak_device_bytes": stats.get("peak_bytes_in_use"),
          "device_bytes_limit": stats.get("bytes_limit")}


def _rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _times(run, n: int) -> dict:
  import numpy as np
  t = [run() for _ in range(n)]
  return {"runs": n, "median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(np.min(t))}


def _device_info(_: dict) -> dict:
  import jax
  import jaxlib
  d = jax.local_devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind,
          "devices": [str(x) for x in jax.devices()], "num_devices": jax.device_count(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": sys.version.split()[0],
          "memory_stats": d.memory_stats() is not None}


def _infer(item: dict) -> dict:
  from benchmarks import compare_cases as cases
  # The compiled program of `hydrajax.apply` itself (its Python checks are not the device's).
  run, info = cases.build_apply(*item["shape"], item["dtype"], item["impl"], public=False)
  return {**info, **_times(run, item["runs"]), **_device_memory(), "rss_peak_mb": _rss_mb()}


def _pipeline(frames_dir: str, batch: int, crop: tuple[int, int], workers: int):
  """The training pipeline (scale 0.5-2.0, crop, flip) over the fabricated NYUD frames."""
  from hydrajax.data import NYUDv2, train_dataset
  _parse_absl_flags()
  return train_dataset(NYUDv2(frames_dir, "train"), global_batch_size=batch, crop_size=crop,
                       seed=0, num_workers=workers, num_devices=1)


def _train(item: dict) -> dict:
  import jax
  import numpy as np
  from flax import jax_utils

  from benchmarks import compare_cases as cases
  step, state, data, hparams, _ = cases.build_train_lib_step(*item["shape"], item["dtype"],
                                                             item["impl"])
  t0 = time.perf_counter()
  compiled = step.lower(state, data, hparams).compile()
  out = {"compile_s": time.perf_counter() - t0, "flops": cases._flops(compiled)}
  box = [state]

  def run(batch=data):
    t = time.perf_counter()
    box[0], metrics = compiled(box[0], batch, hparams)
    metrics["loss"].block_until_ready()
    return time.perf_counter() - t
  run()
  out.update(_times(run, item["runs"]))
  out["images_per_s"] = item["shape"][0] / (out["median_ms"] / 1e3)
  loop = item.get("loop")
  if loop:
    # The loop as training runs it: the host pipeline feeds every step. Without prefetch each
    # batch is copied to the device when the step is called; with prefetch_to_device the next
    # two batches are already there.
    sharding = jax.tree.leaves(data)[0].sharding
    dtypes = {k: v.dtype for k, v in data.items()}
    host = lambda it: ({k: np.asarray(b[k], dtypes[k]) for k in dtypes} for b in it)

    def timed_loop(batches) -> float:
      for _ in range(2):  # warm-up: worker start, first transfers
        run(next(batches))
      t = time.perf_counter()
      for _ in range(loop["steps"]):
        box[0], metrics = compiled(box[0], next(batches), hparams)
      metrics["loss"].block_until_ready()
      return 1e3 * (time.perf_counter() - t) / loop["steps"]

    ds = lambda: host(iter(_pipeline(loop["frames_dir"], item["shape"][0],
                                     tuple(item["shape"][1:3]), loop["workers"])))
    out["loop_workers"] = loop["workers"]
    out["loop_no_prefetch_ms"] = timed_loop(
        jax.device_put(b, sharding) for b in ds())
    out["loop_prefetch_ms"] = timed_loop(
        jax_utils.prefetch_to_device(ds(), 2, devices=list(sharding.mesh.devices.flat)))
  return {**out, **_device_memory(), "rss_peak_mb": _rss_mb()}


def _parse_absl_flags() -> None:
  # Grain's multiprocessing reads absl flags, which only absl.app parses.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


def _pipeline_rate(item: dict) -> dict:
  from benchmarks import data_throughput
  from hydrajax.data import NYUDv2
  _parse_absl_flags()
  return data_throughput.measure(NYUDv2(item["frames_dir"], "train"), item["workers"],
                                 item["batch"], item["crop"], item["batches"], warmup=3)


CHILD = {"device": _device_info, "infer": _infer, "train": _train, "pipeline": _pipeline_rate}


# ----------------------------------------------------------------------------- parent side

def _child_env(platform: str | None) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("JAX_PLATFORMS", None)
  if platform:
    env["JAX_PLATFORMS"] = platform
  return env


def run_child(item: dict, platform: str | None, timeout: float) -> dict:
  """Run one measurement in a fresh process; its last stdout line is the JSON answer."""
  t0 = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(item)],
                          env=_child_env(platform), cwd=ROOT, capture_output=True, text=True,
                          timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    return {**item, "error": f"timed out after {timeout:.0f} s"}
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return {**item, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
  return {**item, **json.loads(lines[-1]), "process_s": time.perf_counter() - t0}


def run_tests(paths: list[str], platform: str | None, timeout: float) -> dict:
  """pytest on the device: conftest forces CPU unless HYDRAJAX_TEST_PLATFORM says otherwise."""
  present = [p for p in paths if os.path.exists(os.path.join(ROOT, p.split("::")[0]))]
  env = _child_env(None)
  env["HYDRAJAX_TEST_PLATFORM"] = platform or "default"
  # GPUs since Ampere run float32 matmuls and convolutions in TF32 (10-bit mantissa) by
  # default: the parity tests' 1e-5 bounds check the layers' arithmetic, so they run at full
  # float32 precision (the timings below keep the default).
  env.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
  if not present:
    return {"files": [], "missing": list(paths), "platform": env["HYDRAJAX_TEST_PLATFORM"],
            "returncode": None, "passed": False, "summary": "no test file to run", "seconds": 0.0}
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *present]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(timeout, 1))
    code, tail = proc.returncode, proc.stdout.strip().splitlines()[-1:] or [""]
  except subprocess.TimeoutExpired:
    code, tail = None, [f"timed out after {timeout:.0f} s"]
  return {"files": present, "missing": [p for p in paths if p not in present],
          "platform": env["HYDRAJAX_TEST_PLATFORM"],
          "matmul_precision": env["JAX_DEFAULT_MATMUL_PRECISION"], "returncode": code,
          "passed": code == 0, "summary": tail[0], "seconds": time.perf_counter() - t0}


def plan(args, sizes: dict, impls: list, frames_dir: str) -> list[dict]:
  """The measurements, most important first (the budget cuts from the end)."""
  items = [{"kind": "infer", "shape": sizes["infer"], "dtype": dt, "impl": impl,
            "runs": args.runs} for dt in ("float32", "bfloat16") for impl in impls]
  items.append({"kind": "pipeline", "frames_dir": frames_dir, "workers": args.data_workers,
                "batch": sizes["train"][-1][0], "crop": sizes["crop"], "batches": args.batches})
  for dt in args.train_dtypes:
    for shape in sizes["train"]:
      for i, impl in enumerate(impls):
        loop = ({"frames_dir": frames_dir, "workers": args.data_workers, "steps": args.loop_steps}
                if i == 0 and dt == "float32" else None)
        items.append({"kind": "train", "shape": shape, "dtype": dt, "impl": impl,
                      "runs": args.runs, "loop": loop})
  return items


def summarise(report: dict) -> None:
  dev = report["device"]
  print(f"device: {dev.get('devices', dev.get('error'))} ({dev.get('device_kind')})")
  t = report["tests"]
  verdict = "PASSED" if t["passed"] else "FAILED"
  print(f"parity tests on {t['platform']}: {verdict} ({t['summary']})")
  for r in report["measurements"]:
    what = (f"pipeline batch {r['batch']} crop {r['crop']}" if r["kind"] == "pipeline" else
            f"{r['kind']:8} {r['shape']} {r['dtype']} impl={r['impl']}")
    if "error" in r or "skipped" in r:
      print(f"  {what}: {r.get('error') or r.get('skipped')}")
    elif r["kind"] == "pipeline":
      print(f"  {what}: {r['images_per_s']:.1f} images/s with {r['workers']} workers")
    else:
      mem = r.get("peak_device_bytes")
      mem = f"{mem / 2**20:.0f} MiB" if mem else "n/a"
      extra = (f", loop {r['loop_no_prefetch_ms']:.1f} ms/step, prefetched "
               f"{r['loop_prefetch_ms']:.1f}" if "loop_prefetch_ms" in r else "")
      print(f"  {what}: {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}), compile "
            f"{r['compile_s']:.1f} s, peak device memory {mem}{extra}")
  for row in report["pipeline_vs_step"]:
    print(f"  pipeline {row['pipeline_images_per_s']:.1f} images/s vs train {row['shape']} "
          f"{row['dtype']} impl={row['impl']} consuming {row['step_images_per_s']:.1f}: "
          f"{row['ratio']:.2f}x")


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--platform", default=None,
                 help="JAX_PLATFORMS for every step (default: JAX's choice, the GPU if any)")
  p.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of the procedure")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "accelerator_check.json"))
  p.add_argument("--tests", nargs="*", default=list(PARITY_TESTS),
                 help="pytest paths run on the device (none: skip)")
  p.add_argument("--impls", nargs="*", default=None,
                 help="layer implementations (default: all the model offers)")
  p.add_argument("--train-dtypes", nargs="+", default=["float32"],
                 choices=["float32", "bfloat16"])
  p.add_argument("--train-sizes", nargs="*", default=None,
                 help="BxHxW (default 4x400x400 8x400x400)")
  p.add_argument("--runs", type=int, default=20, help="timed runs per measurement")
  p.add_argument("--loop-steps", type=int, default=10, help="steps timed over the pipeline")
  p.add_argument("--data-workers", type=int, default=os.cpu_count(),
                 help="Grain worker processes (default: all cores)")
  p.add_argument("--batches", type=int, default=20, help="batches timed for the pipeline")
  p.add_argument("--budget-min", type=float, default=7.5)
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    item = json.loads(args.child)
    print(json.dumps(CHILD[item["kind"]](item)), flush=True)
    return 0

  start = time.perf_counter()
  deadline = start + 60 * args.budget_min
  left = lambda: deadline - time.perf_counter()
  sizes = dict(TINY if args.tiny else FULL)
  if args.train_sizes:
    sizes["train"] = tuple(tuple(int(v) for v in s.split("x")) for s in args.train_sizes)
  from benchmarks import compare_cases as cases
  from benchmarks import data_throughput
  from benchmarks.compare import write_json
  impls = args.impls if args.impls is not None else cases.impls_available(
      args.platform or "gpu")
  report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:] if argv is None
            else list(argv), "tiny": args.tiny, "impls": impls, "budget_min": args.budget_min,
            "cpus": os.cpu_count()}
  report["device"] = run_child({"kind": "device"}, args.platform, left())
  print(f"device: {report['device'].get('devices', report['device'].get('error'))}", flush=True)
  report["tests"] = run_tests(args.tests, args.platform, left() / 2)
  print(f"parity tests: {report['tests']['summary']}", flush=True)
  with tempfile.TemporaryDirectory() as frames_dir:
    data_throughput.fabricate_nyud(frames_dir, 8 if args.tiny else 24, *sizes["frames"])
    measurements = []
    for item in plan(args, sizes, impls, frames_dir):
      if left() < 10:
        measurements.append({**item, "skipped": "time budget"})
        continue
      measurements.append(run_child(item, args.platform, left()))
      r = measurements[-1]
      print(f"[{time.perf_counter() - start:5.0f} s] {r['kind']} {r.get('shape', '')} "
            f"{r.get('dtype', '')} impl={r.get('impl')}: "
            f"{r.get('error') or r.get('median_ms') or r.get('images_per_s')}", flush=True)
  for r in measurements:
    r.pop("frames_dir", None)
    if r.get("loop"):
      r["loop"].pop("frames_dir", None)
  report["measurements"] = measurements
  pipe = [r for r in measurements if r["kind"] == "pipeline" and "images_per_s" in r]
  report["pipeline_vs_step"] = [
      {"shape": r["shape"], "dtype": r["dtype"], "impl": r["impl"],
       "pipeline_images_per_s": pipe[0]["images_per_s"], "step_images_per_s": r["images_per_s"],
       "ratio": pipe[0]["images_per_s"] / r["images_per_s"]}
      for r in measurements if pipe and r["kind"] == "train" and "images_per_s" in r]
  report["total_s"] = time.perf_counter() - start
  summarise(report)
  write_json(args.out, report)
  print(f"wrote {args.out} ({report['total_s']:.0f} s)")
  return 0 if report["tests"]["passed"] else 1


if __name__ == "__main__":
  sys.exit(main())
