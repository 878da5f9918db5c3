"""Resolve a session reference ("last" or an id) to a session id."""

from __future__ import annotations

from tokentree.errors import SessionNotFound


def resolve_session(store, ref: str | int) -> int:
    if str(ref) == "last":
        session_id = store.latest_session_id()
        if session_id is None:
            raise SessionNotFound(f"no sessions yet in {store.path}; start one with `tokentree --input FILE`")
        return session_id
    try:
        session_id = int(ref)
    except ValueError:
        raise SessionNotFound(f"not a session id: {ref!r} (use `last` or a number from `tokentree sessions`)") from None
    store.session(session_id)  # raises SessionNotFound with a clear message
    return session_id
