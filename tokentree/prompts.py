"""Prompt files: reading them (every way a file can be unusable is a clear InputError) and
saving a branch's text as a new one."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from tokentree.errors import InputError
from tokentree.paths import safe_stem, saved_prompts_dir
from tokentree.resources import resource_path

MAX_PROMPT_BYTES = 4 * 1024 * 1024  # far beyond any model's context; stops a stray huge file early


def read_prompt(path: str | Path) -> str:
    """The text of a prompt file. Line endings are normalised (CRLF and a lone CR become LF:
    a file saved on Windows gives the same tokens as on Linux), then one trailing newline
    (an editor's) is dropped."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if p.is_dir():
        raise InputError(f"input is a directory, not a prompt file: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_PROMPT_BYTES:
            raise InputError(f"input file is too large ({size:,} bytes; limit {MAX_PROMPT_BYTES:,}): {p}")
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read input file {p}: {exc.strerror}") from None
    if b"\x00" in data:
        raise InputError(f"input looks like a binary file (it contains NUL bytes): {p}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"input is not UTF-8 text (bad byte at offset {exc.start}): {p}") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError(f"input file is empty: {p}")
    return text[:-1] if text.endswith("\n") else text


def default_prompt_path(example_prompt: str) -> Path:
    """Resolve `[prompt] example_prompt`: as given if it exists, else the prompt shipped with tokentree."""
    given = Path(example_prompt).expanduser()
    if given.exists() or given.is_absolute():
        return given
    shipped = resource_path("prompts") / given.name
    return shipped if shipped.exists() else given


def save_prompt(text: str) -> tuple[Path, bool]:
    """Save `text` in the saved-prompts dir as a file named after its start; returns
    (path, created). When a file of that name (`stem.txt`, `stem-N.txt`) already holds exactly
    this text, that file is returned with created=False and nothing is written. Otherwise a
    new file, never overwriting one (a `-2`, `-3`, ... suffix instead). Raises OSError."""
    directory = saved_prompts_dir()
    stem = safe_stem(text)
    data = text.encode("utf-8")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    same = _same_text(directory, stem, data)
    if same is not None:
        return same, False
    for n in itertools.count(1):
        path = directory / (f"{stem}.txt" if n == 1 else f"{stem}-{n}.txt")
        try:
            # O_EXCL: never overwrite (nor follow a planted link); 0600: prompts are private.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path, True
    raise AssertionError("unreachable")


def _same_text(directory: Path, stem: str, data: bytes) -> Path | None:
    """The first of `stem.txt`, `stem-2.txt`, ... that holds exactly `data` (a regular file,
    not a link: a planted link is never read), or None."""
    name = re.compile(re.escape(stem) + r"(?:-([0-9]+))?\.txt")
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        m = name.fullmatch(entry.name)
        if m is not None:
            found.append((int(m.group(1) or 1), entry))
    for _, entry in sorted(found, key=lambda f: f[0]):
        try:
            if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_size != len(data):
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                if f.read(len(data) + 1) == data:
                    return Path(entry.path)
        except OSError:
            continue
    return None
