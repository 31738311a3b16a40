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
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables are kept, in order.
  env = hugepages.launch_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "madvise")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hugepages.launch_env(base, (2, 36), "always") is None   # the kernel already does it
  assert hugepages.launch_env(base, (2, 36), "never") is None
  assert hugepages.launch_env(base, (2, 36), None) is None       # no THP in this kernel
  assert hugepages.launch_env(base, (2, 34), "madvise") is None  # no such tunable yet
  assert hugepages.launch_env(base, None, "madvise") is None     # not glibc (musl, macOS)
  assert hugepages.launch_env({"HYDRAJAX_HUGEPAGES": "0"}, (2, 36), "madvise") is None
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


_RELAUNCHED = """
import os, sys
from hydrajax.runtime import hugepages
hugepages._thp_mode = lambda: "madvise"        # as on a stock Linux kernel
hugepages._glibc_version = lambda: (2, 36)
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
hugepages.relaunch()
print("main", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="execve relaunch is Linux-only")
def test_relaunch_reexecutes_once_with_the_same_arguments_and_pid():
  out = subprocess.run([sys.executable, "-c", _RELAUNCHED, "--flag", "a b"], env=_clean_env(),
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(out) == 3, out
  pid = out[0].split()[1]
  assert out[0] == f"start {pid} None ['--flag', 'a b']"
  assert out[1] == f"start {pid} glibc.malloc.hugetlb=1 ['--flag', 'a b']"
  assert out[2] == f"main {pid} glibc.malloc.hugetlb=1"
  # Switched off: no relaunch.
  out = subprocess.run([sys.executable, "-c", _RELAUNCHED], env=_clean_env(HYDRAJAX_HUGEPAGES="0"),
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert [line.split()[0] for line in out] == ["start", "main"]


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


@pytest.mark.parametrize("argv,relaunched", [
    (["--weights", "w.npz", "--video", "in.mp4", "--out", "out.mp4"], True),
    (["--weights", "w.npz", "--video=in.mp4", "--out", "out.mp4"], True),
    (["--weights", "w.npz", "a.png", "b.png", "--out", "out"], False)])
def test_predict_relaunches_for_a_video_only(monkeypatch, argv, relaunched):
  from hydrajax.inference import predict
  calls = []
  monkeypatch.setattr(hugepages, "relaunch", lambda: calls.append("relaunch"))
  monkeypatch.setattr(predict, "main", lambda argv=None: calls.append("main") or 0)
  monkeypatch.setattr(sys, "argv", ["hydrajax-predict"] + argv)
  assert predict.cli() == 0
  assert calls == (["relaunch", "main"] if relaunched else ["main"])
