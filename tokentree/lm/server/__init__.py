"""An OpenAI-compatible completion server as a tokentree backend."""

from .backend import NotScorable, ServerBackend
from .client import ServerError
from .connect import connect

__all__ = ["NotScorable", "ServerBackend", "ServerError", "connect"]
