"""The package's import graph, read from the source with ast, has no cycle.

Every import counts, the ones inside functions too (a lazy import still ties two modules together). Edges point
from a module to the modules of ``hopscotch_core`` it names; ``from pkg import name`` points at ``pkg.name`` when
that is a module, else at ``pkg`` (its ``__init__``). The top level re-exports lazily (PEP 562, by name through
importlib), so it names no module here.

Run alone: ``python -m pytest tests/test_import_graph.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "hopscotch_core"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, packages included (as ``pkg``, from their ``__init__.py``)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a (possibly relative) import target."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        edges = set()
        for target in targets:
            # `import a.b.c` names module a.b.c; keep the longest prefix that is a module of the package
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            name = ".".join(parts)
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out, key=len, reverse=True)


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path through a component, for the failure message."""
    members = set(component)
    start = component[0]
    # breadth-first from start's successors back to start, inside the component
    frontier = [[start, w] for w in sorted(graph[start] & members)]
    seen = set()
    while frontier:
        path = frontier.pop(0)
        if path[-1] == start:
            return path
        if path[-1] in seen:
            continue
        seen.add(path[-1])
        frontier += [path + [w] for w in sorted(graph[path[-1]] & members)]
    return component


def test_graph_sees_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("import hopscotch_core.sub.b\n")
    graph = import_graph(pkg)
    assert graph == {PACKAGE: set(), f"{PACKAGE}.sub": set(), f"{PACKAGE}.a": {f"{PACKAGE}.sub.b"},
                     f"{PACKAGE}.sub.b": {f"{PACKAGE}.a"}, f"{PACKAGE}.c": {f"{PACKAGE}.sub.b"}}
    assert cycles(graph) == [[f"{PACKAGE}.a", f"{PACKAGE}.sub.b"]]


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    message = "\n".join(f"{' -> '.join(_cycle_path(graph, c))}  (component: {', '.join(c)})" for c in found)
    assert not found, f"import cycles in {PACKAGE} (function-level imports included):\n{message}"


# The floors, lowest first, as docs/architecture.md (Layout) states them: imports point down, studio ->
# measure/integrations -> method -> engine -> errors/fileio; the entry points (cli, lm_eval_adapter, __main__) sit
# above them all. A module imports only from its own floor or below. The top level (`hopscotch_core`: __version__,
# the lazy re-exports) is on the ground floor.
FLOORS = {"errors": 0, "fileio": 0, "constants": 0, "engine": 1, "method": 2, "measure": 3, "integrations": 3,
          "studio": 4, "cli": 5, "lm_eval_adapter": 5, "__main__": 6}
# imports that point up on purpose, each with its reason
UPWARD = {
    # the job process body runs the CLI; nothing imports it, so this adds no cycle
    ("hopscotch_core.studio.jobrunner", "hopscotch_core.cli"),
    # the pipeline's held-out evaluation stage uses the measurement of the original vs the modified model
    ("hopscotch_core.method.pipeline", "hopscotch_core.measure.metrics"),
}


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else 0


def test_imports_point_down():
    graph = import_graph()
    up = sorted((a, b) for a, targets in graph.items() for b in targets
                if _floor(b) > _floor(a) and (a, b) not in UPWARD)
    assert not up, "imports that point up a floor:\n" + "\n".join(f"{a} -> {b}" for a, b in up)
