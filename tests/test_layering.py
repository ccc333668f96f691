"""Layers point down: every import inside the package (also those inside functions) goes to a lower layer or
stays in its own subpackage, and no two modules import each other, directly or round a cycle.
The order is documented in docs/architecture.md (section "Layers")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "napari_gradcamo"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Lowest first. A unit (subpackage or top-level module) may import units of lower layers and its own modules;
#: units in one layer do not import each other.
LAYERS: list[set[str]] = [
    {"progress"},
    {"io"},
    {"segment", "models"},
    {"crops"},
    {"output"},
    {"audit"},
    {"profiles", "train"},
    {"synthetic"},
    {"plate", "virtual_stain", "demo", "_sample_data"},
    {"_results_io"},  # reopens a results folder as napari layers, coloured as the samples are
    {"_demo_viewer"},
    {"_qt", "cli"},
]
#: What any module may import from the package's root: its version (no code runs).
ROOT_NAMES = {"__version__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every ``napari_gradcamo.*`` module a file imports, at module level or inside functions."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            if target == PACKAGE:  # from napari_gradcamo import x: a submodule or a root name
                for alias in node.names:
                    if alias.name not in ROOT_NAMES:
                        found.add(f"{PACKAGE}.{alias.name}")
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if (SOURCE.parent / f"{target}.{a.name}".replace(".", "/")).exists()
                      or (SOURCE.parent / (f"{target}.{a.name}".replace(".", "/") + ".py")).exists()}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SOURCE.rglob("*.py")}
    return {name: {t for t in imports_of(path) if t in modules and t != name} for name, path in modules.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def rank(name: str) -> int:
    ranks = [i for i, layer in enumerate(LAYERS) if name in layer]
    assert ranks, f"{name} has no layer: add it to LAYERS here and to docs/architecture.md"
    return ranks[0]


def test_every_subpackage_has_a_layer():
    units = {unit(m) for m in graph()} - {"<root>"}
    for name in units:
        rank(name)
    assert not set().union(*LAYERS) - units, "LAYERS names a unit the package no longer has"


def test_imports_point_down():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            a, b = unit(module), unit(target)
            if "<root>" in (a, b) or a == b:
                continue
            if rank(b) >= rank(a):
                upward.append(f"{module} imports {target} ({a} is not above {b})")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_between_modules_or_subpackages():
    edges = graph()
    edges = {m: {t for t in ts if t != PACKAGE} for m, ts in edges.items() if m != PACKAGE}
    cycle = find_cycle(edges)
    assert cycle is None, "module import cycle: " + " -> ".join(cycle)
    units: dict[str, set[str]] = {}
    for module, targets in edges.items():
        units.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    cycle = find_cycle(units)
    assert cycle is None, "subpackage import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The checks above can fail: an upward import inside a function, a relative import and a cycle are seen."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    path = tmp_path / "images.py"
    path.write_text("def f():\n    from napari_gradcamo.audit.run import AuditSettings\n    from .atomic import write_text\n")
    found = imports_of(path, "napari_gradcamo.io.images")
    assert found == {"napari_gradcamo.audit.run", "napari_gradcamo.io.atomic"}
    assert rank(unit("napari_gradcamo.audit.run")) > rank(unit("napari_gradcamo.io.images"))


@pytest.mark.parametrize("module", ["napari_gradcamo._qt", "napari_gradcamo._qt.layers"])
def test_importing_qt_helpers_loads_no_dock(module):
    code = (f"import sys; import {module}; "
            "print(sorted(m for m in sys.modules if m.endswith(('_widget', 'profiles', 'plate_dock'))"
            " and m.startswith('napari_gradcamo._qt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing {module} loaded docks: {out}"
