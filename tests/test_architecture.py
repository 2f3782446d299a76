"""The shape of the house (docs/architecture.md): layers imported downwards only, no
import circle, modules of one job (≤ 450 lines), one dialect, one meaning per name."""

import ast
import collections
import io
import os
import sys
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxquant")

# Lowest first; a module may import modules of its own layer or of a lower one.
LAYERS = (
    ("base", ("io_utils", "compile_cache", "host_memory", "xla_options", "config_defaults",
              "cli", "tb", "checkpoints", "optim", "metrics", "mixup", "workdir")),
    ("data", ("data",)),
    ("models", ("models",)),
    ("learning", ("losses", "parallel", "state", "steps", "verdict", "resume",
                  "population", "member_step", "lanes", "device_windows")),
    ("reporting", ("trading", "bootstrap", "plots", "report_md", "evaluate", "trades",
                   "trade_stats", "backtest", "backtest_report", "walkforward_report",
                   "selection", "sweep_plots")),
    ("loop", ("train", "population_train")),
    ("entry", ("config_check", "compare", "main", "walkforward", "sweep")),
)
MAX_LINES = 450
SHARED_NAMES = {"main", "get_config"}  # Entry points and config files: one per module.


def _modules():
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
        out[name.removesuffix(".__init__")] = path
  return out


def _layer(module):
  parts = module.split(".")[1:] or [""]
  for rank, (_, members) in enumerate(LAYERS):
    if parts[0] in members:
      return rank
  raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")


def _imports(path, modules):
  """The jaxquant modules `path` imports, at any depth of the file (lazy ones too)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxquant"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if full in modules else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("jaxquant"))
  return found


def test_every_module_imports_its_own_layer_or_lower_and_nothing_from_configs():
  modules = _modules()
  wrong = []
  for name, path in modules.items():
    if name == "jaxquant":
      continue
    for dep in _imports(path, modules):
      if dep != "jaxquant" and _layer(dep) > _layer(name):
        wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} "
                     f"({LAYERS[_layer(dep)][0]})")
    text = open(path).read()
    tree = ast.parse(text)
    for node in ast.walk(tree):
      mod = (node.module if isinstance(node, ast.ImportFrom) else
             node.names[0].name if isinstance(node, ast.Import) else "") or ""
      if mod == "configs" or mod.startswith("configs."):
        wrong.append(f"{name} imports {mod} (the library must not read configs/)")
  assert not wrong, "\n".join(wrong)


def test_no_import_circle():
  modules = _modules()
  graph = {n: _imports(p, modules) - {"jaxquant", n} for n, p in modules.items()}
  state = {}  # 1: on the current path, 2: done.

  def visit(node, path):
    state[node] = 1
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 1:
        raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
      if dep not in state:
        visit(dep, path + [dep])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path, monkeypatch):
  """The two tests above on a made-up package that breaks both rules."""
  pkg = tmp_path / "jaxquant"
  (pkg / "data").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "data" / "__init__.py").write_text("")
  (pkg / "data" / "labels.py").write_text("from jaxquant import train\n")  # Upward.
  (pkg / "train.py").write_text("from jaxquant import evaluate\n")
  (pkg / "evaluate.py").write_text("from jaxquant import train\n")  # Circle.
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(pkg))
  with pytest.raises(AssertionError, match="data.labels .*imports jaxquant.train"):
    test_every_module_imports_its_own_layer_or_lower_and_nothing_from_configs()
  with pytest.raises(AssertionError, match="import circle"):
    test_no_import_circle()


def test_modules_are_short_and_in_one_dialect():
  """2-space indentation, no `from __future__`, no `__all__`: the flax-examples style."""
  wrong = []
  for name, path in _modules().items():
    text = open(path).read()
    if text.count("\n") > MAX_LINES:
      wrong.append(f"{name}: {text.count(chr(10))} lines (> {MAX_LINES}: split it by job)")
    tree = ast.parse(text)
    for node in tree.body:
      if isinstance(node, ast.ImportFrom) and node.module == "__future__":
        wrong.append(f"{name}: from __future__ import")
      if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                              for t in node.targets):
        wrong.append(f"{name}: __all__")
    indents = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
               if t.type == tokenize.INDENT]
    if indents and indents[0] != "  ":
      wrong.append(f"{name}: indented by {len(indents[0])} spaces, not 2")
  assert not wrong, "\n".join(wrong)


def test_no_two_public_names_mean_different_things():
  where = collections.defaultdict(list)
  for name, path in _modules().items():
    for node in ast.parse(open(path).read()).body:
      if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
          and node.name not in SHARED_NAMES):
        where[node.name].append(name)
  shared = {n: m for n, m in where.items() if len(m) > 1}
  assert not shared, shared
