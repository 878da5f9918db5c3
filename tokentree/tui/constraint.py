"""How the screen says a regex constraint (r / R): the status bar's tag, the table's raw
column, its legend line and what an empty table means. Reads `Snapshot.constraint`."""

from __future__ import annotations

from tokentree.features.constraint.mask import nothing_allowed
from tokentree.core.snapshot import CandidateRow, ConstraintLine, Snapshot
from tokentree.tui.cells import fit, safe

NAME_W = 16  # a constraint's name in the status bar, at most

# status -> (status-bar attribute, legend attribute)
_ATTRS = {
    "live": ("status_regex_live", "regex_live"),
    "complete": ("status_regex_complete", "regex_complete"),
    "dead": ("status_regex_dead", "regex_dead"),
    "failed": ("status_regex_dead", "regex_dead"),
}


def filters(snap: Snapshot | None) -> bool:
    """The table lists only the tokens a constraint allows (and has a raw column)."""
    return snap is not None and snap.constraint is not None and snap.constraint.filters


def raw_cell(row: CandidateRow) -> str:
    return f"{row.raw * 100:6.2f}%" if row.raw is not None else "n/a"


def _said(line: ConstraintLine) -> str:
    if line.status == "complete" and line.can_continue:
        return "complete (may go on)"
    if line.status == "compiling":
        return "compiling\u2026"
    return line.status


def constraint_tag(line: ConstraintLine | None) -> tuple[str, str]:
    """The status bar's part, and its attribute ("" when no constraint is on or picked)."""
    if line is None:
        return "", "status"
    name = fit(safe(line.name), min(NAME_W, len(line.name)), keep="middle").rstrip()
    return f" \u2502 regex {name}: {_said(line)}", _ATTRS.get(line.status, ("status", ""))[0]


def constraint_legend(line: ConstraintLine | None) -> list:
    """The table's legend line for the constraint (empty: none to show)."""
    if line is None or line.status == "off":
        return []
    attr = _ATTRS.get(line.status, ("", "legend"))[1]
    head = [("legend", "regex "), (attr, f"{safe(line.name)} {_said(line)}")]
    if not line.filters:  # above where it was switched on: the table is the model's own
        return head + [("legend", f": {line.note}; the table is not filtered here")]
    if line.status in ("compiling", "failed"):
        return head + [("legend", f": {safe(line.note or '')}")]
    if line.status == "dead":
        return head + [("legend", ": no text can match any more; pop back, or r switches it off")]
    if line.allowed is None:
        return head
    text = f" \u00b7 prob renormalized over the {line.allowed} allowed of the top {line.top_k}"
    if line.vocab_allowed is not None and line.vocab_allowed > line.allowed:
        text += f" ({line.vocab_allowed:,} allowed in the vocabulary)"
    return head + [("legend", text + " \u00b7 raw: the model's own")]


def empty_note(line: ConstraintLine) -> str:
    """What the table says when the constraint leaves no candidate."""
    return nothing_allowed(line)
