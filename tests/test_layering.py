"""The package's layering, checked on the source: no import cycles, and the layers import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import sleuth

ROOT = Path(sleuth.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the sleuth modules it imports anywhere in its source (lazy imports inside functions too)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for a in node.names:
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_layers_import_downwards():
    graph = import_graph()

    def imports(prefix: str, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
        return sorted((m, d) for m, ds in graph.items() if m == prefix or m.startswith(prefix + ".")
                      for d in ds if d.startswith(forbidden))

    # training and synthesis build on the task layer, never on evaluation
    assert imports("sleuth.rl", ("sleuth.evals",)) == []
    assert imports("sleuth.synth", ("sleuth.evals",)) == []
    # the task layer sits below evaluation, training and synthesis
    assert imports("sleuth.tasks", ("sleuth.evals", "sleuth.rl", "sleuth.synth", "sleuth.commands")) == []
    # the runtime (loop, tools, search, policy) never imports training, evaluation, tasks or commands
    upper = ("sleuth.evals", "sleuth.rl", "sleuth.synth", "sleuth.tasks", "sleuth.commands", "sleuth.cli")
    for runtime in ("sleuth.agent", "sleuth.tools", "sleuth.search", "sleuth.policy", "sleuth.baselines"):
        assert imports(runtime, upper) == []
    # search never needs a language model; tools never import the loop
    assert imports("sleuth.search", ("sleuth.policy", "sleuth.agent", "sleuth.tools")) == []
    assert imports("sleuth.tools", ("sleuth.agent",)) == []


def test_reports_sit_above_the_runtime_and_below_the_commands():
    graph = import_graph()
    above = ("sleuth.commands", "sleuth.cli", "sleuth.serve", "sleuth.evals", "sleuth.rl", "sleuth.synth")
    assert sorted((m, d) for m, ds in graph.items() if m.startswith("sleuth.report")
                  for d in ds if d.startswith(above)) == []
    runtime = ("sleuth.agent", "sleuth.tools", "sleuth.search", "sleuth.policy", "sleuth.citations")
    assert sorted((m, d) for m, ds in graph.items() if m.startswith(runtime)
                  for d in ds if d.startswith("sleuth.report")) == []
