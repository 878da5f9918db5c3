"""The quick start reads a model's tokenizer without torch (lm/quick_tokens.py): its ids, vocab
key, token bytes, fingerprint and context length must be exactly those of the loaded model,
for every tokenizer layout it accepts; anything else falls back to loading the model first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from tokentree.lm.quick_tokens import NotQuick, QuickModel, quick_model
from tokentree.lm.tokenizer_files import GENERIC_MODEL_IDS, INCORRECT_HUB_CLASS, REGISTERED

ARCHES = ("qwen2", "gpt2", "llama", "gemma2")
PROMPTS = [
    "Once upon a time",
    " leading space, then  two  spaces and a\ttab",
    "line one\nline two\n\n\nafter blank lines\n",
    "\n",
    " ",
    "x",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, \u65e5\u672c\u8a9e\u306e\u6587\u7ae0 \U0001F600 e\u0301 \ufb01",
    "Natalia sold 48/2 = 24 clips in May. 1234567 3.14159",
    "it's they'll we'd I'M",
    "<|im_start|>user hi<|im_end|><|endoftext|> and <|im_start|",
]


def auto_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def assert_same(directory: Path, prompts=PROMPTS) -> QuickModel:
    """The quick tokenizer of `directory` encodes, hashes and spells tokens as AutoTokenizer."""
    from tokentree.lm.loader import vocab_key
    from tokentree.lm.tokens import TokenBytes

    quick = quick_model(str(directory), dtype="float32")
    auto = auto_tokenizer(directory)
    for text in prompts:
        assert quick.encode(text) == auto.encode(text), (directory.name, text)
    assert quick.vocab_key == vocab_key(auto)
    ids = list(range(len(auto) + 2))
    assert quick.token_bytes(ids) == TokenBytes(auto)(ids)
    return quick


@pytest.mark.parametrize("arch", ARCHES)
def test_ids_vocab_key_and_bytes_equal_the_model_tokenizer(tiny_models, arch):
    assert_same(tiny_models[arch])


def test_llama_style_bos_comes_first(tiny_models):
    quick = quick_model(str(tiny_models["llama"]), dtype="float32")
    bos = quick.tokenizer.token_to_id("<|im_start|>")
    assert quick.encode("Once upon a time")[0] == bos
    assert quick_model(str(tiny_models["gpt2"]), dtype="float32").encode("x")[0] != bos


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fingerprint_and_context_equal_the_loaded_model(tiny_models, arch, dtype):
    from tokentree.lm.loader import load_model

    loaded = load_model(str(tiny_models[arch]), device="cpu", dtype=dtype)
    quick = quick_model(str(tiny_models[arch]), dtype=dtype)
    assert (quick.fingerprint, quick.vocab_key, quick.context_length) == (
        loaded.fingerprint, loaded.vocab_key, loaded.context_length)
    assert quick.encode(PROMPTS[0]) == list(loaded.tokenizer.encode(PROMPTS[0]))


# ---------------------------------------------------------------- other tokenizer layouts

def _variant(src: Path, dest: Path, *, tok_config=None, config=None, tokenizer=None, files=None) -> Path:
    """A copy of model dir `src` whose JSON files are changed by the given functions."""
    shutil.copytree(src, dest)
    for name, change in (("tokenizer_config.json", tok_config), ("config.json", config),
                         ("tokenizer.json", tokenizer)):
        if change is not None:
            path = dest / name
            data = json.loads(path.read_text(encoding="utf-8"))
            change(data)
            path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for name, data in (files or {}).items():
        (dest / name).write_text(json.dumps(data), encoding="utf-8")
    return dest


def _set(**values):
    return lambda data: data.update(values)


def _drop_post_processor(data):
    data["post_processor"] = None


def _added_tokens_in_config(data):
    """tokenizer_config.json with an added_tokens_decoder, as Qwen2.5 and Llama 3 have, and an
    extra special token that is not in the vocabulary (it gets a new id)."""
    data["added_tokens_decoder"] = {
        "0": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True},
        "1": {"content": "<|im_start|>", "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True},
        "2": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
              "single_word": False, "special": True},
    }
    data["additional_special_tokens"] = ["<|im_start|>", "<|tool|>"]


VARIANTS = {
    # transformers 5 ignores add_bos_token when a tokenizer.json is there: its post-processor decides.
    "llama, add_bos_token false": ("llama", dict(tok_config=_set(add_bos_token=False))),
    "gpt2, add_bos_token true": ("gpt2", dict(tok_config=_set(add_bos_token=True, bos_token="<|im_start|>"))),
    "llama, add_eos_token true": ("llama", dict(tok_config=_set(add_eos_token=True))),
    "llama, no post-processor": ("llama", dict(tokenizer=_drop_post_processor)),
    "qwen2, added tokens in the config": ("qwen2", dict(tok_config=_added_tokens_in_config)),
    "gpt2, added tokens in the config": ("gpt2", dict(tok_config=_added_tokens_in_config)),
    "llama, PreTrainedTokenizerFast": ("llama", dict(tok_config=_set(tokenizer_class="PreTrainedTokenizerFast"))),
    "llama, LlamaTokenizerFast over byte-level": ("llama", dict(tok_config=_set(tokenizer_class="LlamaTokenizerFast"))),
    "qwen2, Qwen2TokenizerFast": ("qwen2", dict(tok_config=_set(tokenizer_class="Qwen2TokenizerFast"))),
    # qwen2 is one of transformers' "incorrect hub class" types: its own class wins.
    "qwen2 naming another class": ("qwen2", dict(tok_config=_set(tokenizer_class="GemmaTokenizer"))),
    "qwen2, add_prefix_space": ("qwen2", dict(tok_config=_set(add_prefix_space=True))),
    "gpt2, GPT2Tokenizer class": ("gpt2", dict(tok_config=_set(tokenizer_class="GPT2Tokenizer"))),
    "gpt2, no class named": ("gpt2", dict(tok_config=lambda d: d.pop("tokenizer_class"))),
    "qwen3, generic class": ("qwen2", dict(config=_set(model_type="qwen3", architectures=["Qwen3ForCausalLM"]))),
    "qwen2, split special tokens": ("qwen2", dict(tok_config=_set(split_special_tokens=True))),
    "gpt2, legacy special_tokens_map.json": ("gpt2", dict(
        tok_config=_set(bos_token=None),
        files={"special_tokens_map.json": {
            "bos_token": {"content": "<|im_start|>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False},
            "additional_special_tokens": ["<|im_end|>"]}})),
    "llama, model-specific token": ("llama", dict(tok_config=_set(image_token="<|image|>"))),
    "llama, model-specific added token": ("llama", dict(tok_config=_set(image_token={
        "__type": "AddedToken", "content": "<|image|>", "lstrip": False, "normalized": False, "rstrip": False,
        "single_word": False, "special": True}))),
    "gpt2, legacy map with a model-specific token": ("gpt2", dict(
        files={"special_tokens_map.json": {"audio_token": "<|audio|>", "eos_token": "<|im_end|>"}})),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_layouts_read_as_transformers_reads_them(tiny_models, tmp_path, variant):
    arch, changes = VARIANTS[variant]
    assert_same(_variant(tiny_models[arch], tmp_path / "model", **changes))


# ---------------------------------------------------------------- what falls back

FALLBACKS = {
    "no tokenizer.json": lambda d: (d / "tokenizer.json").unlink(),
    "tokenizer code": lambda d: _edit(d / "tokenizer_config.json", auto_map={"AutoTokenizer": ["x.Tok", None]}),
    "model code": lambda d: _edit(d / "config.json", auto_map={"AutoModelForCausalLM": "m.M"}),
    "unknown model type": lambda d: _edit(d / "config.json", model_type="someday"),
    "a class not rebuilt here": lambda d: (_edit(d / "tokenizer_config.json", tokenizer_class="GemmaTokenizer"),
                                           _edit(d / "config.json", model_type="gemma2")),
    "no weights": lambda d: (d / "model.safetensors").unlink(),
    "missing shard": lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))),
    "no context length": lambda d: _edit(d / "config.json", max_position_embeddings=None),
    "broken tokenizer.json": lambda d: (d / "tokenizer.json").write_text("{not json"),
    "tokenizer.json tokenizers cannot read": lambda d: (d / "tokenizer.json").write_text('{"model": 3}'),
    "Mistral regex fix": lambda d: _edit(d / "tokenizer_config.json", fix_mistral_regex=True),
    "legacy added_tokens.json": lambda d: (d / "added_tokens.json").write_text('{"<x>": 999}'),
}


def _edit(path: Path, **values) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_what_cannot_be_read_quickly_falls_back(tiny_models, tmp_path, case):
    directory = shutil.copytree(tiny_models["qwen2"], tmp_path / "model")
    FALLBACKS[case](directory)
    with pytest.raises(NotQuick):
        quick_model(str(directory), dtype="float32")


@pytest.mark.parametrize("name", ["nobody/not-in-the-cache", "Qwen/Qwen2.5-0.5B", "no/such/path",
                                  "./missing-dir", "model.gguf", "/tmp"])
def test_names_that_are_not_local_or_cached_fall_back(name):
    with pytest.raises(NotQuick):
        quick_model(name, dtype="float32")


def test_a_gguf_file_falls_back(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(NotQuick):
        quick_model(str(gguf), dtype="float32")


def test_a_cached_hub_model_is_read_from_its_snapshot(tiny_models, tmp_path):
    """A hub name complete in the Hugging Face cache (offline): read from the snapshot that
    refs/main points to, with the fingerprint, vocab key and ids the loader gives it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny"
    shutil.copytree(tiny_models["gpt2"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "import json; from tokentree.lm.quick_tokens import quick_model; from tokentree.lm.loader import load_model\n"
        "q = quick_model('someone/tiny', dtype='float32'); m = load_model('someone/tiny', device='cpu')\n"
        "t = 'Once upon a time \\u65e5\\n x'\n"
        "print(json.dumps([q.fingerprint, m.fingerprint, q.vocab_key, m.vocab_key, q.context_length,"
        " m.context_length, q.encode(t), list(m.tokenizer.encode(t))]))\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    qf, mf, qk, mk, qc, mc, qi, mi = json.loads(result.stdout.strip().splitlines()[-1])
    assert qf == mf == f"someone/tiny@{commit}:float32"
    assert (qk, qc, qi) == (mk, mc, mi)


def _args(**over) -> Namespace:
    base = dict(server=None, trust_remote_code=False, dtype=None, bf16=False, device=None, device_map=None)
    return Namespace(**{**base, **over})


@pytest.mark.parametrize("over, env", [
    (dict(trust_remote_code=True), None),
    (dict(server="http://localhost:8000/v1"), None),
    (dict(device="cuda:3"), None),
    ({}, "0"),
])
def test_launch_loads_first_for_servers_model_code_and_when_asked(tiny_models, monkeypatch, over, env):
    from tokentree.config import Config
    from tokentree.launch import QUICK_START_ENV, _quick_model

    if env is not None:
        monkeypatch.setenv(QUICK_START_ENV, env)
    assert _quick_model(_args(**over), Config(), str(tiny_models["qwen2"])) is None
    monkeypatch.delenv(QUICK_START_ENV, raising=False)
    assert _quick_model(_args(), Config(), str(tiny_models["qwen2"])) is not None


def test_launch_uses_the_sessions_dtype(tiny_models):
    from tokentree.config import Config
    from tokentree.launch import _quick_model

    quick = _quick_model(_args(bf16=True), Config(), str(tiny_models["qwen2"]))
    assert quick.fingerprint.endswith(":bfloat16")


# ---------------------------------------------------------------- the launch flow

def _fake_screen(monkeypatch, seen: dict):
    """No terminal: run_tui records what it was given and runs the background load inline."""
    import tokentree.launch
    import tokentree.tui.app

    monkeypatch.setattr(tokentree.launch, "require_terminal", lambda: None)

    def fake_tui(explorer, config, load_engine=None):
        seen["before"] = explorer.snapshot()
        seen["load_engine"] = load_engine
        task = explorer.loading_job(load_engine)
        try:
            result = task.run()
        except Exception as exc:  # noqa: BLE001 -- as the worker does
            task.fail(exc)
        else:
            task.finish(result)
        seen["ran"] = explorer.run_jobs_inline()
        seen["after"] = explorer.snapshot()
        seen["explorer"] = explorer
        return 0

    monkeypatch.setattr(tokentree.tui.app, "run_tui", fake_tui)


def test_new_session_starts_before_the_model_and_attaches_it_after(tiny_models, tmp_path, monkeypatch):
    from tokentree.cli import main
    from tokentree.paths import default_db_path
    from tokentree.store import Store

    seen: dict = {}
    _fake_screen(monkeypatch, seen)
    prompt = tmp_path / "story.txt"
    prompt.write_text("Caf\u00e9 \u65e5\u672c Once upon a time", encoding="utf-8")
    assert main(["--model", str(tiny_models["llama"]), "-i", str(prompt)]) == 0
    assert seen["load_engine"] is not None  # the model loaded behind the screen
    before, after = seen["before"], seen["after"]
    assert "Caf\u00e9 \u65e5\u672c Once upon a time" in "".join(t.text for t in before.prompt)  # text, not ids
    assert not before.candidates and after.candidates
    explorer = seen["explorer"]
    assert explorer.engine is not None and explorer.error is None and seen["ran"] >= 1
    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        info = store.session(sid)
        assert (info.fingerprint, info.vocab_key) == (explorer.engine.info.fingerprint, explorer.engine.info.vocab_key)
        root = store.branches(sid)[0].root_node_id
        ids = [n.token_id for n in store.path_nodes(root)]
        assert ids == explorer.engine.encode(prompt.read_text(encoding="utf-8"))
    finally:
        store.close()


def test_ids_the_model_would_not_make_are_never_extended(tiny_models, tmp_path, monkeypatch):
    """Should the quick reader ever differ from the model's own tokenizer: the status line
    says so, the engine is dropped, and nothing is computed or recorded for those ids."""
    import tokentree.lm.quick_tokens
    from tokentree.cli import main

    real = tokentree.lm.quick_tokens.QuickModel.encode
    monkeypatch.setattr(tokentree.lm.quick_tokens.QuickModel, "encode", lambda self, text: real(self, text)[:-1])
    seen: dict = {}
    _fake_screen(monkeypatch, seen)
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    assert main(["--model", str(tiny_models["qwen2"]), "-i", str(prompt)]) == 0
    explorer = seen["explorer"]
    assert explorer.engine is None and seen["ran"] == 0
    assert "splits" in explorer.error and "story.txt" in explorer.error
    assert not seen["after"].candidates
    explorer.append()
    assert explorer.engine is None and explorer.run_jobs_inline() == 0


def test_a_prompt_longer_than_the_context_is_refused_before_writing(tiny_models, tmp_path, monkeypatch, capsys):
    from tokentree.cli import main
    from tokentree.paths import default_db_path

    seen: dict = {}
    _fake_screen(monkeypatch, seen)
    prompt = tmp_path / "long.txt"
    prompt.write_text(" one two three" * 200, encoding="utf-8")
    db = default_db_path()
    existed = db.exists()
    assert main(["--model", str(tiny_models["qwen2"]), "-i", str(prompt)]) == 2
    err = capsys.readouterr().err
    assert "the model's context is 256" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "load_engine" not in seen
    if existed:
        from tokentree.store import Store

        store = Store.open(db)
        try:
            assert store.list_sessions() == []
        finally:
            store.close()


def test_quick_reading_imports_neither_torch_nor_transformers(tiny_models):
    code = ("import sys; from tokentree.lm.quick_tokens import quick_model; "
            f"q = quick_model({str(tiny_models['llama'])!r}, dtype='float32'); q.encode('hi'); q.token_bytes([1, 2]); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the copied tables

def test_tables_match_the_installed_transformers():
    """tokenizer_files.py copies three of transformers' tables: a new version that changes
    them must be looked at (the class AutoTokenizer picks could change)."""
    from transformers.models.auto import tokenization_auto as auto

    assert INCORRECT_HUB_CLASS == frozenset(auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
    assert tuple(GENERIC_MODEL_IDS) == tuple(auto.MODEL_IDS_TO_TOKENIZERS_BACKEND)
    for model_type, name in REGISTERED.items():
        assert auto.TOKENIZER_MAPPING_NAMES.get(model_type) == name, model_type
