"""The package layering: no import cycles between modules, trainers independent of the world and of the
evaluation code, and every package importable on its own in a fresh interpreter.

The graph counts every `import rlhf...` in the source, also those inside functions (a lazy import is still
a dependency), read from the syntax tree without importing anything.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ["rlhf.data", "rlhf.models", "rlhf.rollout", "rlhf.train", "rlhf.world", "rlhf.eval", "rlhf.feedback"]
# what each layer may import from rlhf (besides itself and the leaf modules errors, config, progress, plots, rundir)
ALLOWED = {
    "rlhf.data": set(),
    "rlhf.world": {"rlhf.data"},
    "rlhf.models": {"rlhf.data"},
    "rlhf.rollout": {"rlhf.data", "rlhf.models"},
    "rlhf.train": {"rlhf.data", "rlhf.models", "rlhf.rollout"},
}
LEAVES = {"rlhf.errors", "rlhf.config", "rlhf.progress", "rlhf.plots", "rlhf.rundir"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the rlhf modules it imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("rlhf")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf"):
                for a in node.names:
                    deps.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 40  # the whole source tree was read
    assert cycles(graph) == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_what_is_below_them(layer):
    bad = {}
    for mod, deps in import_graph().items():
        if mod == layer or mod.startswith(layer + "."):
            wrong = {d for d in deps if not d.startswith(layer) and d not in LEAVES
                     and not any(d == a or d.startswith(a + ".") for a in ALLOWED[layer])}
            if wrong:
                bad[mod] = sorted(wrong)
    assert bad == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_on_its_own(package):
    """A fresh interpreter imports the package and all its modules (the web app's aside), nothing else first."""
    modules = [m for m in import_graph() if (m == package or m.startswith(package + ".")) and ".app" not in m]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in sorted(modules))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)  # generous: a loaded machine
    assert proc.returncode == 0, proc.stderr[-2000:]
