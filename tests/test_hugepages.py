"""The huge-page relaunch of the command-line tools (hydrajax/runtime/hugepages.py)."""
import os
import subprocess
import sys

import pytest

from hydrajax.runtime import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "HYDRAJAX_HUGEPAGES")}
  return {**env, "PYTHONPATH": ROOT, **extra}


def test_launch_env_sets_the_tunable_only_where_it_helps():
  base = {"PATH": "/bin"}
  env = hugepages.launch_env(base, (2, 36), "madvise")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", hugepages.MARKER: "1"}
  # Other tunables are kept, in order.
  env = hugepages.launch_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "madvise")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hugepages.launch_env(base, (2, 36), "always") is None   # the kernel already does it
  assert hugepages.launch_env(base, (2, 36), "never") is None
  assert hugepages.launch_env(base, (2, 36), None) is None       # no THP in this kernel
  assert hugepages.launch_env(base, (2, 34), "madvise") is None  # no such tunable yet
  assert hugepages.launch_env(base, None, "madvise") is None     # not glibc (musl, macOS)
  assert hugepages.launch_env({"HYDRAJAX_HUGEPAGES": "0"}, (2, 36), "madvise") is None
  assert hugepages.launch_env({hugepages.MARKER: "1"}, (2, 36), "madvise") is None  # relaunched
  # Already set (this is also what stops a relaunch loop), whatever its value.
  assert hugepages.launch_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36),
                              "madvise") is None


def test_thp_mode_reads_the_bracketed_policy(tmp_path, monkeypatch):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  monkeypatch.setattr(hugepages, "THP_ENABLED", str(f))
  assert hugepages._thp_mode() == "madvise"
  f.write_text("[always] madvise never\n")
  assert hugepages._thp_mode() == "always"
  monkeypatch.setattr(hugepages, "THP_ENABLED", str(tmp_path / "missing"))
  assert hugepages._thp_mode() is None


# hugepages.py loaded on its own (no `import hydrajax`, so no JAX start-up per process).
_RELAUNCHED = f"""
import importlib.util, os, sys
_spec = importlib.util.spec_from_file_location("hugepages", {hugepages.__file__!r})
hugepages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hugepages)
hugepages._thp_mode = lambda: "madvise"        # as on a stock Linux kernel
hugepages._glibc_version = lambda: (2, 36)
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
hugepages.relaunch()
print("main", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
"""


def _run(argv, cwd=None, stdin=None, **env):
  """Output lines of a Python process (10 s at most: a relaunch loop fails, not hangs)."""
  return subprocess.run([sys.executable] + argv, env=_clean_env(**env), cwd=cwd, input=stdin,
                        capture_output=True, text=True, check=True, timeout=10).stdout.splitlines()


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="execve relaunch is Linux-only")


@linux_only
def test_relaunch_reexecutes_once_with_the_same_arguments_and_pid(tmp_path):
  script = tmp_path / "tool.py"
  script.write_text(_RELAUNCHED)
  out = _run([str(script), "--flag", "a b"])
  assert len(out) == 3, out
  pid = out[0].split()[1]
  assert out[0] == f"start {pid} None ['--flag', 'a b']"
  assert out[1] == f"start {pid} glibc.malloc.hugetlb=1 ['--flag', 'a b']"
  assert out[2] == f"main {pid} glibc.malloc.hugetlb=1"
  # Switched off: no relaunch.
  out = _run([str(script)], HYDRAJAX_HUGEPAGES="0")
  assert [line.split()[0] for line in out] == ["start", "main"]


@linux_only
def test_stripping_the_tunable_does_not_relaunch_forever(tmp_path):
  script = tmp_path / "strip.py"
  script.write_text("import os\nos.environ.pop('GLIBC_TUNABLES', None)\n" + _RELAUNCHED)
  out = _run([str(script)])
  assert [line.split()[0] for line in out] == ["start", "start", "main"], out
  assert out[2].endswith(" None")  # the marker, not the tunable, stopped the second relaunch


@linux_only
def test_script_from_stdin_runs_without_relaunch():
  for argv in (["-"], []):  # `python - < tool.py`, `python < tool.py`
    out = _run(argv, stdin=_RELAUNCHED)
    assert [line.split()[0] for line in out] == ["start", "main"], (argv, out)
    assert out[1].endswith(" None")


@linux_only
def test_relaunch_only_when_started_as_the_named_tool(tmp_path):
  body = _RELAUNCHED.replace("hugepages.relaunch()",
                             "hugepages.relaunch('hydrajax-probe', 'probe_tool')")
  (tmp_path / "hydrajax-probe").write_text(body)  # a console script
  (tmp_path / "probe_tool.py").write_text(body)  # its `python -m` module
  (tmp_path / "caller.py").write_text("import probe_tool\n")  # another program calling it
  (tmp_path / "runner.py").write_text("import runpy\nrunpy.run_path('hydrajax-probe', "
                                      "run_name='__main__')\n")
  env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
  starts = lambda out: [line.split()[0] for line in out].count("start")
  assert starts(_run([str(tmp_path / "hydrajax-probe"), "x"], **env)) == 2
  assert starts(_run(["-m", "probe_tool", "x"], cwd=tmp_path, **env)) == 2
  assert starts(_run([str(tmp_path / "caller.py"), "x"], **env)) == 1
  assert starts(_run(["runner.py"], cwd=tmp_path, **env)) == 1
  assert starts(_run(["-c", body], **env)) == 1


def test_started_as_names_the_program_only_when_the_command_line_reruns_it():
  assert hugepages.started_as(["train.py", "-x"], ["py", "train.py", "-x"]) == "train.py"
  assert hugepages.started_as(["/p/predict.py", "-x"],
                              ["py", "-X", "dev", "-m", "hydrajax.inference.predict", "-x"]
                              ) == "hydrajax.inference.predict"
  assert hugepages.started_as(["-"], ["py", "-"]) is None
  assert hugepages.started_as([""], ["py"]) is None
  assert hugepages.started_as(["-c", "a"], ["py", "-c", "code", "a"]) is None
  assert hugepages.started_as(["train.py"], ["py", "other.py"]) is None  # runpy
  # the dispatcher: `python -m hydrajax predict -x` runs predict with argv[0] renamed
  assert hugepages.started_as(["python -m hydrajax predict", "-x"],
                              ["py", "-m", "hydrajax", "predict", "-x"]
                              ) == "python -m hydrajax predict"
  assert hugepages.started_as(["python -m hydrajax export", "-x"],
                              ["py", "-m", "hydrajax", "predict", "-x"]) is None


_FAULTS = """
import resource, jax, jax.numpy as jnp
@jax.jit
def f(x):  # three 16 MiB intermediates: XLA's temp buffer is > 32 MiB, so glibc mmaps it
  y = x @ x
  z = jnp.sin(y) @ y
  return (jnp.cos(z) @ z).sum()
x = jnp.ones((2048, 2048), jnp.float32) / 2048
for _ in range(2):
  f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) // 4)
"""


@pytest.mark.skipif(hugepages._thp_mode() != "madvise" or (hugepages._glibc_version() or (0,))
                    < (2, 35), reason="the tunable acts with THP mode madvise and glibc >= 2.35")
def test_tunable_cuts_the_page_faults_of_xla_temp_buffers():
  def faults(**env):
    return int(subprocess.run([sys.executable, "-c", _FAULTS], env=_clean_env(**env),
                              capture_output=True, text=True, check=True).stdout.split()[-1])
  plain, huge = faults(), faults(GLIBC_TUNABLES=hugepages.TUNABLE)
  # 48 MiB of fresh 4 KiB pages is ~12k faults a run; huge pages make it a few dozen.
  assert plain > 8000 and huge < plain / 4, (plain, huge)


@pytest.mark.parametrize("help_flag", ["--help", "-h", "--helpfull"])
def test_a_tool_asked_for_help_neither_relaunches_nor_tunes(monkeypatch, help_flag):
  """`hydrajax-demo --help` only prints: no second start of the process, no malloc setting,
  no kernel build."""
  from hydrajax.runtime import cpu
  calls = []
  monkeypatch.setattr(hugepages, "relaunch", lambda *entries: calls.append("relaunch"))
  monkeypatch.setattr(cpu, "fast_cpu", lambda: calls.append("fast_cpu"))
  monkeypatch.setattr(sys, "argv", ["hydrajax-demo", "--port", "7861", help_flag])
  cpu.tune_tool("hydrajax-demo", "hydrajax.inference.demo")
  assert calls == []
  monkeypatch.setattr(sys, "argv", ["hydrajax-demo", "--port", "7861"])
  cpu.tune_tool("hydrajax-demo", "hydrajax.inference.demo")
  assert calls == ["relaunch", "fast_cpu"]


@pytest.mark.parametrize("argv,relaunched", [
    (["--weights", "w.npz", "--video", "in.mp4", "--out", "out.mp4"], True),
    (["--weights", "w.npz", "--video=in.mp4", "--out", "out.mp4"], True),
    (["--weights", "w.npz", "a.png", "b.png", "--out", "out"], False)])
def test_predict_relaunches_for_a_video_only(monkeypatch, argv, relaunched):
  from hydrajax.inference import predict
  calls = []
  monkeypatch.setattr(hugepages, "relaunch", lambda *entries: calls.append("relaunch"))
  from hydrajax.runtime import cpu
  monkeypatch.setattr(cpu, "fast_cpu", lambda: calls.append("fast_cpu"))
  monkeypatch.setattr(predict, "main", lambda argv=None: calls.append("main") or 0)
  monkeypatch.setattr(sys, "argv", ["hydrajax-predict"] + argv)
  assert predict.cli() == 0
  assert calls == (["relaunch", "fast_cpu", "main"] if relaunched else ["fast_cpu", "main"])


_FAULTS_PER_RUN = _FAULTS.replace("""r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) // 4)""", """runs = []
for _ in range(6):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  runs.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(*runs)""")


@pytest.mark.skipif(hugepages._glibc_version() is None, reason="mallopt is glibc's")
def test_opting_in_to_malloc_reuse_keeps_xla_temp_buffers_from_faulting_each_run():
  """`hydrajax.runtime.reuse_freed_memory()` sets glibc's malloc to reuse freed memory: the
  program's > 32 MiB temp buffer is then not a fresh mmap per run. `import hydrajax` alone
  leaves glibc's defaults, where every run faults its pages in anew; opted in, runs reuse
  them (a run may still grow the heap when other allocations fragment it, so the check is on
  the best run and the total)."""
  def faults(opt_in):
    code = ("import hydrajax\n" + ("hydrajax.runtime.reuse_freed_memory()\n" if opt_in else "")
            + _FAULTS_PER_RUN)
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(),
                         capture_output=True, text=True, check=True).stdout.split()
    return [int(v) for v in out[-6:]]
  plain, reused = faults(opt_in=False), faults(opt_in=True)
  assert min(plain) > 8000, plain  # 48 MiB of fresh 4 KiB pages each run
  assert min(reused) < min(plain) / 4 and sum(reused) < sum(plain), (plain, reused)
