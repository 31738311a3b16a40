"""Checks shared by the command-line tests."""


def assert_one_error_line(err: str, *names) -> None:
  """stderr is one `error: ...` line naming each of `names`, without a traceback."""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert all(str(n) in lines[0] for n in names), err
  assert "Traceback" not in err
