"""Chat sessions on the bundled instruct model: a conversation's ids are exactly
apply_chat_template's on every backend, the real command explores a two-turn chat in a
terminal, and every bad chat input is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from test_bad_input import run_bad
from test_tui_pty import CTRL_Q, Terminal

from tokentree.export import export_session
from tokentree.paths import default_db_path
from tokentree.store import Store

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WITH_SYSTEM = [{"role": "system", "content": "You answer in one short sentence."}, *QUESTION]
ENTER, ESC = "\r", "\x1b"


def _hf_tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2.checkpoint)


def _template_ids(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


@pytest.mark.parametrize("messages", [QUESTION, WITH_SYSTEM], ids=["user", "system+user"])
def test_a_chat_root_is_apply_chat_templates_ids_on_every_backend(smollm2, messages):
    """The quick start (tokenizers + the checkpoint's template rendered as transformers does)
    and llama.cpp (the GGUF's own template and special tokens) give exactly the ids of
    transformers' apply_chat_template; so does the transformers backend (it calls it)."""
    from tokentree.lm.llama import LlamaBackend
    from tokentree.lm.quick_tokens import quick_model

    want = _template_ids(_hf_tokenizer(smollm2), messages)
    assert want[-4:] == [1, 520, 9531, 198]  # the generation prompt: <|im_start|>assistant\n
    quick = quick_model(str(smollm2.checkpoint), dtype="float32")
    assert quick.chat_ids(messages) == want
    backend = LlamaBackend(smollm2.gguf, threads=1)
    try:
        assert backend.chat_template().identity == quick.chat_template().identity  # the same template
        assert backend.chat_ids(messages) == want
        assert 2 in backend.special_ids() and 1 in backend.special_ids()  # <|im_end|>, <|im_start|>
    finally:
        backend.close()


def test_the_stored_format_has_smollm2s_end_of_turn_and_opener(smollm2):
    from tokentree.lm.chat import chat_format
    from tokentree.lm.quick_tokens import quick_model

    fmt = chat_format(quick_model(str(smollm2.checkpoint), dtype="float32"))
    assert fmt["end_of_turn"] == [2] and fmt["openers"] == [1]  # <|im_end|>, <|im_start|>


def _float64_top(smollm2, ids: list[int]) -> tuple[int, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2.checkpoint, dtype=torch.float64).eval()
    with torch.inference_mode():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    top = int(probs.argmax())
    return top, float(probs[top])


def test_a_two_turn_chat_in_a_real_terminal_then_resume_and_export(smollm2, tmp_path, tokentree_home):
    """Open a conversation file, see the role labels and the marked special tokens, fill to
    the end of the turn, add a user turn with m, fill again, fold, resume, export."""
    conversation = tmp_path / "capital.json"
    conversation.write_text(json.dumps({"messages": WITH_SYSTEM}), encoding="utf-8")
    term = Terminal(["--model", "smollm2", "-i", str(conversation)], tmp_path)
    term.wait_for(" user ", " assistant ", "\u27e6<|im_start|>\u27e7assistant", " idle ", "\u25b6   1 ")
    term.keys("f", settle=("reached a stop token", " idle "))  # the answer ends at <|im_end|>
    screen = term.text
    assert "\u27e6<|im_end|>\u27e7\u258f" in screen  # the end of turn is the last token, marked
    term.keys("m", settle=" user  ")  # the field for the next user message
    term.keys(*"And of Germany?")
    term.keys(ENTER, settle=("added a user turn", " idle "))
    term.keys("f", settle=("reached a stop token", " idle "))
    term.keys("z", settle=("\u25b8 assistant \u00b7 ", "And of Germany?"))  # earlier turns folded to a line each
    term.keys(CTRL_Q)
    assert term.finish() == 0

    # The first answer's distribution: the stored top candidate equals a float64 forward over
    # apply_chat_template's ids within 1e-4, and the root's ids are those ids.
    want = _template_ids(_hf_tokenizer(smollm2), WITH_SYSTEM)
    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        info = store.session(sid)
        (branch,) = store.branches(sid)
        root = store.path_nodes(branch.root_node_id)
        assert [n.token_id for n in root] == want
        out = store.get_outputs([root[-1].prefix_key], info.fingerprint)[root[-1].prefix_key]
        top, p = _float64_top(smollm2, want)
        assert out.next.top_ids[0] == top and abs(out.next.top_probs[0] - p) < 1e-4
        assert branch.messages == tuple(WITH_SYSTEM)
        text = export_session(store, sid, "text")
        data = json.loads(export_session(store, sid, "json"))
    finally:
        store.close()
    assert "\u27e6<|im_start|>\u27e7user" in text and "<|im_start|>user" not in text.replace("\u27e6<|im_start|>\u27e7", "")
    (exported,) = data["branches"]
    assert exported["messages"] == WITH_SYSTEM
    roles = [m["role"] for m in exported["conversation"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert exported["conversation"][3]["content"] == "And of Germany?"
    assert exported["conversation"][2]["content"] and exported["conversation"][4]["content"]
    assert data["session"]["chat"]["end_of_turn"] == [2]

    # Resumed: the same conversation, labelled, from the cache.
    term = Terminal(["--resume", "last"], tmp_path)
    term.wait_for(" assistant ", "And of Germany?", " idle ")
    term.keys(CTRL_Q)
    assert term.finish() == 0


# ------------------------------------------------------------------ bad input: one line, exit 2


@pytest.mark.parametrize("body, needle", [
    ("{not json", "not JSON"),
    ("[]", "no messages"),
    ('[{"role": "bot", "content": "hi"}]', "unknown role"),
    ('[{"role": "user"}]', "content"),
    ('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]', "assistant"),
])
def test_a_bad_conversation_file_is_one_line_and_writes_nothing(capsys, tmp_path, tokentree_home, body, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(body, encoding="utf-8")
    run_bad(capsys, ["--input", bad], str(bad), needle)
    assert not default_db_path().exists()


def test_a_model_without_a_chat_template_is_one_line(capsys, tmp_path, tiny_model, tokentree_home, monkeypatch):
    import tokentree.launch

    monkeypatch.setattr(tokentree.launch, "require_terminal", lambda: None)  # the check comes before the screen
    prompt = tmp_path / "q.txt"
    prompt.write_text("Hello there", encoding="utf-8")
    run_bad(capsys, ["--model", tiny_model, "--chat", "--input", prompt], "has no chat template")
    db = default_db_path()
    if db.exists():  # opened to check it, but no session was written
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_chat_flags_with_resume_are_one_line(capsys, tokentree_home):
    run_bad(capsys, ["--resume", "last", "--chat"], "--chat and --system start a new session")


def test_system_twice_is_one_line(capsys, tmp_path, tokentree_home):
    conversation = tmp_path / "c.json"
    conversation.write_text(json.dumps(WITH_SYSTEM), encoding="utf-8")
    run_bad(capsys, ["--system", "Be brief.", "--input", conversation], "already has a system message")


def test_an_empty_system_file_is_one_line(capsys, tmp_path, tokentree_home):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    prompt = tmp_path / "q.txt"
    prompt.write_text("Hi", encoding="utf-8")
    run_bad(capsys, ["--system", f"@{tmp_path / 'empty.txt'}", "--input", prompt], "empty")


# ------------------------------------------------------------------ the prompt pane, as drawn


def _chat_snapshot(folded: bool):
    from dataclasses import replace

    from tokentree.core.snapshot import PromptToken, Snapshot, Status, Turn

    def tok(text, tid, special=False, appended=False):
        return PromptToken(text=text, token_id=tid, appended=appended, value=None, special=special)

    prompt = (tok("\u27e6<|im_start|>\u27e7", 1, True), tok("user", 10), tok("\n", 11), tok("Hi there", 12),
              tok("\u27e6<|im_end|>\u27e7", 2, True), tok("\n", 11),
              tok("\u27e6<|im_start|>\u27e7", 1, True), tok("assistant", 13), tok("\n", 11),
              tok("Hello", 14, appended=True))
    status = Status(model="m", device="cpu", dtype="float32", session_id=1, origin="cache", ms=None, busy=None,
                    engine_ready=True)
    snap = Snapshot(prompt=prompt, prompt_view="plain", layer_view="off", candidates=(), selected=0,
                    waiting=False, branches=(), status=status, message=None)
    return replace(snap, turns=(Turn(0, "user", folded=folded), Turn(6, "assistant")))


def _pane_runs(snap, width=60):
    from tokentree.tui.prompt_pane import PromptPane

    pane = PromptPane()
    pane.update(snap)
    canvas = pane.render((width, pane.rows_needed(width)))
    rows = [[(attr, text.decode()) for attr, _cs, text in row] for row in canvas.content()]
    return ["".join(t for _, t in row) for row in rows], rows


def test_the_prompt_pane_labels_each_turn_and_draws_special_tokens_apart():
    texts, rows = _pane_runs(_chat_snapshot(folded=False))
    labels = [(k, attr, text) for k, row in enumerate(rows) for attr, text in row if attr == "role"]
    assert [text.strip() for _, _, text in labels] == ["user", "assistant"]  # a line of their own
    assert all(texts[k].strip("\u2502 ") == text.strip() for k, _, text in labels)
    special = [text for row in rows for attr, text in row if attr == "special"]
    assert "".join(special).count("\u27e6<|im_start|>\u27e7") == 2 and "\u27e6<|im_end|>\u27e7" in "".join(special)
    typed = [text for row in rows for attr, text in row if attr in ("prompt", "appended")]
    assert not any("<|" in text for text in typed)  # a special token is never drawn as typed text
    assert any(attr == "appended" and "Hello" in text for row in rows for attr, text in row)


def test_a_folded_turn_is_one_line_with_its_role_size_and_start():
    texts, rows = _pane_runs(_chat_snapshot(folded=True))
    folded = [text for row in rows for attr, text in row if attr == "role_folded"]
    assert len(folded) == 1 and "\u25b8 user \u00b7 6 tokens \u00b7 Hi there" in folded[0]
    screen = "\n".join(texts)
    assert "<|im_end|>" not in screen.split("assistant")[0]  # the folded turn's tokens are not drawn
    assert "Hello" in screen and " assistant " in screen
