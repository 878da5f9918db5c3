"""Safe defaults: no remote code unless asked, saved prompts stay in their folder and never
overwrite, data files are user-only, and no token from the environment is ever stored."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_engine import FakeEngine, new_session
from tokentree.cli import build_app_parser, main
from tokentree.config import Config, DisplayConfig
from tokentree.core.explorer import Explorer
from tokentree.paths import safe_stem
from tokentree.paths import default_db_path, log_path, saved_prompts_dir
from tokentree.store import Store

CONFIG = Config(display=DisplayConfig(tokens_to_show=5))
SECRET = "hf_SeCrEtToKeN0123456789abcdefXYZ"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------ trust_remote_code


def test_trust_remote_code_is_off_unless_asked():
    parser = build_app_parser()
    assert parser.parse_args([]).trust_remote_code is False
    assert parser.parse_args(["--trust-remote-code"]).trust_remote_code is True


@pytest.mark.parametrize("flag", [False, True])
def test_launch_passes_the_flag_to_the_loader(monkeypatch, flag):
    """launch._load_engine hands exactly the CLI's choice to load_model (no torch needed)."""
    import tokentree.launch

    seen = {}

    def load_model(name, **kwargs):
        seen.update(kwargs, name=name)
        return types.SimpleNamespace(name=name)

    monkeypatch.setitem(sys.modules, "tokentree.lm.loader", types.SimpleNamespace(load_model=load_model))
    monkeypatch.setitem(sys.modules, "tokentree.lm.engine",
                        types.SimpleNamespace(Engine=lambda loaded, **kw: ("engine", loaded)))
    argv = ["--trust-remote-code"] if flag else []
    args = build_app_parser().parse_args(argv)
    tokentree.launch._load_engine(args, Config(), "some/model", quiet=True)
    assert seen["trust_remote_code"] is flag and seen["name"] == "some/model"


def test_loader_passes_trust_remote_code_to_every_from_pretrained(monkeypatch, tiny_model):
    """The real loader, on a real (tiny) model: config, tokenizer and weights are all loaded
    with trust_remote_code=False by default, and True only when asked."""
    import transformers

    from tokentree.lm.loader import load_model

    calls = []
    for cls in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        target = getattr(transformers, cls)
        original = target.from_pretrained.__func__

        def spy(klass, *args, _orig=original, _name=cls, **kwargs):
            calls.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _orig(klass, *args, **kwargs)

        monkeypatch.setattr(target, "from_pretrained", classmethod(spy))
    load_model(str(tiny_model), device="cpu")
    assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(value is False for _, value in calls), calls
    calls.clear()
    load_model(str(tiny_model), device="cpu", trust_remote_code=True)
    assert calls and all(value is True for _, value in calls), calls


# ------------------------------------------------------------------ saving prompts


class TextEngine(FakeEngine):
    """The fake model, with some tokens' text replaced."""

    def __init__(self, pieces: dict[int, bytes]) -> None:
        super().__init__()
        self.pieces = pieces

    def token_bytes(self, ids) -> dict[int, bytes]:
        return {**super().token_bytes(ids), **{i: self.pieces[i] for i in ids if i in self.pieces}}


def _explorer_with_text(store, pieces: dict[int, bytes]) -> Explorer:
    """A session whose token text is `pieces` where given."""
    engine = TextEngine(pieces)
    sid = new_session(store, engine, {"p": " the cat sat"})
    ex = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name)
    ex.attach_engine(engine)
    ex.run_jobs_inline()
    return ex


HOSTILE = {
    1: b"/../../../../etc/passwd",  # " the"
    2: b"\x00..\\..\\C:\\Windows ",  # " cat"
    3: b"~/.ssh/authorized_keys\n",  # " sat"
}


def test_save_stays_in_the_prompts_folder_and_never_overwrites(tmp_path, tokentree_home):
    store = Store.open(default_db_path())
    try:
        ex = _explorer_with_text(store, HOSTILE)
        folder = saved_prompts_dir()
        folder.mkdir(parents=True, mode=0o700)
        stem = safe_stem(b"".join(HOSTILE.values()).decode("utf-8", "replace"))
        # Already taken: a precious file, and a symlink pointing outside the folder.
        (folder / f"{stem}.txt").write_text("precious")
        outside = tmp_path / "outside.txt"
        outside.write_text("outside")
        (folder / f"{stem}-2.txt").symlink_to(outside)
        paths = [ex.features.branches.save_branch() for _ in range(3)]
        # Taken names are skipped (the link is never followed); saving the same text again
        # finds the file it wrote instead of writing another.
        assert [p.name for p in paths] == [f"{stem}-3.txt"] * 3
        for p in paths:
            assert p.parent.resolve() == folder.resolve()
            assert p.read_bytes().startswith(HOSTILE[1])  # the text itself, whole
        assert (folder / f"{stem}.txt").read_text() == "precious"
        assert outside.read_text() == "outside"
        # Nothing else appeared anywhere under the data dir or next to it.
        everything = {p.relative_to(tokentree_home) for p in tokentree_home.rglob("*")}
        assert all(p.parts[0] != ".." for p in everything)
        assert not list(tmp_path.glob("etc*")) and not (tmp_path / "passwd").exists()
        saved = [e.payload["path"] for e in store.events(ex.session_id) if e.type == "prompt.saved"]
        assert saved == [str(paths[0])]
    finally:
        store.close()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_safe_stem_is_always_a_plain_file_name(text):
    stem = safe_stem(text)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*|branch", stem), stem
    assert 0 < len(stem) <= 40


# ------------------------------------------------------------------ permissions


def test_database_directory_and_files_are_user_only(tokentree_home):
    with umask(0):  # even with the most permissive umask
        store = Store.open(default_db_path())
        try:
            new_session(store, FakeEngine(), {"p": " the cat"})
            db = default_db_path()
            assert mode(db.parent) == 0o700
            assert mode(db) == 0o600
            for side in ("-wal", "-shm"):
                extra = Path(str(db) + side)
                if extra.exists():
                    assert mode(extra) == 0o600, side
        finally:
            store.close()


def test_nested_database_path_directories_are_user_only(tmp_path):
    db = tmp_path / "a" / "b" / "tokentree.db"
    with umask(0):
        Store.open(db).close()
    assert mode(db) == 0o600 and mode(db.parent) == 0o700


def test_log_file_and_data_dir_are_user_only(tokentree_home):
    from tokentree.logs import setup_logging

    with umask(0):
        path = setup_logging()
    assert path == log_path()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_saved_prompts_are_user_only(tokentree_home):
    with umask(0):
        store = Store.open(default_db_path())
        try:
            path = _explorer_with_text(store, {}).features.branches.save_branch()
        finally:
            store.close()
    assert mode(path.parent) == 0o700 and mode(path) == 0o600


def test_backup_is_user_only(tmp_path, tokentree_home, capsys):
    store = Store.open(default_db_path())
    try:
        new_session(store, FakeEngine(), {"p": " the cat"})
    finally:
        store.close()
    with umask(0):
        assert main(["db", "backup", str(tmp_path / "b.db")]) == 0
    assert mode(tmp_path / "b.db") == 0o600


# ------------------------------------------------------------------ no secrets


def test_tokens_from_the_environment_are_never_stored(tmp_path, tokentree_home, monkeypatch, capsys):
    """A whole session through the CLI with HF tokens set: nothing written (database, log,
    saved prompt, backup, every export format, session listing) contains them."""
    import tokentree.launch
    import tokentree.tui.app

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACEHUB_API_TOKEN"):
        monkeypatch.setenv(var, SECRET)
    engine = FakeEngine()
    monkeypatch.setattr(tokentree.launch, "_load_engine", lambda *a, **k: engine)
    monkeypatch.setattr(tokentree.launch, "_choose_model", lambda args, config: (args.model or "fake", None))
    monkeypatch.setattr(tokentree.launch, "require_terminal", lambda: None)  # the screen is faked

    def fake_tui(explorer, config, **_):
        explorer.run_jobs_inline()
        for command in ("append", "append", "pop", "duplicate_branch", "append", "save_branch"):
            explorer.handler(command)()
            explorer.run_jobs_inline()
        return 0

    monkeypatch.setattr(tokentree.tui.app, "run_tui", fake_tui)
    prompt = tmp_path / "p.txt"
    prompt.write_text("the cat sat on the mat")
    assert main(["--input", str(prompt)]) == 0
    outputs = []
    for fmt in ("text", "json", "dot", "markdown"):
        out = tmp_path / f"export.{fmt}"
        assert main(["export", "last", "-f", fmt, "-o", str(out)]) == 0
        outputs.append(out)
    assert main(["sessions", "--json"]) == 0
    assert main(["db", "backup", str(tmp_path / "backup.db")]) == 0
    stdout = capsys.readouterr().out
    outputs.append(tmp_path / "backup.db")
    files = [p for p in tokentree_home.rglob("*") if p.is_file()] + outputs
    assert any(p.name == "tokentree.db" for p in files) and any(p.parent.name == "prompts" for p in files)
    needle = SECRET.encode()
    leaks = [str(p) for p in files if needle in p.read_bytes()]
    assert not leaks and SECRET not in stdout, leaks


def test_the_model_fingerprint_holds_no_token(tiny_model, monkeypatch):
    from tokentree.lm.loader import load_model

    monkeypatch.setenv("HF_TOKEN", SECRET)
    loaded = load_model(str(tiny_model), device="cpu")
    for value in (loaded.name, loaded.fingerprint, loaded.vocab_key, loaded.device, loaded.dtype):
        assert SECRET not in value
