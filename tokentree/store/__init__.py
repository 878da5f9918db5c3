"""The exploration store: an append-only event log in SQLite, projections rebuilt from it,
and the model-output cache. No torch and no urwid here.

Modules: ``store`` (the Store facade), ``commands`` (the write side), ``reads`` (Reader: every
read query), ``events`` (typed events and their payloads), ``projector`` (the only writer of
the projections), ``schema``, ``cache``, ``files`` (file checks, SQLite error messages),
``engine``, ``migrate``, ``maintenance`` (db rebuild/check/backup), ``keys``, ``types``.
"""

from tokentree.errors import ConcurrencyError, SessionNotFound, StaleCommand, StoreError

from .events import Event
from .keys import prefix_key, prefix_keys
from .reads import Reader
from .store import Store
from .types import Branch, Node, RootPrompt, SessionInfo, SessionSummary

__all__ = [
    "Branch",
    "ConcurrencyError",
    "Event",
    "Node",
    "Reader",
    "RootPrompt",
    "SessionInfo",
    "SessionNotFound",
    "SessionSummary",
    "StaleCommand",
    "Store",
    "StoreError",
    "prefix_key",
    "prefix_keys",
]
