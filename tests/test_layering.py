"""The package's modules import each other in layers: no circle of imports."""

from __future__ import annotations

import ast
from pathlib import Path

import steadypool

SRC = Path(steadypool.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every steadypool module `path` imports anywhere: at the top, under
    TYPE_CHECKING, or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("steadypool"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("steadypool"):
                continue
            # `from . import _x` names a module; `from ._x import y` names _x.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(
                    sub
                    if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                    else target
                )
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    # A package's __init__ is the namespace users import, not a layer; an import of
    # "steadypool" itself (e.g. for __version__) points at it and is not followed.
    return {
        m: {t for t in _imports(p) if t in modules and t != "steadypool"}
        for m, p in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_circle_of_imports() -> None:
    """Every import between steadypool's modules runs down: the shared records
    (`_records`) sit below the backends, the watchdog and the exceptions, so no module
    reaches itself again by following imports of any kind."""
    graph = _graph()
    assert (
        "steadypool._records" in graph["steadypool._backends._base"] | graph["steadypool._watchdog"]
    )
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_checker_sees_a_circle() -> None:
    """The cycle finder is not blind: a made-up circle is found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
