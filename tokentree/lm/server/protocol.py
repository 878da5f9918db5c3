"""What OpenAI-compatible servers send and expect, as pure functions over parsed JSON.

Three answer shapes for the next token's top log-probabilities:
- OpenAI's legacy completions: `logprobs.top_logprobs[0]` maps token TEXT to a log-prob.
  vLLM, asked `return_tokens_as_token_ids`, writes the keys as "token_id:123" instead;
  llama-cpp-python's server writes text (several ids may share a text, or decode to "").
- llama.cpp's llama-server: `logprobs.content[0].top_logprobs` is a list of
  {"id", "token", "bytes", "logprob"}: ids and raw bytes, nothing to resolve.
- vLLM's `prompt_logprobs`: one dict per prompt position (None for the first) mapping a token
  id (as a string) to {"logprob", "rank", "decoded_token"}; it holds the top-k and the
  prompt's own token with its rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .client import ServerError

_TOKEN_ID = "token_id:"


@dataclass
class TopLogprobs:
    """The next-token answer of one completion request."""

    by_id: dict[int, float]  # resolved ids -> log-prob
    all_logprobs: list[float]  # every log-prob the server sent, resolved or not (for entropy)
    pieces: dict[int, bytes] = field(default_factory=dict)  # raw bytes the server sent with ids


def models(data: object) -> list[dict]:
    """The served models of GET /v1/models."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in items):
        raise ServerError("the server's /v1/models answer has no model list: is it OpenAI-compatible?")
    return items


def tokens(data: object, what: str) -> list[int]:
    """The ids of a tokenize answer ({"tokens": [...]}; llama.cpp may send [{"id", "piece"}])."""
    found = data.get("tokens") if isinstance(data, dict) else None
    if isinstance(found, list):
        ids = [t.get("id") if isinstance(t, dict) else t for t in found]
        if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return ids
    raise ServerError(f"the server's {what} answer has no token list")


def next_logprobs(data: object, resolve: Callable[[str], int | None]) -> TopLogprobs:
    """The first generated position's top log-probabilities of a /v1/completions answer."""
    try:
        logprobs = data["choices"][0]["logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ServerError("the server's completion answer has no choices[0].logprobs") from None
    if not isinstance(logprobs, dict):
        raise ServerError("the server returned no log-probabilities: it does not support `logprobs` "
                          "(vLLM: start it with --max-logprobs 64)")
    content = logprobs.get("content")
    if isinstance(content, list) and content:  # llama-server
        return _content_style(content[0])
    tops = logprobs.get("top_logprobs")
    if not isinstance(tops, list) or not tops or not isinstance(tops[0], dict) or not tops[0]:
        raise ServerError("the server returned no top log-probabilities for the next token")
    out = TopLogprobs({}, [])
    for key, value in tops[0].items():
        lp = _number(value)
        out.all_logprobs.append(lp)
        token = int(key[len(_TOKEN_ID):]) if key.startswith(_TOKEN_ID) and key[len(_TOKEN_ID):].isdigit() else resolve(key)
        if token is not None and lp > out.by_id.get(token, float("-inf")):
            out.by_id[token] = lp
    return out


def _content_style(entry: object) -> TopLogprobs:
    tops = entry.get("top_logprobs") if isinstance(entry, dict) else None
    if not isinstance(tops, list) or not tops:
        raise ServerError("the server returned no top log-probabilities for the next token")
    out = TopLogprobs({}, [])
    for top in tops:
        if not isinstance(top, dict) or not isinstance(top.get("id"), int):
            raise ServerError("the server's top log-probabilities have no token ids")
        lp = _number(top.get("logprob"))
        out.all_logprobs.append(lp)
        out.by_id[top["id"]] = lp
        raw = top.get("bytes")
        if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            out.pieces[top["id"]] = bytes(raw)
    return out


def prompt_logprobs(data: object, count: int) -> list[dict[int, tuple[float, int | None]]]:
    """vLLM's prompt log-probs: for each position 1..count-1, id -> (log-prob, rank)."""
    try:
        rows = data["choices"][0]["prompt_logprobs"]
    except (KeyError, IndexError, TypeError):
        rows = None
    if not isinstance(rows, list) or len(rows) != count:
        raise ServerError("the server sent no prompt log-probabilities for every prompt token")
    out = []
    for row in rows[1:]:
        if not isinstance(row, dict):
            raise ServerError("the server's prompt log-probabilities are malformed")
        parsed = {}
        for key, value in row.items():
            lp = _number(value.get("logprob") if isinstance(value, dict) else value)
            rank = value.get("rank") if isinstance(value, dict) else None
            parsed[int(key)] = (lp, rank if isinstance(rank, int) else None)
        out.append(parsed)
    return out


def _number(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ServerError(f"the server sent a log-probability that is not a number: {str(value)[:40]!r}")
