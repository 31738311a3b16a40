"""The README's commands work after the README's install: every tool, script, flag, config
file, requirements file and extra its code blocks name exists, and the lock installs every
extra the README's commands need."""
import os
import re
import shlex
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands() -> list[list[str]]:
  """The shell commands of the README's bash blocks, continuation lines joined, comments cut."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      command = []
      for word in shlex.split(line, comments=True) + ["&&"]:
        if word in ("&&", ";"):
          if command:
            commands.append(command)
          command = []
        else:
          command.append(word)
  return commands


def _program(words: list[str]) -> str | None:
  """'hydrajax-NAME', 'python -m hydrajax NAME' as 'hydrajax-NAME', or a script's path."""
  if words[0].startswith("hydrajax-"):
    return words[0]
  if words[:3] == ["python", "-m", "hydrajax"]:
    return f"hydrajax-{words[3]}"
  if words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
    return words[1]
  return None


def _extras() -> dict[str, list[str]]:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["optional-dependencies"]


def _name(requirement: str) -> str:
  return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_readme_names_only_what_exists():
  commands = _commands()
  flags: dict[str, set[str]] = {}
  for words in commands:
    program = _program(words)
    if words[:2] == ["pip", "install"]:
      for i, w in enumerate(words):
        if words[i - 1] == "-r":
          assert os.path.isfile(os.path.join(ROOT, w)), w
        if w.startswith(".["):
          assert set(w[2:-1].split(",")) <= set(_extras()), w
    elif program is not None:
      if program.endswith(".py"):
        assert os.path.isfile(os.path.join(ROOT, program)), program
      flags.setdefault(program, set()).update(
          w.split("=")[0] for w in words if w.startswith("--") and not w.startswith("--config."))
      for w in words:
        path = w.split("=")[-1].split(":")[0]
        if path.startswith("configs/"):
          assert os.path.isfile(os.path.join(ROOT, path)), w
  assert {"hydrajax-predict", "hydrajax-export", "hydrajax-demo", "train.py"} <= set(flags)

  # Every flag shown is one the program's --help lists (all started at once: they only import).
  runs = {}
  for program in flags:
    argv = ([program] if program.startswith("hydrajax-") else [sys.executable, program])
    runs[program] = subprocess.Popen(argv + ["--help"], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  for program, proc in runs.items():
    out = proc.communicate(timeout=300)[0]
    missing = [f for f in sorted(flags[program]) if f not in out]
    assert not missing, (program, missing, out[-500:])


def test_the_lock_installs_every_extra_the_readme_commands_need():
  """`pip install -r requirements.txt` holds the packages of the extras behind the README's
  export, int8, video, points, demo and robot-log commands, so they run after that one line."""
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    locked = {_name(line) for line in f if line.strip() and not line.startswith(("#", "-"))}
  extras = _extras()
  for extra in ("onnx", "openvino", "video", "points", "demo", "robot"):
    missing = {_name(r) for r in extras[extra]} - locked
    assert not missing, (extra, missing)
