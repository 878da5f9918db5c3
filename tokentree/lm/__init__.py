"""The model layer: the only package that imports torch and transformers.

Names are resolved lazily so that importing `tokentree.lm` (e.g. for type hints) stays cheap
and commands that never touch a model start instantly.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = ["Engine", "LoadedModel", "load_model", "pick_device"]

_WHERE = {"Engine": "engine", "LoadedModel": "loader", "load_model": "loader", "pick_device": "loader"}

if TYPE_CHECKING:
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import LoadedModel, load_model, pick_device


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"tokentree.lm.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tokentree.lm' has no attribute {name!r}")
