"""The package layering of docs/ARCHITECTURE.md, read from the source's import statements.

Every import between two peft_jax packages must point down the layers, and no module may reach
itself through imports (package ``__init__`` re-exports aside). Function-local imports count.
"""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / 'peft_jax'

# Lower numbers are lower layers; a package may import only packages of a lower number.
LAYERS = {
  'common': 0,
  'adapters': 1,
  'models': 2,
  'parallel': 2,
  'hub': 3,
  'data': 3,
  'train': 4,
  'evals': 4,
  'geometry': 4,
  'sae': 4,
  'rl': 5,
  'report': 5,
  'arena': 6,
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _imports(path: pathlib.Path, modules) -> set[str]:
  """peft_jax modules imported anywhere in the file (``from pkg import mod`` -> ``pkg.mod``)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith('peft_jax'))
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if not node.module.startswith('peft_jax'):
        continue
      for alias in node.names:
        child = f'{node.module}.{alias.name}'
        out.add(child if child in modules else node.module)
  return {m for m in out if m in modules}


@pytest.fixture(scope='module')
def graph():
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def _package(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def test_every_package_has_a_layer(graph):
  packages = {_package(m) for m in graph} - {''}
  assert packages <= set(LAYERS), f'packages without a layer: {sorted(packages - set(LAYERS))}'


def test_imports_point_down_the_layers(graph):
  bad = []
  for module, targets in graph.items():
    source = _package(module)
    if not source:  # peft_jax/__init__.py: the public face re-exports from every layer
      continue
    for target in targets:
      other = _package(target)
      if other and other != source and LAYERS[other] >= LAYERS[source]:
        bad.append(
          f'{module} -> {target} ({source} layer {LAYERS[source]}, {other} layer {LAYERS[other]})'
        )
  assert not bad, 'imports that do not point down the layers:\n' + '\n'.join(sorted(bad))


def test_no_import_cycles(graph):
  # Edges out of package __init__ files are re-exports of their own submodules: not part of the
  # dependency graph between modules.
  modules = _modules()
  edges = {
    m: {t for t in targets if t != m}
    for m, targets in graph.items()
    if modules[m].name != '__init__.py'
  }
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(node):  # Tarjan's strongly connected components
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in edges.get(node, ()):
      if nxt not in edges:
        continue
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        top = stack.pop()
        on_stack.discard(top)
        component.append(top)
        if top == node:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for node in sorted(edges):
    if node not in index:
      visit(node)
  assert not cycles, f'import cycles: {cycles}'


def test_the_checker_sees_a_planted_upward_import(tmp_path):
  """The rules bite: an adapters module importing train is reported."""
  planted = tmp_path / 'planted.py'
  planted.write_text('from peft_jax.train import trainer\n')
  targets = _imports(planted, _modules())
  assert targets == {'peft_jax.train.trainer'}
  assert LAYERS['train'] >= LAYERS['adapters']


def test_no_method_name_switches_outside_adapters():
  """Behaviour lives on the method objects: nothing above adapters/ compares method names."""
  hits = []
  for directory in (PACKAGE, ROOT / 'launch'):
    for path in directory.rglob('*.py'):
      if (PACKAGE / 'adapters') in path.parents:
        continue
      for number, line in enumerate(path.read_text().splitlines(), 1):
        if any(s in line for s in ("== 'full'", '== "full"', "== 'disel'", '== "disel"')):
          hits.append(f'{os.path.relpath(path, ROOT)}:{number}: {line.strip()}')
  assert not hits, '\n'.join(hits)
