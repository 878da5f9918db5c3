"""Model-output cache: compact binary rows keyed by (prefix key, model).

Per node: top-K ids as packed little-endian uint32, their probabilities as packed
little-endian float32 (about 8*K bytes: 512 bytes at K = 64), entropy, normalized entropy,
and the node's own token probability/rank. Never a full-vocabulary row. Probabilities read
back are float32-rounded; everything else round-trips exactly. Per analysed node: the
attention influence as packed float32 (NaN on disk = None, a position without a value) with
its sink share, and the logit lens.

This is not a projection: ``db rebuild`` keeps it, and it is shared by every session.
Functions here take an open SQLAlchemy Connection; the Store owns transactions.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tokentree.outputs import Analysis, Distribution, NodeOutput

from .schema import ModelRow, NodeAnalysisRow, NodeOutputRow, TokenBytesRow

_CHUNK = 500  # bound on SQL parameters per IN (...)
_SWAP = sys.byteorder != "little"


def pack_u32(values: Sequence[int]) -> bytes:
    a = array("I", values)
    if a.itemsize != 4:  # pragma: no cover - exotic platforms
        a = array("L", values)
    if _SWAP:  # pragma: no cover
        a.byteswap()
    return a.tobytes()


def unpack_u32(blob: bytes) -> tuple[int, ...]:
    a = array("I")
    a.frombytes(blob)
    if _SWAP:  # pragma: no cover
        a.byteswap()
    return tuple(a)


def pack_f32(values: Iterable[float]) -> bytes:
    a = array("f", values)
    if _SWAP:  # pragma: no cover
        a.byteswap()
    return a.tobytes()


def unpack_f32(blob: bytes) -> tuple[float, ...]:
    a = array("f")
    a.frombytes(blob)
    if _SWAP:  # pragma: no cover
        a.byteswap()
    return tuple(a)


def pack_optional_f32(values: Iterable[float | None]) -> bytes:
    """float32s with None stored as NaN (a value that is never a real one here)."""
    return pack_f32(math.nan if v is None else v for v in values)


def unpack_optional_f32(blob: bytes) -> tuple[float | None, ...]:
    return tuple(None if math.isnan(v) else v for v in unpack_f32(blob))


def _chunks(seq: Sequence, n: int = _CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# --------------------------------------------------------------------------- models


def model_id(conn: Connection, fingerprint: str, *, create: bool) -> int | None:
    mid = conn.execute(select(ModelRow.id).where(ModelRow.fingerprint == fingerprint)).scalar()
    if mid is None and create:
        mid = conn.execute(insert(ModelRow).values(fingerprint=fingerprint)).inserted_primary_key[0]
    return mid


# --------------------------------------------------------------------------- node outputs


def get_outputs(conn: Connection, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, NodeOutput]:
    mid = model_id(conn, fingerprint, create=False)
    out: dict[bytes, NodeOutput] = {}
    if mid is None:
        return out
    keys = list(dict.fromkeys(prefix_keys))
    t = NodeOutputRow
    for chunk in _chunks(keys):
        rows = conn.execute(
            select(t.prefix_key, t.token_prob, t.token_rank, t.entropy, t.norm_entropy, t.entropy_exact, t.top_ids,
                   t.top_probs).where(t.model_id == mid, t.prefix_key.in_(chunk))
        )
        for key, tprob, trank, ent, nent, exact, ids, probs in rows:
            out[bytes(key)] = NodeOutput(
                token_prob=tprob,
                token_rank=trank,
                next=Distribution(top_ids=unpack_u32(ids), top_probs=unpack_f32(probs), entropy=ent, norm_entropy=nent,
                                  exact=bool(exact)),
            )
    return out


def put_outputs(conn: Connection, items: Sequence[tuple[bytes, NodeOutput]], fingerprint: str) -> None:
    if not items:
        return
    mid = model_id(conn, fingerprint, create=True)
    rows = []
    for key, o in items:
        d = o.next
        if len(d.top_ids) != len(d.top_probs):
            raise ValueError("top_ids and top_probs differ in length")
        rows.append(
            {
                "prefix_key": bytes(key),
                "model_id": mid,
                "token_prob": None if o.token_prob is None else float(o.token_prob),
                "token_rank": None if o.token_rank is None else int(o.token_rank),
                "entropy": float(d.entropy),
                "norm_entropy": float(d.norm_entropy),
                "entropy_exact": bool(d.exact),
                "top_ids": pack_u32(d.top_ids),
                "top_probs": pack_f32(d.top_probs),
            }
        )
    stmt = sqlite_insert(NodeOutputRow)
    stmt = stmt.on_conflict_do_update(
        index_elements=[NodeOutputRow.prefix_key, NodeOutputRow.model_id],
        set_={
            c: stmt.excluded[c] for c in ("token_prob", "token_rank", "entropy", "norm_entropy", "entropy_exact", "top_ids",
                                    "top_probs")
        },
    )
    conn.execute(stmt, rows)  # executemany: one statement, one transaction (the caller's)


# --------------------------------------------------------------------------- analyses


def get_analysis(conn: Connection, prefix_key: bytes, fingerprint: str) -> Analysis | None:
    mid = model_id(conn, fingerprint, create=False)
    if mid is None:
        return None
    t = NodeAnalysisRow
    row = conn.execute(
        select(t.influence, t.sink_share, t.lens_ids, t.lens_layers, t.lens_probs).where(
            t.model_id == mid, t.prefix_key == bytes(prefix_key)
        )
    ).first()
    if row is None:
        return None
    influence, sink_share, lens_ids, layers, lens_probs = row
    ids = unpack_u32(lens_ids) if lens_ids is not None else None
    probs = None
    if ids is not None and lens_probs is not None and layers is not None:
        flat = unpack_f32(lens_probs)
        n = len(ids)
        probs = tuple(tuple(flat[i * n : (i + 1) * n]) for i in range(layers))
    return Analysis(
        influence=unpack_optional_f32(influence) if influence is not None else None,
        lens_ids=ids,
        lens_probs=probs,
        sink_share=sink_share if influence is not None else None,
    )


def put_analysis(conn: Connection, prefix_key: bytes, fingerprint: str, analysis: Analysis) -> None:
    """Insert or merge: fields that are None in `analysis` keep their stored value."""
    mid = model_id(conn, fingerprint, create=True)
    values: dict[str, object] = {}
    if analysis.influence is not None:  # the sink share goes with it (None included)
        values["influence"] = pack_optional_f32(analysis.influence)
        values["sink_share"] = None if analysis.sink_share is None else float(analysis.sink_share)
    if analysis.lens_ids is not None:
        if analysis.lens_probs is None:
            raise ValueError("lens_ids given without lens_probs")
        n = len(analysis.lens_ids)
        for layer in analysis.lens_probs:
            if len(layer) != n:
                raise ValueError("every lens_probs row must have one value per lens id")
        values["lens_ids"] = pack_u32(analysis.lens_ids)
        values["lens_layers"] = len(analysis.lens_probs)
        values["lens_probs"] = pack_f32(p for layer in analysis.lens_probs for p in layer)
    elif analysis.lens_probs is not None:
        raise ValueError("lens_probs given without lens_ids")
    stmt = sqlite_insert(NodeAnalysisRow).values(prefix_key=bytes(prefix_key), model_id=mid, **values)
    if values:
        stmt = stmt.on_conflict_do_update(
            index_elements=[NodeAnalysisRow.prefix_key, NodeAnalysisRow.model_id],
            set_={k: stmt.excluded[k] for k in values},
        )
    else:
        stmt = stmt.on_conflict_do_nothing()
    conn.execute(stmt)


# --------------------------------------------------------------------------- token bytes


def put_token_bytes(conn: Connection, vocab_key: str, pieces: Mapping[int, bytes],
                    special: Iterable[int] = ()) -> None:
    """Cache the bytes of tokens; ids in `special` are marked special (also where a row was
    cached before the model said so: a mark is only ever added)."""
    if not pieces:
        return
    marked = {int(i) for i in special}
    rows = [{"vocab_key": vocab_key, "token_id": int(i), "piece": bytes(b), "special": int(i) in marked}
            for i, b in pieces.items()]
    plain = [r for r in rows if not r["special"]]
    if plain:
        conn.execute(sqlite_insert(TokenBytesRow).on_conflict_do_nothing(), plain)
    marks = [r for r in rows if r["special"]]
    if marks:
        stmt = sqlite_insert(TokenBytesRow)
        conn.execute(stmt.on_conflict_do_update(index_elements=["vocab_key", "token_id"],
                                                set_={"special": True}), marks)


def special_ids(conn: Connection, vocab_key: str) -> frozenset[int]:
    """The ids of a vocabulary's tokens marked special."""
    t = TokenBytesRow
    return frozenset(conn.execute(select(t.token_id).where(t.vocab_key == vocab_key, t.special.is_(True))).scalars())


def token_bytes(conn: Connection, vocab_key: str, ids: Iterable[int]) -> dict[int, bytes]:
    wanted = list(dict.fromkeys(int(i) for i in ids))
    out: dict[int, bytes] = {}
    t = TokenBytesRow
    for chunk in _chunks(wanted):
        for tid, piece in conn.execute(
            select(t.token_id, t.piece).where(t.vocab_key == vocab_key, t.token_id.in_(chunk))
        ):
            out[tid] = bytes(piece)
    return out
