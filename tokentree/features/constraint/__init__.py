"""Regex constraints (`r` / `R`): explore only the tokens that keep the text matching a
regular expression, e.g. an ISO date.

- `catalog`: where constraints come from (prompts/structs/*.txt, the `[structs]` config
  table) and how a pattern is checked;
- `index`: llguidance over a model's vocabulary: where a text stands against a pattern
  (live, complete, dead) and which tokens may come next; the vocabulary's token table is
  kept in the data dir.

No torch, no urwid: the core and the exports use it.
"""

from __future__ import annotations

from tokentree.errors import TokentreeError

# A constraint's state after the text since it was switched on.
LIVE = "live"  # a prefix of some match: more text can complete it
COMPLETE = "complete"  # the text matches the whole pattern (it may still go on, e.g. an e-mail)
DEAD = "dead"  # no continuation can match any more


class ConstraintError(TokentreeError):
    """A constraint that cannot be used: a bad pattern or file, an unknown name, a
    vocabulary that cannot spell it. The message is one line."""
