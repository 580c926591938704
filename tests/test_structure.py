"""The package's import graph: what may depend on what (read from the source, nothing imported).

- Only the jobs that train (``cli``, ``demo``) and ``train/`` itself import ``sketch2image.train``: a user
  who runs a model never loads the trainers.
- ``nets/`` depends on neither the training configs nor ``train/``: networks take their own settings.
- No import cycles, counting imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sketch2image

ROOT = Path(sketch2image.__file__).parent
TRAINING_JOBS = {"sketch2image.cli", "sketch2image.demo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the sketch2image modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def test_the_graph_sees_every_module_and_its_imports():
    graph = import_graph()
    assert {"sketch2image.pipeline", "sketch2image.storage", "sketch2image.train.ae"} <= set(graph)
    assert "sketch2image.storage" in graph["sketch2image.pipeline"]
    assert "sketch2image.train.common" in graph["sketch2image.train.ae"]
    assert "sketch2image.metrics.functional" in graph["sketch2image.metrics.registry"]  # from pkg import mod


def test_only_training_jobs_import_train():
    graph = import_graph()
    offenders = {
        mod: sorted(d for d in deps if d.startswith("sketch2image.train"))
        for mod, deps in graph.items()
        if not mod.startswith("sketch2image.train") and mod not in TRAINING_JOBS
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_networks_depend_on_neither_training_configs_nor_train():
    graph = import_graph()
    bad = {
        mod: sorted(d for d in deps if d == "sketch2image.configs" or d.startswith("sketch2image.train"))
        for mod, deps in graph.items()
        if mod.startswith("sketch2image.nets")
    }
    assert {m: d for m, d in bad.items() if d} == {}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_package_exports_the_model_without_loading_torch_on_import():
    import subprocess
    import sys

    code = ("import sys, sketch2image; assert 'torch' not in sys.modules, 'import sketch2image loaded torch'; "
            "from sketch2image import Sketch2Image; from sketch2image.pipeline import Sketch2Image as S; "
            "assert Sketch2Image is S")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
