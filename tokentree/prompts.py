"""Prompt files: reading them (every way a file can be unusable is a clear InputError) and
saving a branch's text as a new one."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from tokentree.errors import InputError
from tokentree.paths import safe_stem, saved_prompts_dir
from tokentree.resources import resource_path

MAX_PROMPT_BYTES = 4 * 1024 * 1024  # far beyond any model's context; stops a stray huge file early


def read_prompt(path: str | Path) -> str:
    """The text of a prompt file; one trailing newline (an editor's) is dropped."""
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


def save_prompt(text: str) -> Path:
    """Write `text` to a new file in the saved-prompts dir, named after its start; never
    overwrites (a `-2`, `-3`, ... suffix instead). Raises OSError."""
    directory = saved_prompts_dir()
    stem = safe_stem(text)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for n in itertools.count(1):
        path = directory / (f"{stem}.txt" if n == 1 else f"{stem}-{n}.txt")
        try:
            # O_EXCL: never overwrite (nor follow a planted link); 0600: prompts are private.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    raise AssertionError("unreachable")
