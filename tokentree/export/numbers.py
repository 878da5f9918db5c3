"""Numbers as the text, dot and markdown exports write them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tokentree.export.loader import ExportNode


def fmt_prob(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p >= 0.001 or p == 0:
        return f"{p:.3f}"
    return f"{p:.1e}"


def _fmt_logp(lp: float) -> str:
    if lp == -math.inf:
        return "-inf"
    if abs(lp) < 0.005:
        return "0.00"
    return f"{lp:.2f}"


def logp_text(total: float, known: int, missing: int) -> str:
    """A summed log-probability; the tokens whose probability is unknown are counted."""
    if missing and not known:
        return "n/a"
    text = _fmt_logp(total)
    if missing:
        text += f" ({missing} n/a)"
    return text


def nodes_logp(nodes: Sequence[ExportNode]) -> str:
    """Sum of log-probabilities of the nodes' tokens (a prompt's first token has none)."""
    total = 0.0
    known = missing = 0
    for node in nodes:
        if node.prob is None:
            if node.parent is not None:
                missing += 1
            continue
        known += 1
        total += math.log(node.prob) if node.prob > 0 else -math.inf
    return logp_text(total, known, missing)


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
