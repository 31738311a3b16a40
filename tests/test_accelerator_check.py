"""benchmarks/accelerator_check.py's CPU dry run: the whole procedure at tiny sizes, one JSON."""
import json

from benchmarks import accelerator_check


def test_cpu_dry_run_measures_everything_and_writes_one_json(tmp_path):
  out = tmp_path / "check.json"
  # One quick parity test, 2 runs each, the pipeline in process (no worker start-up): the
  # procedure, not the numbers; one layer form.
  code = accelerator_check.main([
      "--platform", "cpu", "--tiny", "--out", str(out), "--impls", "native",
      "--tests", "tests/test_layers.py::test_max_pool_matches_reduce_window",
      "--runs", "2", "--loop-steps", "2", "--batches", "2", "--data-workers", "0",
      "--budget-min", "30"])  # generous: a loaded machine must not cut the run short
  assert code == 0
  report = json.loads(out.read_text())
  assert report["device"]["platform"] == "cpu" and report["device"]["devices"]
  assert report["tests"]["passed"] and report["tests"]["platform"] == "cpu"
  assert " passed" in report["tests"]["summary"] and "failed" not in report["tests"]["summary"]
  rows = report["measurements"]
  assert not [r for r in rows if "error" in r or "skipped" in r], rows
  infer = {r["dtype"]: r for r in rows if r["kind"] == "infer"}
  assert set(infer) == {"float32", "bfloat16"}
  for r in infer.values():
    assert r["shape"] == [1, 64, 96] and r["runs"] == 2
    assert 0 < r["min_ms"] <= r["median_ms"] and r["compile_s"] > 0
    assert "peak_device_bytes" in r and r["rss_peak_mb"] > 0  # None on CPU: no device stats
  (train,) = [r for r in rows if r["kind"] == "train"]
  assert train["shape"] == [2, 64, 64] and train["dtype"] == "float32"
  assert train["compile_s"] > 0 and train["images_per_s"] == 2 / (train["median_ms"] / 1e3)
  assert train["loop_no_prefetch_ms"] > 0 and train["loop_prefetch_ms"] > 0
  (pipe,) = [r for r in rows if r["kind"] == "pipeline"]
  assert pipe["workers"] == 0 and pipe["images_per_s"] > 0 and pipe["crop"] == 64
  (versus,) = report["pipeline_vs_step"]
  assert versus["ratio"] == pipe["images_per_s"] / train["images_per_s"]
