"""hydrajax's modules import each other without cycles, counting imports inside functions
(a cycle there works only by the order in which modules happen to load, and means two files
share one job)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hydrajax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
  """{module: hydrajax modules it imports anywhere in its body}."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from hydrajax import api` imports the module hydrajax.api; `from
        # hydrajax.api import apply` imports hydrajax.api.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      edges |= {t for t in targets if t in modules and t != name}
    graph[name] = edges
  return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = 2
    return None

  for start in sorted(graph):
    if start not in state:
      found = visit(start, [start])
      if found:
        return found
  return None


def test_the_graph_reads_function_level_imports():
  graph = _import_graph()
  assert "hydrajax.train.checkpoint" in graph["hydrajax.evaluate.loop"]  # imported inside load_variables
  assert "hydrajax.data.pipeline" in graph["hydrajax.evaluate.loop"]  # inside evaluate()


def test_no_import_cycles_between_hydrajax_modules():
  cycle = _find_cycle(_import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_reports_a_planted_cycle():
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None
