"""Where tokentree keeps its data. TOKENTREE_HOME overrides everything (tests use it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

APP = "tokentree"


def data_dir() -> Path:
    home = os.environ.get("TOKENTREE_HOME")
    return Path(home).expanduser() if home else platformdirs.user_data_path(APP)


def ensure_data_dir() -> Path:
    path = data_dir()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def default_db_path() -> Path:
    return data_dir() / "tokentree.db"


def db_path(flag: str | os.PathLike[str] | None = None) -> Path:
    """The database file: the --db flag (with ~ expanded) when given, else the default."""
    return Path(flag).expanduser() if flag else default_db_path()


def models_dir() -> Path:
    """Model files tokentree makes (the bundled GGUF dequantized for transformers): 500 MB and
    more, so TOKENTREE_MODELS may put them elsewhere (the tests share one across their data dirs)."""
    override = os.environ.get("TOKENTREE_MODELS")
    return Path(override).expanduser() if override else data_dir() / "models"


def log_path() -> Path:
    return data_dir() / "tokentree.log"


def user_config_path() -> Path:
    home = os.environ.get("TOKENTREE_HOME")
    if home:
        return Path(home).expanduser() / "config.toml"
    return platformdirs.user_config_path(APP) / "config.toml"


def saved_prompts_dir() -> Path:
    return data_dir() / "prompts"


def safe_stem(text: str, limit: int = 40) -> str:
    """A file name stem from text: lowercase ASCII words joined by '-', at most `limit`
    characters, cut between words (only a first word longer than `limit` is cut inside),
    never empty (`branch`), never a path."""
    words: list[str] = []
    length = -1  # the joined length so far (no '-' before the first word)
    for m in re.finditer(r"[a-z0-9]+", text.lower()):
        word = m.group()
        if length + 1 + len(word) > limit:
            if not words:
                words.append(word[:limit])
            break
        words.append(word)
        length += 1 + len(word)
    return "-".join(words) or "branch"
