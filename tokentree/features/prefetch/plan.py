"""Speculative prefetch: while the user reads the table, compute the children of the
candidates they are likely to append (the selected one first, then the others by rank).

A prefetched output is a cache row like any other (never an event): an append of that
candidate then finds its node's distribution cached and shows at once. The planner here
only reads; the explorer decides when a prefetch may run (never ahead of a key's own work).
"""

from __future__ import annotations

from tokentree.store import keys as prefix_keys

from tokentree.core.planner import OutputsJob
from tokentree.core.view import TreeView


def prefetch_jobs(view: TreeView, path, candidates: list[int], selected: int | None, count: int,
                  busy: set[bytes]) -> list[OutputsJob]:
    """One-step jobs for the children of up to `count` candidates at the path's tip whose
    outputs are not cached and not already being computed (`busy`: their keys)."""
    if count <= 0 or not candidates:
        return []
    order = ([selected] if selected in candidates else []) + [t for t in candidates if t != selected]
    order = order[:count]
    tip_keys = tuple(n.prefix_key for n in path)
    tokens = tuple(n.token_id for n in path)
    child_keys = {t: prefix_keys.prefix_key(tip_keys[-1], t, view.vocab_key) for t in order}
    cached = view.probs_for(list(child_keys.values()))
    known = view.known_byte_ids()
    jobs = []
    for token in order:
        key = child_keys[token]
        if key in cached or key in busy:
            continue
        jobs.append(OutputsJob(keys=tip_keys + (key,), tokens=tokens + (token,), missing=(len(tokens),),
                               known_bytes=known))
    return jobs
