"""What a branch's regex constraint lets follow one node: the table's filter (Screen.candidate_rows
applies it), and the one line that says why nothing may follow."""

from __future__ import annotations

from dataclasses import dataclass

from tokentree.core.snapshot import ConstraintLine

from . import COMPLETE, DEAD
from .index import Position, TextPosition


@dataclass(frozen=True)
class Mask:
    """What a branch's constraint lets follow one node. With `filters`, the table lists only
    the tokens `allows` accepts, with probabilities renormalized by `mass` (the model's raw
    probability of the allowed tokens among the cached top K)."""

    line: ConstraintLine
    filters: bool
    position: Position | TextPosition | None = None  # None: nothing is allowed (it failed, or no bytes yet)
    mass: float = 0.0

    def allows(self, token: int) -> bool:
        return self.position is not None and self.position.allows(token)

    def renormalized(self, prob: float | None) -> float | None:
        return None if prob is None or self.mass <= 0.0 else prob / self.mass

    def blocked(self) -> str:
        """Why no candidate may follow (the status line's words)."""
        return nothing_allowed(self.line)


def nothing_allowed(line: ConstraintLine) -> str:
    name = line.name
    if line.status == "compiling":
        return f"regex {name}: {line.note} (a moment)"
    if line.status == "failed":
        return f"regex {name} cannot be used with this model (r switches it off)"
    if line.status == DEAD:
        return f"regex {name} is dead here: the text since it was switched on cannot match"
    if line.status == COMPLETE and not line.can_continue:
        return (f"regex {name} is complete: only an end-of-text token may follow, and none is in the "
                f"top {line.top_k} (r switches it off)")
    if line.vocab_allowed == 0:
        return f"no token of the model's vocabulary keeps regex {name} matching (r switches it off)"
    more = f"; {line.vocab_allowed:,} in the vocabulary would" if line.vocab_allowed else ""
    return f"no token of the top {line.top_k} keeps regex {name} matching ({more.lstrip('; ')}{'; ' if more else ''}r switches it off)"
