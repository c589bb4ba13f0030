"""The package's layers (docs/design.md, "Layers"): every module imports only its own
layer or lower ones, and no import cycle exists, not even through an `__init__`."""

from __future__ import annotations

import ast
from pathlib import Path

import picluster

PACKAGE = Path(picluster.__file__).resolve().parent

# Lowest first.  A subpackage is one entry: everything in it shares its layer.
LAYERS: list[tuple[str, ...]] = [
    ("version", "settings", "layout", "files", "proc", "retry", "bounded", "timespec"),
    ("gitstore",),
    ("identity", "signing", "trust", "schema", "tasks", "registry", "queue", "succession",
     "healthfile", "broadcast", "plugins", "revoke", "schedules", "results", "wakeup"),
    ("ansible", "apply", "ganglia", "mpi", "playbook_task", "cluster_files"),
    ("master",),
    ("node",),
    ("provision",),
    ("lab",),
    ("cli", "__init__", "__main__"),
]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name; a package by its own name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The picluster modules `name` imports, anywhere in it (function level too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                # `from picluster import layout` imports a module; `from picluster.gitstore
                # import Put` imports the subpackage's __init__.
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return {module for module in found if module in MODULES}


def _layer(name: str) -> int:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for number, members in enumerate(LAYERS):
        if top in members:
            return number
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and to docs/design.md")


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
              for name, targets in GRAPH.items() for target in sorted(targets)
              if _layer(target) > _layer(name)]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name):], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(GRAPH[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def test_modules_in_a_subpackage_import_their_siblings_directly() -> None:
    """Not through their own package's __init__, which imports them."""
    through_init = [f"{name} imports {target}" for name, targets in GRAPH.items()
                    for target in targets
                    if MODULES[target].name == "__init__.py" and name.startswith(target + ".")]
    assert through_init == []
