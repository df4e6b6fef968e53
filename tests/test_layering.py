"""The package layering: every package and top-level module of `rlhf` states what it may import from `rlhf`,
the code imports nothing else, the table itself only points down the floors, there are no import cycles
between modules, the PPO pretraining mix comes from `data/`, and every package imports on its own in a
fresh interpreter.

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

# The floors, bottom up: a unit may import only units on lower floors (and only those ALLOWED names), never
# one on its own floor or above. docs/design.md draws the same picture.
FLOORS = [
    ["errors", "progress", "plots", "stats"],  # leaf modules: no rlhf imports
    ["tracking", "report"],                    # trackers (TensorBoard, W&B, MLflow); HTML reports of run folders
    ["config", "parallel"],                    # dataclass configs from YAML; torch.distributed helpers
    ["rundir"],                                # the one run-directory writer
    ["data"],                                  # files, chat encoding, packing, samplers
    ["world", "models"],                       # the synthetic world; models, tokenizers, LoRA, reward heads
    ["rollout"],                               # sampling, experience, packed forward passes
    ["train", "eval", "feedback"],             # trainers; evaluation primitives; labels (people, simulated)
    ["control", "stages"],                     # RLHF for control; `rlhf <stage>` = a trainer fed by the world
    ["pipeline", "tasks"],                     # `rlhf pipeline` and its real-task presets
    ["studies"],                               # seeds, compare, overopt, signals: they run the pipeline
    ["cli"],                                   # `rlhf ...`
]
BASE = {"errors", "config", "parallel", "progress", "plots", "stats", "rundir"}  # the small modules any package may use
# What each package or top-level module may import from rlhf (besides itself).
ALLOWED: dict[str, set[str]] = {
    "errors": set(), "progress": set(), "plots": set(), "stats": set(),
    "tracking": {"errors"}, "report": {"errors"}, "config": {"errors", "tracking"},
    "parallel": {"errors"},
    "rundir": {"config", "parallel", "plots", "tracking"},
    "data": BASE,
    "world": BASE | {"data"},
    "models": BASE | {"data"},
    "rollout": BASE | {"data", "models"},
    "train": BASE | {"data", "models", "rollout"},
    "eval": BASE | {"data", "world", "models", "rollout"},
    "feedback": BASE | {"data", "world", "models", "rollout"},
    "control": BASE | {"data", "feedback"},
    "stages": BASE | {"data", "world", "models", "rollout", "train", "eval"},
    "pipeline": BASE | {"data", "world", "models", "rollout", "train", "eval", "feedback", "stages", "report"},
    "tasks": BASE | {"data", "world", "models", "rollout", "train", "eval", "feedback", "report"},
    "studies": BASE | {"data", "world", "models", "rollout", "train", "eval", "feedback", "stages", "pipeline",
                       "report"},
    "cli": BASE | {"data", "world", "models", "rollout", "train", "eval", "feedback", "control", "stages", "pipeline",
                   "tasks", "studies", "report", "tracking"},
}
PACKAGES = ["rlhf.data", "rlhf.models", "rlhf.rollout", "rlhf.train", "rlhf.world", "rlhf.eval", "rlhf.feedback",
            "rlhf.control", "rlhf.tasks", "rlhf.studies", "rlhf.report", "rlhf.parallel"]


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


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 40  # the whole source tree was read
    assert cycles(graph) == []


def unit(module: str) -> str | None:
    """The package or top-level module a module belongs to (`rlhf.train.ppo` -> `train`); None for `rlhf` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> dict[str, list[str]]:
    """module -> the rlhf modules it imports that its unit may not; a unit missing from `allowed` is one too."""
    bad = {}
    for mod, deps in graph.items():
        u = unit(mod)
        if u is None:
            continue
        if u not in allowed:
            bad[mod] = [f"{u} is not in the table"]
            continue
        wrong = sorted(d for d in deps if unit(d) not in (u, None) and unit(d) not in allowed[u])
        if wrong:
            bad[mod] = wrong
    return bad


def upward(allowed: dict[str, set[str]], floors: list[list[str]]) -> list[tuple[str, str]]:
    """(a, b) for every allowed import that does not go down at least one floor (or names a unit of no floor)."""
    floor = {u: i for i, names in enumerate(floors) for u in names}
    return sorted((a, b) for a, deps in allowed.items() for b in deps
                  if a not in floor or b not in floor or floor[b] >= floor[a])


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_catches_an_injected_upward_import():
    """The real graph with one import added that goes up (data -> train, eval -> pipeline, train -> eval), and
    one new package missing from the table: each is reported, and nothing else is."""
    graph = {m: set(d) for m, d in import_graph().items()}
    assert violations(graph, ALLOWED) == {}
    for mod, dep in [("rlhf.data.jsonl", "rlhf.train.ppo"), ("rlhf.eval.gold_eval", "rlhf.pipeline"),
                     ("rlhf.train.ppo", "rlhf.eval.drift"), ("rlhf.models.lm", "rlhf.rollout.engine")]:
        injected = {m: set(d) for m, d in graph.items()}
        injected[mod].add(dep)
        assert violations(injected, ALLOWED) == {mod: [dep]}
    injected = dict(graph, **{"rlhf.newpkg.x": {"rlhf.data.jsonl"}})
    assert violations(injected, ALLOWED) == {"rlhf.newpkg.x": ["newpkg is not in the table"]}
    # and on a table that allowed an upward import, the floor check fails
    assert upward(dict(ALLOWED, data=BASE | {"train"}), FLOORS) == [("data", "train")]
    assert upward(dict(ALLOWED, train=ALLOWED["train"] | {"eval"}), FLOORS) == [("train", "eval")]


def test_the_table_names_every_package_and_module_and_only_points_down():
    units = {unit(m) for m in import_graph()} - {None}
    assert units == set(ALLOWED) == {u for names in FLOORS for u in names}
    assert upward(ALLOWED, FLOORS) == []


def test_every_module_imports_only_what_its_table_row_allows():
    assert violations(import_graph(), ALLOWED) == {}


def test_ppo_takes_its_pretraining_mix_from_data():
    """PPO-ptx's packed pretraining text is `data.packing`'s, not the SFT trainer's: nothing PPO imports,
    directly or not, is train/sft.py."""
    graph = import_graph()
    seen, todo = set(), ["rlhf.train.ppo"]
    while todo:
        for d in graph[todo.pop()] - seen:
            seen.add(d)
            todo.append(d)
    assert "rlhf.data.packing" in graph["rlhf.train.ppo"] and "rlhf.train.sft" not in seen


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_on_its_own(package):
    """A fresh interpreter imports the package and all its modules (the web app's aside), nothing else first."""
    modules = [m for m in import_graph() if (m == package or m.startswith(package + ".")) and ".app" not in m]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in sorted(modules))
    # generous: a loaded machine
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
