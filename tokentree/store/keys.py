"""Content addresses of token prefixes.

A node is identified by the 16-byte blake2b hash of its whole token prefix, built
incrementally: a root hashes the vocabulary key with its token, a child hashes its parent's
key with its token. The same prefix therefore has the same key in every branch and session,
and the model-output cache keyed by it survives `db rebuild` (which may renumber nothing,
but never needs to: node ids are not part of any cache key).
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

KEY_SIZE = 16


def prefix_key(parent_key: bytes | None, token_id: int, vocab_key: str) -> bytes:
    """Key of the prefix `parent + [token_id]` (`parent_key` None: a one-token prefix)."""
    if token_id < 0 or token_id >= 1 << 32:
        raise ValueError(f"token id out of range: {token_id}")
    h = blake2b(digest_size=KEY_SIZE, person=b"tokentree-pfx1")
    if parent_key is None:
        h.update(b"R")
        h.update(vocab_key.encode("utf-8"))
        h.update(b"\x00")
    else:
        if len(parent_key) != KEY_SIZE:
            raise ValueError("parent_key must be 16 bytes")
        h.update(b"C")
        h.update(parent_key)
    h.update(token_id.to_bytes(4, "little"))
    return h.digest()


def prefix_keys(tokens: Sequence[int], vocab_key: str) -> list[bytes]:
    """Keys of every prefix of `tokens`: [key(tokens[:1]), key(tokens[:2]), ...]."""
    keys: list[bytes] = []
    parent: bytes | None = None
    for tok in tokens:
        parent = prefix_key(parent, tok, vocab_key)
        keys.append(parent)
    return keys
