"""Imports inside tokentree point one way: no two modules import each other, directly or
through a cycle.

The graph is read from the source with `ast` (nothing is imported), so an import inside a
function counts as much as one at the top of a module, and so does one under
`if TYPE_CHECKING:` (it is still a dependency, just a lazy one).

How an import statement becomes edges (module -> module):

- `import tokentree.a.b` -> `tokentree.a.b`. A package stands for its `__init__.py`.
- `from tokentree.a import x` -> `tokentree.a.x` when that is a submodule, else `tokentree.a`.
- Relative imports are resolved against the importing module's package first
  (`from .x import y` in `tokentree/store/store.py` is `from tokentree.store.x import y`).
- The parent packages that Python runs on the way (`tokentree/a/__init__.py` for
  `import tokentree.a.b`) are NOT edges. Otherwise every `__init__` that imports its own
  submodules would be "in a cycle" with each of them as soon as one submodule imports a sibling.
- A submodule that imports a name from its OWN package (`from tokentree.store import Store` in
  `tokentree/store/maintenance.py`) gets the edge to the sibling the package's `__init__`
  re-exports it from (`tokentree.store.store`), not to the `__init__`: that is a sibling import
  written through the package. From outside the package the same import is an edge to the
  package's `__init__`, which is what it runs.
- Names outside tokentree (the standard library, urwid, torch) are not in the graph.

A cycle is reported as the chain of modules, e.g. `tokentree.cli -> tokentree.launch -> tokentree.cli`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "tokentree"


def module_files(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name -> file, for every .py under the package (a package is its __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str | None:
    """The absolute module name of a `from X import ...` statement."""
    if node.level == 0:
        return node.module
    package = importer if _is_package(importer, modules) else importer.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None  # beyond the top-level package: not ours
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _imports(tree: ast.AST, importer: str, modules: dict[str, Path]):
    """(module, name or None) for every import statement anywhere in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, modules)
            if source is not None:
                for alias in node.names:
                    yield source, alias.name


def _reexports(modules: dict[str, Path], trees: dict[str, ast.AST]) -> dict[str, dict[str, tuple[str, str]]]:
    """package -> {name: (module it is imported from, its name there)} from each __init__."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for name, tree in trees.items():
        if not _is_package(name, modules):
            continue
        table = out.setdefault(name, {})
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node, name, modules)
                if source is None:
                    continue
                for alias in node.names:
                    if alias.name != "*":
                        table[alias.asname or alias.name] = (source, alias.name)
    return out


def _target(source: str, name: str | None, importer: str, modules, reexports) -> str | None:
    """The module an imported (source, name) pair is an edge to, or None if not ours."""
    seen = set()
    while True:
        if name is not None and f"{source}.{name}" in modules:
            return f"{source}.{name}"  # a submodule
        if source not in modules:
            return None
        # A submodule importing from its own package: follow the __init__'s re-export.
        inside = importer.startswith(source + ".")
        if name is None or not inside or name not in reexports.get(source, {}) or (source, name) in seen:
            return source
        seen.add((source, name))
        source, name = reexports[source][name]


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = module_files(root)
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in modules.items()}
    reexports = _reexports(modules, trees)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for importer, tree in trees.items():
        for source, name in _imports(tree, importer, modules):
            target = _target(source, name, importer, modules, reexports)
            if target is not None and target != importer:
                graph[importer].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per back edge a depth-first search meets."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles_in_tokentree():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


# ---------------------------------------------------------------- the checker itself

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "tokentree" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "tokentree"


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "cli.py": "def run():\n    from tokentree.launch import launch\n",
        "launch.py": "import tokentree.paths\n",
        "paths.py": "from .cli import run\n",
    })
    graph = import_graph(pkg)
    assert graph["tokentree.launch"] == {"tokentree.paths"}
    assert graph["tokentree.paths"] == {"tokentree.cli"}  # relative import resolved
    assert find_cycles(graph) == [["tokentree.cli", "tokentree.launch", "tokentree.paths", "tokentree.cli"]]


def test_checker_package_rules(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "store/__init__.py": "from .store import Store\nfrom .events import Event\n",
        "store/events.py": "",
        "store/store.py": "from tokentree.store import events\n",  # a submodule, not the package
        "store/maintenance.py": "from tokentree.store import Store\n",  # a sibling via the package
        "explorer.py": "from tokentree.store import Store\n",  # from outside: the package
        "export.py": "import tokentree.explorer\n",
    })
    graph = import_graph(pkg)
    assert graph["tokentree.store.store"] == {"tokentree.store.events"}
    assert graph["tokentree.store.maintenance"] == {"tokentree.store.store"}
    assert graph["tokentree.explorer"] == {"tokentree.store"}
    assert graph["tokentree.store"] == {"tokentree.store.store", "tokentree.store.events"}
    assert find_cycles(graph) == []
    # From outside, the package's __init__ does run: a way back from a submodule is a cycle.
    (pkg / "store" / "events.py").write_text("from tokentree.export import x\n")
    assert find_cycles(import_graph(pkg)) == [[
        "tokentree.explorer", "tokentree.store", "tokentree.store.events", "tokentree.export",
        "tokentree.explorer",
    ]]


def test_registry_and_keymap_import_without_urwid():
    """The launcher checks [keys] against the registry before urwid (and the model) load."""
    code = ("import sys, tokentree.commands, tokentree.tui.keymap, tokentree.launch; "
            "bad = [m for m in ('urwid', 'torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
