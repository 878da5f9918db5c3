"""Regex constraints (r / R): the regex x vocabulary index against brute force, the states,
the catalog and its bad inputs, the events (undo, duplicate, rebuild, resume), the exports,
the screen driven by keys, and the real `tokentree` command in a pseudo-terminal.

The brute force is independent of llguidance: every token of the tiny test tokenizer's
vocabulary is decoded and the text since the constraint was switched on, plus the token, is
checked with Python's regular expressions (`regex` for partial matching: "is this a prefix
of some full match?"; `re.fullmatch` for "complete").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import regex

from fake_engine import VOCAB, FakeEngine, new_session
from tokentree.config import parse_config
from tokentree.features.constraint import COMPLETE, DEAD, LIVE, ConstraintError
from tokentree.features.constraint import catalog as catalog_mod
from tokentree.features.constraint.catalog import check_pattern, find, load_catalog, normalize_pattern
from tokentree.features.constraint.index import (ConstraintIndex, Vocabulary, load_token_table, text_status,
                                         vocabulary_file, vocabulary_for)
from tokentree.core.explorer import Explorer
from tokentree.core.worker import InlineWorker
from tokentree.errors import ConfigError
from tokentree.paths import default_db_path
from tokentree.store import Store, maintenance

# --------------------------------------------------------------------------- brute force


def _completions(tail: bytes) -> list[str]:
    """Characters whose UTF-8 starts with `tail` (an unfinished character): every one when one
    or two bytes are missing; with three missing (a 4-byte lead alone), every second byte and
    the ends of the ranges after it (the patterns here name no character above U+FFFF)."""
    need = (2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4) - len(tail)
    options = [range(0x80, 0xC0)] * min(need, 2) + [(0x80, 0xBF)] * max(0, need - 2)
    out = []

    def walk(prefix: bytes, rest: list) -> None:
        if not rest:
            try:
                out.append(prefix.decode("utf-8"))
            except UnicodeDecodeError:
                pass  # overlong, a surrogate or above U+10FFFF
            return
        for byte in rest[0]:
            walk(prefix + bytes([byte]), rest[1:])

    walk(tail, options)
    return out


def viable(rx, data: bytes) -> bool:
    """Whether the text `data` spells can be extended to a full match of `rx`."""
    try:
        return rx.fullmatch(data.decode("utf-8"), partial=True) is not None
    except UnicodeDecodeError as exc:
        if exc.end != len(data) or exc.reason != "unexpected end of data":
            return False  # invalid UTF-8 before the end: no text has these bytes
        head = data[: exc.start].decode("utf-8")
        return any(rx.fullmatch(head + ch, partial=True) is not None for ch in _completions(data[exc.start:]))


def brute_allowed(pattern: str, text: bytes, pieces: list[bytes], stops: set[int]) -> set[int]:
    rx = regex.compile(pattern)
    allowed = {t for t, piece in enumerate(pieces) if t not in stops and piece and viable(rx, text + piece)}
    if _complete(pattern, text):
        allowed |= stops
    return allowed


def _complete(pattern: str, text: bytes) -> bool:
    try:
        return re.fullmatch(pattern, text.decode("utf-8")) is not None
    except UnicodeDecodeError:
        return False


def brute_status(pattern: str, text: bytes) -> str:
    if _complete(pattern, text):
        return COMPLETE
    return LIVE if viable(regex.compile(pattern), text) else DEAD


@pytest.fixture(scope="module")
def tiny_vocab():
    """The tiny test tokenizer (tests/tiny_model.py), its bytes per id as the engine gives
    them, and its end-of-text id."""
    from tiny_model import build_tokenizer

    from tokentree.lm.tokens import TokenBytes

    tokenizer = build_tokenizer()
    pieces = TokenBytes(tokenizer)
    return tokenizer, [pieces.one(i) for i in range(len(tokenizer))], tokenizer.eos_token_id


SHIPPED = {s.name: s.pattern for s in load_catalog()[0]}
# Texts since the constraint was switched on, at which the allowed set is compared.
TEXTS = {
    "iso_date": ["", " ", " 2", " 2024", " 2024-0", " 2024-05-1", " 2024-05-17", " 2024-13", "x", " 2024-02-3"],
    "us_date": ["", "0", " 05/", " 05/17/20", " 05/17/2024", " 13", " 12/32"],
    "email": ["", " ada", " ada.l@", " ada@example.o", " ada@example.org", " @", "ada@@"],
    "json_object": ["", " {", '{"name": "Ad', '{"name": "Caf\u00e9", "city": "Lo\\"n',
                    '{"name": "Ada", "city": "London"}', '{"name": 1', '{"a":"\u65e5\u672c', '{"a":"\\q'],
}
EXTRA = {  # exercise characters split across tokens
    "japanese": ("[ ]?[\u3040-\u30ff\u4e00-\u9fff]+\u3002", ["", " \u65e5", "\u65e5\u672c\u8a9e", "\u65e5\u3002", "a"]),
    "to_quote": ('[^"]*"', ["", "Caf\u00e9 ", "\U0001F600", 'x"', 'x"y']),
}


def _cases():
    for name, texts in TEXTS.items():
        for text in texts:
            yield pytest.param(SHIPPED[name], text, id=f"{name}:{text!r}")
    for name, (pattern, texts) in EXTRA.items():
        for text in texts:
            yield pytest.param(pattern, text, id=f"{name}:{text!r}")


@pytest.fixture(scope="module")
def indexes(tiny_vocab):
    _, pieces, eos = tiny_vocab
    vocabulary = Vocabulary(pieces, [eos], key="tiny")
    patterns = {*SHIPPED.values(), *(p for p, _ in EXTRA.values())}
    return {p: ConstraintIndex(p, vocabulary) for p in patterns}


def test_the_shipped_constraints():
    """At least ISO date, US date, a JSON object with two string fields and an e-mail address."""
    assert {"iso_date", "us_date", "json_object", "email"} <= set(SHIPPED)
    full = lambda name, text: re.fullmatch(SHIPPED[name], text) is not None  # noqa: E731
    assert full("iso_date", "2024-05-17") and full("iso_date", " 1999-12-31")
    assert not full("iso_date", "2024-13-01") and not full("iso_date", "2024-5-17")
    assert full("us_date", "05/17/2024") and not full("us_date", "17/05/2024")
    assert full("json_object", '{"name": "Ada", "city": "Lo\\"ndon \\u00e9"}')
    assert full("json_object", '{"a":"","b":""}')
    assert not full("json_object", '{"name": "Ada"}') and not full("json_object", '{"a": 1, "b": "x"}')
    assert full("email", "ada.lovelace@example.org") and not full("email", "ada@example")


@pytest.mark.parametrize("pattern, text", list(_cases()))
def test_allowed_tokens_equal_brute_force(tiny_vocab, indexes, pattern, text):
    tokenizer, pieces, eos = tiny_vocab
    index = indexes[pattern]
    data = text.encode("utf-8")
    position = index.position(tokenizer.encode(text, add_special_tokens=False))
    got = {t for t in range(len(pieces)) if position.allows(t)}
    want = brute_allowed(pattern, data, pieces, {eos})
    assert got == want, (sorted(got - want)[:10], sorted(want - got)[:10])
    assert position.allowed_count == len(want)
    assert position.status == brute_status(pattern, data)
    assert text_status(pattern, data) == brute_status(pattern, data)  # byte by byte, no vocabulary


def test_states_live_complete_dead(tiny_vocab, indexes):
    tokenizer, _, eos = tiny_vocab
    iso = indexes[SHIPPED["iso_date"]]
    at = lambda index, text, more=(): index.position(  # noqa: E731
        [*tokenizer.encode(text, add_special_tokens=False), *more])
    assert at(iso, " 2024-05").status == LIVE
    done = at(iso, " 2024-05-17")
    assert done.status == COMPLETE and not done.can_continue
    assert done.allows(eos) and not at(iso, " 2024").allows(eos)  # end of text once complete, only then
    assert at(iso, " 2024-05-17", [eos]).status == COMPLETE  # stopped: nothing follows
    assert at(iso, " 2024-05-17", [eos]).allowed_count == 0
    dead = at(iso, " 2024-13")
    assert dead.status == DEAD and dead.allowed_count == 0
    assert at(iso, " 2024-1").status == LIVE  # the cursor rolls back from a dead text
    email = indexes[SHIPPED["email"]]
    grown = at(email, " ada@example.org")
    assert grown.status == COMPLETE and grown.can_continue  # ".uk" may follow
    assert at(email, " ada@example.org-x.com").status == COMPLETE  # a match may go on past a match


def test_the_token_table_is_kept_in_the_data_dir(tiny_vocab, tokentree_home):
    _, pieces, eos = tiny_vocab
    calls = []

    def walk():
        calls.append(1)
        return pieces

    first = vocabulary_for("tiny", walk, [eos])
    path = vocabulary_file("tiny")
    assert path.is_file() and tokentree_home in path.parents  # the data dir, never the repository
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_token_table("tiny") == (pieces, [eos])
    again = vocabulary_for("tiny", walk, [eos])
    assert calls == [1]  # the tokenizer is walked once per vocabulary
    pattern = SHIPPED["iso_date"]
    a, b = ConstraintIndex(pattern, first).position([]), ConstraintIndex(pattern, again).position([])
    assert a.mask == b.mask
    path.write_bytes(b"garbage")  # a damaged file is rebuilt, never fatal
    assert load_token_table("tiny") is None
    vocabulary_for("tiny", walk, [eos])
    assert calls == [1, 1] and load_token_table("tiny") is not None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


# --------------------------------------------------------------------------- bad inputs


def test_bad_patterns_and_files_are_one_clear_line(tmp_path):
    for pattern, says in [("(", "not a valid regular expression: missing )"), ("", "empty"),
                          ("(?<=a)b", "lookarounds"), (r"\bword", "word boundaries"), ("a" * 5000, "too long")]:
        with pytest.raises(ConstraintError, match=re.escape(says)) as exc:
            check_pattern(pattern)
        assert "\n" not in str(exc.value)
    assert normalize_pattern("^a+$") == "a+" and normalize_pattern("a\\$") == "a\\$"
    letters = Vocabulary([b"a", b"b", b"<eos>"], [2], key="ab")
    assert ConstraintIndex("[0-9]+", letters).position([]).allowed_count == 0  # nothing can spell a digit

    folder = tmp_path / "structs"
    folder.mkdir()
    (folder / "good.txt").write_text("# a comment\n[0-9]+\n", encoding="utf-8")
    (folder / "bad.txt").write_text("[0-9\n", encoding="utf-8")
    (folder / "two.txt").write_text("a\nb\n", encoding="utf-8")
    (folder / "empty.txt").write_text("# only a comment\n", encoding="utf-8")
    (folder / "binary.txt").write_bytes(b"\xff\xfe")
    (folder / "bad name.txt").write_text("a", encoding="utf-8")
    structs, problems = load_catalog({"digits": "[0-9]", "look": "(?!a)b"}, folder)
    assert [s.name for s in structs] == ["good", "digits"]
    assert all("\n" not in p for p in problems) and len(problems) == 6
    joined = " | ".join(problems)
    for says in ("bad.txt: not a valid regular expression", "two.txt: 2 pattern lines", "empty.txt: no pattern",
                 "binary.txt: not UTF-8", "bad name.txt: bad constraint name", "structs.look: lookarounds"):
        assert says in joined, joined
    with pytest.raises(ConstraintError, match="unknown constraint 'nope' \\(known: good, digits\\)"):
        find(structs, "nope")


def test_structs_config_table():
    config = parse_config({"structs": {"phone": r"\([0-9]{3}\) [0-9]{3}"}})
    assert dict(config.structs) == {"phone": r"\([0-9]{3}\) [0-9]{3}"}
    for raw, says in [({"structs": {"bad": "("}}, "structs.bad: not a valid regular expression"),
                      ({"structs": {"n": 3}}, "structs.n must be a regular expression"),
                      ({"structs": "x"}, "[structs] must be a table"),
                      ({"structs": {"a b": "x"}}, "structs.a b: bad constraint name")]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            parse_config(raw)


# --------------------------------------------------------------------------- the explorer

# Words, then a full stop. The fake vocabulary has no token for a lone space: llguidance spells
# text a pattern forces with the vocabulary (every real model's covers every byte), so a
# pattern for it never forces a space.
WORDS = r"( ?[a-z]+)+\."


@pytest.fixture
def no_shipped(monkeypatch, tmp_path):
    """Only the config's constraints (the fake vocabulary cannot spell a date)."""
    empty = tmp_path / "no-structs"
    empty.mkdir()
    monkeypatch.setattr(catalog_mod, "struct_dir", lambda: empty)


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    s.close()


def _config(**structs):
    return parse_config({"display": {"tokens_to_show": 6}, "explore": {"prefetch": 0, "fill_tokens": 12},
                         "structs": structs or {"words": WORDS}})


def _explorer(store, config=None, prompt=" the cat sat"):
    engine = FakeEngine()
    sid = new_session(store, engine, {"cat": prompt})
    ex = Explorer(store, sid, config=config or _config(), model_name="fake-model", engine=engine)
    ex.run_jobs_inline()
    return ex, engine, sid


def _text_since(ex, depth: int) -> bytes:
    snap_branch = ex.focused_branch()
    path = ex.view.path_of(snap_branch.node_id)
    return b"".join(VOCAB[n.token_id] for n in path[depth:])


def _out(ex):
    node = ex.focused_node()
    return node, ex.view.outputs_for([node.prefix_key])[node.prefix_key]


def test_the_table_lists_only_allowed_tokens_renormalized(store, no_shipped):
    ex, engine, sid = _explorer(store)
    ex.features.constraint.toggle()
    assert "regex words on from here" in ex.message
    ex.run_jobs_inline()  # compiles the index in the worker
    snap = ex.snapshot()
    node, out = _out(ex)
    rx = regex.compile(WORDS)
    allowed = [(r + 1, t, p) for r, (t, p) in enumerate(zip(out.next.top_ids, out.next.top_probs))
               if t != 0 and viable(rx, VOCAB[t])]
    assert allowed, "the fake model's top candidates include words"
    mass = sum(p for _, _, p in allowed)
    assert [(r.rank, r.token_id) for r in snap.candidates] == [(rank, t) for rank, t, _ in allowed][:6]
    for row, (_, _, p) in zip(snap.candidates, allowed):
        assert row.raw == pytest.approx(p) and row.prob == pytest.approx(p / mass)
    line = snap.constraint
    assert (line.name, line.status, line.filters) == ("words", LIVE, True)
    assert (line.allowed, line.top_k) == (len(allowed), len(out.next.top_ids))
    assert line.vocab_allowed == len(brute_allowed(WORDS, b"", list(VOCAB), {0}))
    # The cache still holds the model's raw top K.
    assert store.get_outputs([node.prefix_key], engine.info.fingerprint)[node.prefix_key] == out

    events = [e for e in store.events(sid) if e.type.startswith("constraint")]
    assert [(e.type, e.payload["name"], e.payload["pattern"], e.payload["depth"]) for e in events] == [
        ("constraint.set", "words", WORDS, 3)]


def test_append_and_fill_only_append_allowed_tokens(store, no_shipped):
    ex, engine, sid = _explorer(store)
    ex.features.constraint.toggle()
    ex.run_jobs_inline()
    rx = regex.compile(WORDS)
    ex.cursor(1)
    ex.append()
    ex.run_jobs_inline()
    assert viable(rx, _text_since(ex, 3))
    ex.features.fill.start()
    ex.run_jobs_inline()
    text = _text_since(ex, 3)
    assert ex.message.startswith(("filled", "nothing to fill")), ex.message
    tokens = [n.token_id for n in ex.view.path_of(ex.focused_branch().node_id)[3:]]
    for k in range(1, len(tokens) + 1):  # every appended token kept the text viable (or ended it)
        part = b"".join(VOCAB[t] for t in tokens[:k] if t != 0)
        assert viable(rx, part), (tokens, k)
    if tokens[-1] == 0:
        assert rx.fullmatch(text.decode().replace("<s>", "")) is not None  # eos only once complete


def test_sample_draws_only_tokens_the_constraint_allows(store, no_shipped):
    """g under a regex constraint: every drawn token keeps the text viable (the fake model's
    own distribution puts most of its mass on tokens the pattern rules out)."""
    config = parse_config({"display": {"tokens_to_show": 6},
                           "explore": {"prefetch": 0, "fill_tokens": 8, "sample_count": 6},
                           "sampling": {"temperature": 1.5, "seed": 7}, "structs": {"words": WORDS}})
    ex, engine, sid = _explorer(store, config)
    ex.features.constraint.toggle()
    ex.run_jobs_inline()  # the index
    ex.features.sample.start()
    assert "under the regex constraint" in ex.message
    ex.run_jobs_inline()
    assert ex.message.startswith("sampled 6 continuations"), ex.message
    rx = regex.compile(WORDS)
    samples = [b for b in ex.view.branches() if b.name.startswith("sample ")]
    assert len(samples) == 6
    lengths = []
    for branch in samples:
        path = ex.view.path_of(branch.node_id)
        text = b"".join(VOCAB[n.token_id] for n in path[3:] if n.token_id != 0)
        assert viable(rx, text), (branch.name, text)
        if path[-1].token_id == 0:  # a stop token only after a whole match
            assert rx.fullmatch(text.decode()) is not None
        lengths.append(len(path) - 3)
    assert max(lengths) > 1
    # Without the constraint the same seed draws tokens the pattern rules out.
    ex.features.constraint.toggle()
    ex.features.sample.start()
    ex.run_jobs_inline()
    free = [b for b in ex.view.branches() if b.name.startswith("sample ")][6:]
    texts = [b"".join(VOCAB[n.token_id] for n in ex.view.path_of(b.node_id)[3:] if n.token_id != 0) for b in free]
    assert any(not viable(rx, t) for t in texts), texts


def test_states_on_screen_and_why_nothing_can_be_appended(store, no_shipped):
    ex, engine, sid = _explorer(store, _config(words=WORDS, cat=r" the cat sat( on)?"))
    branch = ex.focused_branch()
    # Switched on at the root: " the cat sat" is a whole match of `cat`.
    ex.command(store.set_constraint, branch.id, "cat", r" the cat sat( on)?", depth=0 + 1 - 1 or 1)
    ex.run_jobs_inline()
    # depth 1 covers " cat sat" (the first token is before it): dead for `cat`.
    snap = ex.snapshot()
    assert snap.constraint.status == DEAD and snap.candidates == ()
    ex.append()
    assert "dead here" in ex.message
    ex.features.fill.start()
    assert ex.message.startswith("nothing to fill: regex cat is dead")
    ex.features.sample.start()
    assert "dead here" in ex.message  # g draws nothing either: it says why
    ex.features.constraint.cycle()  # R while one is on: the next one takes its place, from here
    ex.run_jobs_inline()
    assert ex.snapshot().constraint.name in ("words", "cat")
    # A whole match: `cat` from the start of the prompt.
    store_branch = ex.focused_branch()
    ex.command(store.clear_constraint, store_branch.id)
    engine2 = FakeEngine()
    sid2 = new_session(store, engine2, {"cat": " the cat sat"})
    ex2 = Explorer(store, sid2, config=_config(cat=r"( the)? cat sat( on)?"), model_name="fake-model", engine=engine2)
    ex2.run_jobs_inline()
    b2 = ex2.focused_branch()
    ex2.command(store.set_constraint, b2.id, "cat", r"( the)? cat sat( on)?", depth=1)
    ex2.run_jobs_inline()
    line = ex2.snapshot().constraint
    assert line.status == COMPLETE and line.can_continue  # " on" may follow
    ex2.pop()
    ex2.pop()
    assert ex2.snapshot().constraint.status == LIVE
    assert ex2.snapshot().constraint.name == "cat"


def test_before_its_start_the_table_is_not_filtered(store, no_shipped):
    ex, engine, sid = _explorer(store)
    ex.features.constraint.toggle()
    ex.run_jobs_inline()
    ex.pop()
    snap = ex.snapshot()
    assert snap.constraint.status == "before" and not snap.constraint.filters
    assert len(snap.candidates) == 6 and all(r.raw is None for r in snap.candidates)


def test_toggle_undo_duplicate_rebuild_resume_and_export(store, no_shipped):
    ex, engine, sid = _explorer(store)
    ex.features.constraint.toggle()  # on
    ex.run_jobs_inline()
    ex.append()
    ex.run_jobs_inline()
    ex.features.branches.duplicate_branch()  # the copy keeps the constraint
    assert {b.name for b in store.branches(sid)} == {"cat", "branch 2"}
    assert {c.name for c in store.constraints(sid).values()} == {"words"} and len(store.constraints(sid)) == 2
    ex.features.constraint.toggle()  # off on the copy
    assert "regex words off" in ex.message
    assert len(store.constraints(sid)) == 1
    ex.undo()
    assert len(store.constraints(sid)) == 2
    ex.undo()  # the duplicate
    ex.undo()  # the append
    ex.undo()  # the constraint
    assert store.constraints(sid) == {}
    ex.features.constraint.toggle()
    ex.run_jobs_inline()
    ex.append()
    ex.run_jobs_inline()
    assert maintenance.check(store) == []  # the projection equals a replay of the events

    # Resume in a new explorer, before any model is attached: the index comes from the data dir.
    again = Explorer(store, sid, config=_config(), model_name="fake-model")
    snap = again.snapshot()
    assert (snap.constraint.name, snap.constraint.status, snap.constraint.filters) == ("words", LIVE, True)
    assert snap.candidates and all(viable(regex.compile(WORDS), _text_since(again, 3) + VOCAB[r.token_id])
                                   for r in snap.candidates)

    from tokentree.export.json import render_json
    from tokentree.export.loader import load_export_tree
    from tokentree.export.text import render_text

    tree = load_export_tree(store, sid)
    text = render_text(tree)
    assert f"regex words on [cat*] after token 3: live  /{WORDS}/" in text
    doc = json.loads(render_json(tree))
    assert doc["branches"][0]["constraint"] == {"name": "words", "pattern": WORDS, "after_depth": 3, "state": LIVE}


def test_no_constraints_and_bad_files_say_so(store, monkeypatch, tmp_path):
    folder = tmp_path / "structs"
    folder.mkdir()
    monkeypatch.setattr(catalog_mod, "struct_dir", lambda: folder)
    ex, engine, sid = _explorer(store, parse_config({"explore": {"prefetch": 0}}))
    ex.features.constraint.toggle()
    assert ex.message.startswith("no regex constraints: put one regular expression per file in prompts/structs/")
    (folder / "bad.txt").write_text("(\n", encoding="utf-8")
    (folder / "ok.txt").write_text(WORDS + "\n", encoding="utf-8")
    ex2, _, _ = _explorer(store, parse_config({"explore": {"prefetch": 0}}))
    ex2.features.constraint.cycle()
    assert ex2.message == (f"regex ok (1 of 1): {WORDS}  (r switches it on); skipped bad.txt: not a valid "
                           "regular expression: missing ), unterminated subpattern at position 0")
    ex2.features.constraint.cycle()
    assert ex2.message == f"regex ok (1 of 1): {WORDS}  (r switches it on)"  # said once
    assert [e.type for e in store.events(ex2.session_id) if e.type.startswith("constraint")] == []


def test_when_nothing_is_allowed_the_table_and_keys_say_why(store):
    ex, engine, sid = _explorer(store)  # the shipped constraints: the fake vocabulary has no digit
    ex.features.constraint.cycle()
    ex.features.constraint.cycle()  # email, then iso_date
    ex.features.constraint.toggle()
    ex.run_jobs_inline()
    snap = ex.snapshot()
    assert (snap.constraint.name, snap.constraint.status, snap.candidates) == ("iso_date", LIVE, ())
    assert snap.constraint.vocab_allowed == 0
    ex.append()
    assert ex.message == "no token of the model's vocabulary keeps regex iso_date matching (r switches it off)"
    ex.features.fill.start()
    assert ex.message.startswith("nothing to fill: no token of the model's vocabulary")


# --------------------------------------------------------------------------- the screen


def _app(store, config=None):
    from tokentree.tui.app import ExplorerApp
    from tokentree.tui.keymap import build_keymap

    config = config or _config()
    engine = FakeEngine()
    sid = new_session(store, engine, {"cat": " the cat sat"})
    ex = Explorer(store, sid, config=config, model_name="fake-model", engine=engine)
    app = ExplorerApp(ex, build_keymap(config), worker=InlineWorker())
    app.settle()
    return app


def _lines(app, size=(100, 24)) -> list[str]:
    return [row.decode() for row in app.render(size).text]


def test_keys_r_and_R_on_the_screen(store, no_shipped):
    app = _app(store, _config(words=WORDS, cat=r" cat"))
    app.press("R")
    app.settle()
    screen = "\n".join(_lines(app))
    assert "regex words (1 of 2)" in screen and "regex words: off" in screen
    app.press("r")
    app.settle()
    lines = _lines(app)
    screen = "\n".join(lines)
    assert "next token \u00b7" in screen and "\u00b7 regex words" in screen
    header = next(line for line in lines if " token " in line and " prob " in line)
    assert "raw" in header
    assert "regex words: live" in lines[-1]  # the status bar
    assert "prob renormalized over the" in screen and "raw: the model's own" in screen
    snap = app.snapshot
    shown = [r for r in snap.candidates]
    assert shown and all(r.raw is not None for r in shown)
    top = shown[0]
    row = next(line for line in lines if f"{top.prob * 100:6.2f}%" in line)
    assert f"{top.raw * 100:6.2f}%" in row
    # The status bar's tag is coloured by the state.
    attrs = [a for a, _cs, text in list(app.render((100, 24)).content())[-1] if b"regex" in text]
    assert len(attrs) == 1 and "status_regex_live" in getattr(attrs[0], "layers", (attrs[0],))
    app.press("right")
    app.settle()
    app.press("R")  # the next constraint takes its place from here
    app.settle()
    assert "regex cat" in "\n".join(_lines(app))
    app.press("u")
    app.settle()
    assert "regex words: live" in _lines(app)[-1]
    app.press("r")
    app.settle()
    screen = "\n".join(_lines(app))
    assert "regex words off" in screen and "raw" not in screen.split("\n")[6]


def test_help_lists_the_constraint_keys(store, no_shipped):
    app = _app(store)
    app.press("?")
    screen = "\n".join(_lines(app, (120, 60)))
    assert "toggle_constraint: regex constraint on from here, or off" in screen
    assert "cycle_constraint: next regex constraint" in screen


# --------------------------------------------------------------------------- end to end


def test_a_real_model_compiles_its_vocabulary_and_matches_brute_force(store, tiny_models, monkeypatch, tmp_path):
    """The real engine: its vocabulary (engine.token_bytes over every id) and its end-of-text
    ids, compiled in the worker through the explorer; the table against brute force."""
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    folder = tmp_path / "structs"
    folder.mkdir()
    (folder / "words.txt").write_text("[ A-Za-z]+\n", encoding="utf-8")
    monkeypatch.setattr(catalog_mod, "struct_dir", lambda: folder)
    engine = Engine(load_model(str(tiny_models["qwen2"]), device="cpu"), top_k=64)
    config = parse_config({"explore": {"prefetch": 0}})
    sid = new_session(store, engine, {"story": "Once upon a time"})
    ex = Explorer(store, sid, config=config, model_name=engine.info.name, engine=engine)
    ex.run_jobs_inline()
    ex.features.constraint.toggle()
    ex.run_jobs_inline()
    for _ in range(3):
        ex.append()
        ex.run_jobs_inline()
    snap = ex.snapshot()
    assert snap.constraint.status in (LIVE, COMPLETE)
    pieces = engine.token_bytes(range(engine.vocab_size))
    node, out = _out(ex)
    path = ex.view.path_of(node.id)
    text = b"".join(pieces[n.token_id] for n in path[len(engine.encode("Once upon a time")):])
    want = brute_allowed("[ A-Za-z]+", text, [pieces[i] for i in range(engine.vocab_size)],
                         set(engine.stop_ids("eos")))
    allowed = [t for t in out.next.top_ids if t in want]
    assert [r.token_id for r in snap.candidates] == allowed[: config.display.tokens_to_show]
    assert (snap.constraint.allowed, snap.constraint.vocab_allowed) == (len(allowed), len(want))
    assert vocabulary_file(engine.info.vocab_key).is_file()


def test_regex_constraint_in_a_real_terminal_then_resume_and_export(tmp_path, tiny_model):
    """The real `tokentree` command in a pseudo-terminal: R picks a constraint (the shipped
    ones, then the [structs] table of ./config.toml), r switches it on, right and f append
    only allowed tokens; the resumed session and `tokentree export` show it."""
    import subprocess
    import sys

    from test_tui_pty import CTRL_Q, RIGHT, Terminal

    (tmp_path / "config.toml").write_text("[structs]\nwords = '[ A-Za-z]+'\n", encoding="utf-8")
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_model), "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", " idle ", "story")
    term.keys("R", settle="regex email (1 of 5)")
    term.keys("R", "R", "R", "R", settle=("regex words (5 of 5)", "regex words: off"))
    term.keys("r", settle="regex words on from here")
    term.wait_for(" idle ", "\u00b7 regex words", "regex words: live", "renormalized over the", " raw ")
    term.keys(RIGHT, settle="+1 ")
    # The fill's own end (its message stays until the next key), not any screen with "fill" on it.
    term.keys("f", settle=("filled ", " idle "))
    term.keys(CTRL_Q)
    assert term.finish() == 0

    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        events = store.events(sid)
        sets = [e.payload for e in events if e.type == "constraint.set"]
        assert [(p["name"], p["pattern"]) for p in sets] == [("words", "[ A-Za-z]+")]
        branch = next(b for b in store.branches(sid) if b.focused)
        path = store.path_nodes(branch.node_id)
        appended = [n.token_id for n in path[sets[0]["depth"]:]]
        assert len(appended) >= 2
        pieces = store.token_bytes(store.session(sid).vocab_key, appended)
        text = b"".join(pieces[t] for t in appended).decode("utf-8")
        assert re.fullmatch("[ A-Za-z]+", text), text  # only allowed tokens were appended
    finally:
        store.close()

    term = Terminal(["--resume", "last"], tmp_path)
    term.wait_for("regex words: ", "\u00b7 regex words", " idle ")
    term.keys(CTRL_Q)
    assert term.finish() == 0

    exe = Path(sys.executable).with_name("tokentree")
    out = subprocess.run([str(exe), "export", "last", "--format", "text"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "regex words on [story*] after token" in out and ": complete  /[ A-Za-z]+/" in out
