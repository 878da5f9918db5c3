"""The exploration store: an append-only event log in SQLite, projections rebuilt from it,
and the model-output cache. No torch and no urwid here."""

from tokentree.errors import ConcurrencyError, SessionNotFound, StoreError

from .events import Event
from .keys import prefix_key, prefix_keys
from .store import Store
from .types import Branch, Node, RootPrompt, SessionInfo, SessionSummary

__all__ = [
    "Branch",
    "ConcurrencyError",
    "Event",
    "Node",
    "SessionInfo",
    "SessionNotFound",
    "SessionSummary",
    "Store",
    "StoreError",
    "prefix_key",
    "prefix_keys",
    "RootPrompt",
]
