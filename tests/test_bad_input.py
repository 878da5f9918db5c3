"""The bad-input table: every way a user can hand tokentree something unusable.

Each case runs the real command line (`tokentree.cli.main([...])`) and must give ONE clear
line on stderr, a non-zero exit, no traceback, and leave the existing data exactly as it
was (file bytes compared before and after). None of them needs a model: every check runs
before the model would load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from fake_engine import FakeEngine, FakeLoaded, new_session
from tokentree.cli import main
from tokentree.paths import default_db_path
from tokentree.store import Store


def files_digest(directory: Path) -> dict[str, str]:
    """name -> sha256 of every file under `directory` (the data dir, a db's folder)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != "tokentree.log":  # the log may gain a line
            out[str(p.relative_to(directory))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def existing(tokentree_home) -> Path:
    """A default database holding one session: the data that must survive every bad input."""
    db = default_db_path()
    store = Store.open(db)
    try:
        new_session(store, FakeEngine(), {"cat": " the cat sat"})
    finally:
        store.close()  # the last close checkpoints the WAL into the file
    return db


@pytest.fixture
def good_prompt(tmp_path) -> Path:
    p = tmp_path / "ok.txt"
    p.write_text("The cat sat on the mat.\n", encoding="utf-8")
    return p


def run_bad(capsys, argv, *needles, code=2):
    """Run the CLI; assert one clear line, the exit code and no traceback; return the line."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == code, (rc, err)
    assert err.count("\n") == 1 and err.startswith("tokentree: "), err
    assert "Traceback" not in err + captured.out and "internal error" not in err, err
    for needle in needles:
        assert needle in err, err
    return err.strip()


# ------------------------------------------------------------------ --input


def _binary(p: Path):
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))


def _non_utf8(p: Path):
    p.write_bytes("café au lait".encode("latin-1"))


def _oversized(p: Path):
    with open(p, "wb") as f:  # sparse: costs no disk
        f.truncate(64 * 1024 * 1024)


@pytest.mark.parametrize(
    "make, needle",
    [
        (None, "input file not found"),
        ("dir", "is a directory"),
        (lambda p: p.write_text(""), "empty"),
        (lambda p: p.write_text("  \n\n\t\n"), "empty"),
        (_binary, "binary"),
        (_non_utf8, "not UTF-8"),
        (_oversized, "too large"),
    ],
    ids=["missing", "directory", "empty", "blank", "binary", "non-utf8", "oversized"],
)
def test_bad_input_file(capsys, tmp_path, existing, make, needle):
    target = tmp_path / "prompt.txt"
    if make == "dir":
        target.mkdir()
    elif make is not None:
        make(target)
    before = files_digest(existing.parent)
    line = run_bad(capsys, ["--input", target], needle)
    assert str(target) in line  # names the file
    assert files_digest(existing.parent) == before


def test_bad_input_among_good_ones_writes_nothing(capsys, tmp_path, existing, good_prompt):
    before = files_digest(existing.parent)
    run_bad(capsys, ["-i", good_prompt, "-i", tmp_path / "missing.txt"], "input file not found")
    assert files_digest(existing.parent) == before


# ------------------------------------------------------------------ config.toml


@pytest.mark.parametrize(
    "text, needles",
    [
        ("[display\ntokens_to_show = 30\n", ["invalid TOML"]),
        ("[display]\ntokens_to_shw = 30\n", ["display.tokens_to_shw", "unknown key"]),
        ("[modle]\nname = 'x'\n", ["unknown section", "modle"]),
        ("[display]\ntokens_to_show = 'thirty'\n", ["display.tokens_to_show", "must be int"]),
        ("[display]\ntokens_to_show = true\n", ["display.tokens_to_show", "must be int"]),
        ("[display]\ntokens_to_show = -5\n", ["display.tokens_to_show", "positive"]),
        ("[display]\ncache_size = 0\n", ["display.cache_size", "positive"]),
        ("[model]\nname = 3\n", ["model.name", "must be str"]),
        ("display = 3\n", ["[display] must be a table"]),
        ("[keys]\nundo = 3\n", ["keys.undo"]),
        (b"[model]\nname = '\xff'\n", ["cannot read config"]),
    ],
    ids=["syntax", "unknown-key", "unknown-section", "wrong-type", "bool-for-int", "negative",
         "zero-cache", "name-not-str", "not-a-table", "bad-keys", "non-utf8"],
)
def test_malformed_config(capsys, tmp_path, existing, good_prompt, text, needles):
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = files_digest(existing.parent)
    line = run_bad(capsys, ["--config", cfg, "--input", good_prompt], *needles)
    assert str(cfg) in line
    assert files_digest(existing.parent) == before


def test_unknown_key_binding_is_refused(tmp_path):
    """A [keys] table naming a command that does not exist (checked by the keymap)."""
    from tokentree.errors import ConfigError
    from tokentree.config import load_config
    from tokentree.tui.keymap import build_keymap

    cfg = tmp_path / "config.toml"
    cfg.write_text("[keys]\nno_such_command = 'z'\n")
    with pytest.raises(ConfigError, match="no_such_command"):
        build_keymap(load_config(cfg))


# ------------------------------------------------------------------ --resume


@pytest.mark.parametrize("ref, needle", [("99", "no session 99"), ("abc", "not a session id"),
                                         ("-1", "no session -1")])
def test_unknown_resume_id(capsys, existing, ref, needle):
    before = files_digest(existing.parent)
    run_bad(capsys, ["--resume", ref], needle)
    run_bad(capsys, ["export", ref], needle)
    assert files_digest(existing.parent) == before


def test_resume_without_any_database(capsys, tokentree_home):
    run_bad(capsys, ["--resume", "last"], "no sessions to resume")
    assert not default_db_path().exists()


def test_resume_and_input_together(capsys, existing, good_prompt):
    run_bad(capsys, ["--resume", "last", "--input", good_prompt], "cannot be combined")


# ------------------------------------------------------------------ database files


def _real_db(path: Path) -> Path:
    store = Store.open(path)
    try:
        new_session(store, FakeEngine(), {"cat": " the cat sat", "dog": " a dog ran away"})
    finally:
        store.close()
    assert not Path(str(path) + "-wal").exists()  # fully checkpointed: the file is everything
    return path


def _not_a_db(p: Path):
    p.write_text("these are my notes, not a database\n" * 20)


def _truncated(p: Path):
    _real_db(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2 + 100])


def _truncated_header(p: Path):
    _real_db(p)
    p.write_bytes(p.read_bytes()[:60])


def _newer_schema(p: Path):
    _real_db(p)
    con = sqlite3.connect(p)
    with con:
        con.execute("UPDATE alembic_version SET version_num = 'ffff00009999'")
    con.close()


def _foreign_sqlite(p: Path):
    con = sqlite3.connect(p)
    with con:
        con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO photos (name) VALUES ('holiday.jpg')")
    con.close()


def _read_only(p: Path):
    _real_db(p)
    p.chmod(0o444)


def _garbage_pages(p: Path):
    _real_db(p)
    data = bytearray(p.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for i in range(page, len(data), 7):  # keep the header, scramble every page after the first
        data[i] = (data[i] * 31 + 7) & 0xFF
    p.write_bytes(bytes(data))


DB_CASES = [
    (_not_a_db, ["not a tokentree database"]),
    (_truncated, ["truncated"]),
    (_truncated_header, ["truncated"]),
    (_newer_schema, ["newer tokentree", "ffff00009999"]),
    (_foreign_sqlite, ["not a tokentree database"]),
    (_read_only, ["read-only"]),
    (lambda p: p.mkdir(), ["is a directory"]),
]
DB_IDS = ["not-a-db", "truncated", "truncated-header", "newer-schema", "foreign-sqlite", "read-only",
          "directory"]


@pytest.mark.parametrize("make, needles", DB_CASES, ids=DB_IDS)
@pytest.mark.parametrize("command", ["sessions", "export", "db check", "db rebuild", "app"])
def test_bad_database(capsys, tmp_path, good_prompt, make, needles, command, monkeypatch):
    import tokentree.launch

    monkeypatch.setattr(tokentree.launch, "require_terminal", lambda: None)  # as in a terminal
    db = tmp_path / "data" / "tokentree.db"
    db.parent.mkdir()
    make(db)
    before = files_digest(db.parent)
    argv = ["--input", good_prompt] if command == "app" else command.split()
    run_bad(capsys, [*argv, "--db", db], *needles)
    assert files_digest(db.parent) == before  # no -wal/-shm left behind, no byte changed


def test_damaged_pages_are_reported_not_crashed(capsys, tmp_path):
    """A file with a valid header but scrambled pages: a clear line (and no write)."""
    db = tmp_path / "data" / "tokentree.db"
    db.parent.mkdir()
    _garbage_pages(db)
    before = files_digest(db.parent)
    rc = main(["sessions", "--db", str(db)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    assert files_digest(db.parent) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write in a read-only directory")
def test_read_only_directory(capsys, tmp_path):
    db = _real_db(tmp_path / "ro" / "tokentree.db")
    db.parent.chmod(0o555)
    try:
        before = files_digest(db.parent)
        run_bad(capsys, ["sessions", "--db", db], "cannot write in")
        assert files_digest(db.parent) == before
    finally:
        db.parent.chmod(0o755)


# ------------------------------------------------------------------ full disk


@contextlib.contextmanager
def disk_full():
    """While active, no new SQLite connection may grow its file: a write that needs a new
    page fails with SQLITE_FULL ("database or disk is full"), as on a full disk."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def _cap(dbapi_connection, _record):
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count={max(pages, 1)}")

    event.listen(Engine, "connect", _cap)
    try:
        yield
    finally:
        event.remove(Engine, "connect", _cap)


@pytest.fixture
def full_disk():
    with disk_full():
        yield


def _fake_launch(monkeypatch):
    """`tokentree --input` with the fake model and no screen (the store is what is tested)."""
    import tokentree.launch
    import tokentree.tui.app

    engine = FakeEngine(FakeLoaded(context_length=None))  # long prompts allowed
    monkeypatch.setattr(tokentree.launch, "_load_engine", lambda *a, **k: engine)
    monkeypatch.setattr(tokentree.launch, "_choose_model", lambda args, config: (args.model or "fake", None))
    monkeypatch.setattr(tokentree.launch, "require_terminal", lambda: None)
    monkeypatch.setattr(tokentree.tui.app, "run_tui", lambda *a, **k: 0)


def _events(db: Path) -> list[tuple]:
    # A plain connection, used only to read: closing it removes the -wal/-shm files that a
    # read-only one would leave behind (and that the byte comparisons would see).
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, session_id, version, type, payload FROM events ORDER BY seq").fetchall()
    finally:
        con.close()


def test_full_disk_on_a_new_session(capsys, tmp_path, existing, monkeypatch, full_disk):
    """A long prompt needs new pages: the write fails as on a full disk. One line, exit 2,
    and every event that was there before is still there, unchanged."""
    _fake_launch(monkeypatch)
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text(" the cat sat on the mat." * 200)
    before = _events(existing)
    run_bad(capsys, ["--input", long_prompt], "disk is full")
    after = _events(existing)
    assert after[: len(before)] == before


def test_full_disk_leaves_no_half_made_session(capsys, tmp_path, existing, monkeypatch, full_disk):
    """The session and its branches are one transaction: a failure adds nothing at all."""
    _fake_launch(monkeypatch)
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text(" the cat sat on the mat." * 200)
    before = files_digest(existing.parent)
    old = _events(existing)
    run_bad(capsys, ["--input", long_prompt], "disk is full")
    assert _events(existing) == old
    assert files_digest(existing.parent) == before


NO_TERMINAL = ("tokentree: the explorer needs a terminal (stdin and stdout must be a tty); "
               "use `tokentree export` for scripts")


def test_no_terminal_is_refused_before_anything_is_written(capsys, good_prompt, existing, monkeypatch):
    """Under pytest stdin and stdout are not terminals: a new session and a resume are both
    refused in one line, before the model loads and before the database is written."""
    import tokentree.launch

    def no_model(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(tokentree.launch, "_load_engine", no_model)
    before = files_digest(existing.parent)
    assert run_bad(capsys, ["--model", "m", "-i", good_prompt]) == NO_TERMINAL
    assert run_bad(capsys, ["--resume", "last"]) == NO_TERMINAL
    assert files_digest(existing.parent) == before


@pytest.mark.parametrize("stdin", ["pipe", "devnull"])
def test_no_terminal_through_the_real_command(tmp_path, good_prompt, stdin):
    """`echo | tokentree -i p.txt` and `tokentree -i p.txt < /dev/null`: one line, exit 2,
    no database (no half-made session), no traceback."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("tokentree")
    home = tmp_path / "home"
    env = dict(os.environ, TOKENTREE_HOME=str(home))
    kwargs = {"input": "\n"} if stdin == "pipe" else {"stdin": subprocess.DEVNULL}
    result = subprocess.run([str(exe), "--model", "m", "-i", str(good_prompt)], capture_output=True, text=True,
                            env=env, timeout=60, **kwargs)
    assert result.returncode == 2 and result.stderr == NO_TERMINAL + "\n", result.stderr
    assert not (home / "tokentree.db").exists()


def test_resume_a_session_without_branches(capsys, existing, monkeypatch):
    """Older tokentree could leave one behind (session and branches were separate commits):
    resuming it is a clear one-line refusal, not an internal error."""
    import tokentree.tui.app

    store = Store.open(existing)
    try:
        engine = FakeEngine()
        store.start_session(model_name=engine.loaded.name, fingerprint=engine.loaded.fingerprint,
                            vocab_key=engine.loaded.vocab_key, prompt_sources=["x.txt"])
    finally:
        store.close()

    def fake_tui(explorer, config, **_):
        explorer.snapshot()  # what the screen draws first
        return 0

    monkeypatch.setattr(tokentree.tui.app, "run_tui", fake_tui)
    rc = main(["--resume", "last"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no branches" in err, err
    assert "internal error" not in err and "Traceback" not in err


def test_full_disk_on_rebuild(capsys, tmp_path):
    db = tmp_path / "data" / "tokentree.db"
    db.parent.mkdir()
    _real_db(db)
    before = _events(db)
    with disk_full():
        rc = main(["db", "rebuild", "--db", str(db)])
    err = capsys.readouterr().err
    if rc != 0:  # the replay needed a new page: refused cleanly, events intact
        assert err.count("\n") == 1 and "disk is full" in err and "Traceback" not in err, err
    assert _events(db) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_on_export(capsys, existing):
    run_bad(capsys, ["export", "last", "-o", "/dev/full"], "cannot write /dev/full")


def test_backup_refuses_to_overwrite(capsys, tmp_path, existing):
    target = tmp_path / "backup.db"
    target.write_text("precious")
    run_bad(capsys, ["db", "backup", target], "already exists")
    assert target.read_text() == "precious"
    run_bad(capsys, ["db", "backup", tmp_path / "no-such-dir" / "b.db"], "not a directory")
