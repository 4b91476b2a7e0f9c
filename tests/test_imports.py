"""The training package's modules depend on each other one way.

The trainer, evaluation and two-stage fusion once imported each other in a
circle (through imports inside functions, which hide a circle from import time
but not from a reader). This reads every `avjax/train/*.py`, imports inside
functions included, and requires the graph to be acyclic and no module to reach
for another module's private names.
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "avjax", "train")


def _modules() -> dict[str, ast.Module]:
  return {f[:-3]: ast.parse(open(os.path.join(PACKAGE, f), encoding="utf-8").read())
          for f in sorted(os.listdir(PACKAGE)) if f.endswith(".py") and f != "__init__.py"}


def _sibling_imports(tree: ast.Module, names: set[str]) -> dict[str, str]:
  """Local alias -> sibling module, for every import of one, anywhere in the file."""
  out = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "avjax.train":
      for a in node.names:
        if a.name in names:
          out[a.asname or a.name] = a.name
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("avjax.train."):
      mod = node.module.split(".")[2]
      if mod in names:
        out[f"<from {mod}>"] = mod
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("avjax.train.") and a.name.split(".")[2] in names:
          out[a.asname or a.name] = a.name.split(".")[2]
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: set(_sibling_imports(tree, set(modules)).values()) - {name}
          for name, tree in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 1:
        return path[path.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_planted_circle():
  # The check itself must be able to fail.
  cycle = _cycle({"trainer": {"evaluate"}, "evaluate": {"runtime", "trainer"},
                  "runtime": set()})
  assert cycle is not None and cycle[0] == cycle[-1]
  assert set(cycle) == {"trainer", "evaluate"}
  assert _cycle({"trainer": {"evaluate"}, "evaluate": {"runtime"}, "runtime": set()}) is None


def test_training_modules_import_each_other_one_way():
  graph = _graph()
  assert {"trainer", "evaluate", "stages", "runtime"} <= set(graph)
  cycle = _cycle(graph)
  assert cycle is None, "import circle in avjax/train: " + " -> ".join(cycle)
  # The shared pieces sit below the three that used to form the circle.
  for name in ("trainer", "evaluate", "stages"):
    assert "runtime" in graph[name], name
  assert not graph["runtime"] & {"trainer", "evaluate", "stages", "cross_validation"}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_uses_a_siblings_private_names(name):
  modules = _modules()
  aliases = _sibling_imports(modules[name], set(modules))
  private = [f"{node.value.id}.{node.attr}" for node in ast.walk(modules[name])
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
             and node.value.id in aliases and node.attr.startswith("_")]
  assert not private, f"avjax/train/{name}.py reaches for private names: {private}"
