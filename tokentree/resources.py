"""Locate files shipped with tokentree: in a wheel they live in tokentree/_data,
in a source checkout at the repository root."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """Path of a shipped resource ("migrations", "config.toml", "prompts")."""
    packaged = _PACKAGE / "_data" / name
    if packaged.exists():
        return packaged
    return _PACKAGE.parent / name
