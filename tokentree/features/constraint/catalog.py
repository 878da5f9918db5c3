"""Where regex constraints come from, and how a pattern is checked.

- prompts/structs/*.txt, shipped with tokentree: one regular expression per file, named after
  the file (iso_date.txt is `iso_date`). Lines that start with `#` are comments (a pattern
  that starts with `#` writes it `\\#` or `[#]`); the one other non-blank line is the pattern,
  taken as written (spaces included).
- the `[structs]` table of config.toml: `name = 'pattern'` (a TOML literal string keeps
  backslashes as they are); a name there replaces a file's constraint of the same name.

A pattern always matches the whole text written since the constraint was switched on (as
Python's `re.fullmatch` does), so a leading `^` and a trailing `$` are allowed and dropped.
It must be valid for Python's `re` and compile with llguidance (no lookarounds, word boundaries or
backreferences). Write digits as `[0-9]`: `\\d` also matches other scripts' digits, as in
Python.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tokentree.resources import resource_path

from . import ConstraintError

MAX_PATTERN = 4000  # characters; far beyond any useful constraint, it stops a stray paste early
MAX_FILE = 64 * 1024
NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True)
class Struct:
    """One constraint of the catalog."""

    name: str
    pattern: str  # as matched: anchors dropped
    source: str  # the file, or "config [structs]"


def struct_dir() -> Path:
    return resource_path("prompts") / "structs"


def normalize_pattern(pattern: str) -> str:
    """The pattern without a leading `^` and a trailing unescaped `$` (it matches the whole text anyway)."""
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$"):
        backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
        if backslashes % 2 == 0:
            pattern = pattern[:-1]
    return pattern


def check_pattern(pattern: object, *, syntax_only: bool = False) -> str:
    """The pattern as matched (anchors dropped). ConstraintError, one line, when it is empty,
    too long, not valid for Python's `re`, or (unless `syntax_only`) not compiled by llguidance."""
    if not isinstance(pattern, str):
        raise ConstraintError("a pattern must be text")
    if len(pattern) > MAX_PATTERN:
        raise ConstraintError(f"the pattern is too long ({len(pattern)} characters; limit {MAX_PATTERN})")
    pattern = normalize_pattern(pattern)
    if not pattern:
        raise ConstraintError("the pattern is empty")
    try:
        re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ConstraintError(f"not a valid regular expression: {exc.msg}{where}") from None
    except (RecursionError, OverflowError):
        raise ConstraintError("the regular expression is too complex") from None
    if not syntax_only:
        from .index import byte_index

        byte_index(pattern)  # ConstraintError when llguidance cannot compile it
    return pattern


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConstraintError(f"bad constraint name {name!r}: 1 to 40 letters, digits, '_', '.' or '-'")
    return name


def read_struct_file(path: Path) -> Struct:
    """The constraint in one file (ConstraintError, one line naming the file, when it is unusable)."""
    where = path.name
    try:
        data = path.read_bytes()[: MAX_FILE + 1]
    except OSError as exc:
        raise ConstraintError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE:
        raise ConstraintError(f"{where}: too large for one regular expression (over {MAX_FILE:,} bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConstraintError(f"{where}: not UTF-8 text (bad byte at offset {exc.start})") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    patterns = [line for line in lines if line.strip() and not line.startswith("#")]
    if not patterns:
        raise ConstraintError(f"{where}: no pattern in it (one regular expression per file; # starts a comment)")
    if len(patterns) > 1:
        raise ConstraintError(f"{where}: {len(patterns)} pattern lines (one regular expression per file; "
                              "# starts a comment)")
    try:
        name = check_name(path.stem)
        pattern = check_pattern(patterns[0])
    except ConstraintError as exc:
        raise ConstraintError(f"{where}: {exc}") from None
    return Struct(name, pattern, str(path))


def load_catalog(config_structs: Mapping[str, str] | None = None,
                 directory: Path | None = None) -> tuple[list[Struct], list[str]]:
    """Every usable constraint (files by name, then the config's in table order; a config
    entry replaces a file of the same name) and one line per one that is not."""
    directory = struct_dir() if directory is None else directory
    found: dict[str, Struct] = {}
    problems: list[str] = []
    files = sorted(directory.glob("*.txt")) if directory.is_dir() else []
    for path in files:
        try:
            struct = read_struct_file(path)
        except ConstraintError as exc:
            problems.append(str(exc))
            continue
        found[struct.name] = struct
    for name, pattern in (config_structs or {}).items():
        try:
            found[check_name(name)] = Struct(name, check_pattern(pattern), "config [structs]")
        except ConstraintError as exc:
            problems.append(f"structs.{name}: {exc}")
    return list(found.values()), problems


def find(structs: list[Struct], name: str) -> Struct:
    for struct in structs:
        if struct.name == name:
            return struct
    known = ", ".join(s.name for s in structs) or "none"
    raise ConstraintError(f"unknown constraint {name!r} (known: {known})")
