"""`tokentree sessions`: the session list as an aligned table, or JSON for scripts."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Sequence

from tokentree.tree.text import one_line, shorten

__all__ = ["format_sessions", "iso_utc", "session_dict"]

PROMPT_WIDTH = 60


def _as_datetime(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime (naive values are UTC); None if unknown."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def iso_utc(value: Any) -> str | None:
    """A stored time as ISO 8601 UTC text ending in Z (unparseable text is passed through)."""
    dt = _as_datetime(value)
    if dt is None:
        return None if value is None else str(value)
    return dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _local(value: Any) -> str:
    dt = _as_datetime(value)
    if dt is None:
        return "-" if value is None else str(value)
    return dt.astimezone().strftime("%Y-%m-%d %H:%M")


def _sort_key(summary) -> tuple:
    dt = _as_datetime(summary.last_used_at) or _as_datetime(summary.created_at)
    stamp = dt.timestamp() if dt is not None else float("-inf")
    return (stamp, summary.id)


def _first_line(text: str | None, width: int) -> str:
    """The first line, shown as the tree pane shows text (tab ⇥, controls escaped)."""
    line = text.splitlines()[0] if text else ""
    return shorten(one_line(line).strip(), width)


def session_dict(summary) -> dict[str, Any]:
    """One session as plain JSON-ready data (times in ISO 8601 UTC)."""
    return {
        "id": summary.id,
        "created_at": iso_utc(summary.created_at),
        "last_used_at": iso_utc(summary.last_used_at),
        "model": summary.model_name,
        "fingerprint": summary.fingerprint,
        "n_branches": summary.n_branches,
        "n_nodes": summary.n_nodes,
        "first_line": summary.first_line or "",
        "prompt_sources": list(summary.prompt_sources or ()),
    }


def format_sessions(summaries: Sequence[Any], as_json: bool = False) -> str:
    """Sessions newest (last used) first: id, created, last used, model, branch and node counts,
    and the first line of the root prompt. With `as_json`, a JSON array of `session_dict`s.
    No trailing newline (the caller prints it)."""
    ordered = sorted(summaries, key=_sort_key, reverse=True)
    if as_json:
        return json.dumps([session_dict(s) for s in ordered], ensure_ascii=False, indent=2)
    if not ordered:
        return "No sessions yet. Start one with `tokentree --input FILE`."
    header = ("ID", "CREATED", "LAST USED", "MODEL", "BRANCHES", "NODES", "PROMPT")
    rows = [
        (
            str(s.id),
            _local(s.created_at),
            _local(s.last_used_at),
            s.model_name or "",
            str(s.n_branches),
            str(s.n_nodes),
            _first_line(s.first_line, PROMPT_WIDTH),
        )
        for s in ordered
    ]
    right = {0, 4, 5}  # numbers right-aligned
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell)
            elif i in right:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
