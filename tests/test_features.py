"""Features keep to their own state: a feature module never reads or writes another
object's private attributes (the core's or another feature's), never imports a private
name from another module, and never imports another feature (they talk through the
core's hooks). Read from the source with `ast`, like test_imports.py: nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokentree.commands import COMMANDS, TARGETS
from tokentree.core.feature import Feature
from tokentree.features.standard import FEATURES

PACKAGE = Path(__file__).resolve().parents[1] / "tokentree"
FEATURE_DIR = PACKAGE / "features"
REGISTRY = FEATURE_DIR / "standard.py"  # lists every feature: the one module that imports them all


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(source: str) -> list[tuple[int, str]]:
    """(line, what) for each access to a private attribute of anything but `self` (and
    `cls`), and each import of a private name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append((node.lineno, f"{ast.unparse(owner)}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}"))
    return found


def feature_of(path: Path) -> str:
    """The feature a module belongs to: its package under features/, or its own name."""
    rel = path.relative_to(FEATURE_DIR)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_features(source: str, path: Path) -> set[str]:
    """The features (by feature_of) a module under features/ imports."""
    found = set()
    package = ".".join(("tokentree", *path.relative_to(PACKAGE).parent.parts))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["tokentree", "features"] and len(parts) > 2:
                found.add(parts[2])
    return found


FEATURE_FILES = sorted(FEATURE_DIR.rglob("*.py"))
CORE_FILES = [PACKAGE / "core" / "explorer.py", PACKAGE / "core" / "feature.py", PACKAGE / "core" / "models.py"]


@pytest.mark.parametrize("path", FEATURE_FILES + CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reaches_into_private_state(path):
    assert private_reaches(path.read_text()) == []


@pytest.mark.parametrize("path", [p for p in FEATURE_FILES if p != REGISTRY],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_feature_imports_no_other_feature(path):
    own = feature_of(path)
    assert imported_features(path.read_text(), path) - {own, "__init__"} == set()


def test_the_checks_catch_what_they_are_for():
    reach = "class F:\n    def f(self):\n        self.core._fill = None\n        x = other._state\n        self._mine = 1\n"
    assert [what for _, what in private_reaches(reach)] == ["self.core._fill", "other._state"]
    assert private_reaches("from tokentree.core.explorer import _helper\n") == [
        (1, "from tokentree.core.explorer import _helper")]
    path = FEATURE_DIR / "fill.py"
    assert imported_features("from tokentree.features.search import Search\nfrom .sample import Sample\n", path) == {
        "search", "sample"}
    assert imported_features("from .diff import x\n", FEATURE_DIR / "compare" / "feature.py") == {"compare"}


def test_every_feature_is_a_registry_target_and_every_target_exists():
    names = [f.name for f in FEATURES]
    assert len(set(names)) == len(names) and all(issubclass(f, Feature) and f.name for f in FEATURES)
    used = {c.target for c in COMMANDS}
    assert used <= set(TARGETS)
    assert set(TARGETS) - {"explorer", "app"} <= set(names)  # a target names a real feature


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
