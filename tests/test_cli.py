"""The command line: help, version, exit codes and one-line errors (no model needed)."""

import subprocess
import sys

import pytest

from tokentree import __version__
from tokentree.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tokentree {__version__}"


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--input", "--model", "--device", "--bf16", "--layer_prob", "--layer-prob", "--db",
                 "--config", "--resume", "--trust-remote-code", "--version"):
        assert flag in out


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "tokentree", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"tokentree {__version__}"


def test_db_path_honours_home_and_flag(capsys, tokentree_home, tmp_path, monkeypatch):
    assert main(["db", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tokentree_home / "tokentree.db")
    assert main(["db", "path", "--db", str(tmp_path / "x.db")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "x.db")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["db", "path", "--db", "~/y.db"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "y.db")


def test_the_explorer_opens_the_db_the_flag_names(capsys, tokentree_home, tmp_path):
    """The launcher resolves --db the same way (checked before any model loads)."""
    assert main(["--resume", "1"]) == 2
    assert f"{tokentree_home / 'tokentree.db'} does not exist yet" in capsys.readouterr().err
    missing = tmp_path / "none.db"
    assert main(["--resume", "1", "--db", str(missing)]) == 2
    assert f"no sessions to resume: {missing} does not exist yet" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--input", "/nonexistent/prompt.txt"], "input file not found"),
        (["--config", "/nonexistent/c.toml"], "config file not found"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_db_alone_lists_its_sub_commands(capsys):
    assert main(["db"]) == 2
    err = capsys.readouterr().err
    assert err == ("tokentree: `tokentree db` needs a sub-command: path, check, rebuild, backup FILE "
                   "(`tokentree db --help` says what each does)\n")


@pytest.fixture
def one_session(tokentree_home):
    from fake_engine import FakeEngine, new_session
    from tokentree.paths import default_db_path
    from tokentree.store import Store

    store = Store.open(default_db_path())
    try:
        return new_session(store, FakeEngine(), {"cat": " the cat sat"})
    finally:
        store.close()


def test_an_unknown_session_points_to_the_listing(capsys, one_session, tmp_path):
    from tokentree.paths import default_db_path

    assert main(["--resume", "999"]) == 2
    assert capsys.readouterr().err == (
        f"tokentree: no session 999 in {default_db_path()}; `tokentree sessions` lists them\n")
    assert main(["export", "999"]) == 2
    assert "; `tokentree sessions` lists them\n" in capsys.readouterr().err
    other = tmp_path / "my dbs" / "other.db"
    other.parent.mkdir()
    assert main(["export", "7", "--db", str(other)]) == 2
    assert capsys.readouterr().err.endswith(f"; `tokentree sessions --db '{other}'` lists them\n")


def test_export_refuses_to_overwrite_a_file_unless_forced(capsys, one_session, tmp_path):
    out = tmp_path / "tree.md"
    assert main(["export", "-f", "markdown", "-o", str(out)]) == 0
    first = out.read_text(encoding="utf-8")
    assert first.startswith("# tokentree session")
    out.write_text("precious")
    assert main(["export", "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"tokentree: {out} already exists; use --force to overwrite it\n"
    assert out.read_text() == "precious"
    link = tmp_path / "dangling.txt"
    link.symlink_to(tmp_path / "nowhere.txt")  # would create a file where the link points
    assert main(["export", "-o", str(link)]) == 2
    assert not (tmp_path / "nowhere.txt").exists()
    capsys.readouterr()
    assert main(["export", "-f", "markdown", "-o", str(out), "--force"]) == 0
    assert out.read_text(encoding="utf-8") == first
    assert main(["export", "-o", "/dev/null"]) == 0  # a device is not a file to protect


def _fake_app(monkeypatch):
    """`tokentree --input` with the fake model, no screen and no terminal check."""
    import tokentree.launch
    import tokentree.tui.app
    from fake_engine import FakeEngine

    engine = FakeEngine()
    monkeypatch.setattr(tokentree.launch, "_load_engine", lambda *a, **k: engine)
    monkeypatch.setattr(tokentree.launch, "_choose_model", lambda args, config: (args.model or "fake", None))
    monkeypatch.setattr(tokentree.launch, "require_terminal", lambda: None)
    monkeypatch.setattr(tokentree.tui.app, "run_tui", lambda *a, **k: 0)


def test_several_prompts_focus_the_first_and_names_stay_apart(monkeypatch, tmp_path, tokentree_home):
    """The same file twice is `name` and `name (2)`; the focus starts on the FIRST -i file;
    the session, its branches and the focus are written in one transaction."""
    from tokentree.paths import default_db_path
    from tokentree.store import Store

    _fake_app(monkeypatch)
    (tmp_path / "sub").mkdir()
    a, b, a2 = tmp_path / "cat.txt", tmp_path / "dog.txt", tmp_path / "sub" / "cat.txt"
    for path, text in ((a, " the cat sat"), (b, " the dog ran"), (a2, " a cat")):
        path.write_text(text)
    assert main(["-i", str(a), "-i", str(b), "-i", str(a), "-i", str(a2)]) == 0
    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        branches = store.branches(sid)
        assert [br.name for br in branches] == ["cat", "dog", "cat (2)", "cat (3)"]
        assert [br.focused for br in branches] == [True, False, False, False]
        assert list(store.session(sid).prompt_sources) == [str(a), str(b), str(a), str(a2)]
    finally:
        store.close()


def test_one_prompt_is_focused_without_an_extra_event(monkeypatch, tmp_path, tokentree_home):
    from tokentree.paths import default_db_path
    from tokentree.store import Store

    _fake_app(monkeypatch)
    prompt = tmp_path / "cat.txt"
    prompt.write_text(" the cat sat")
    assert main(["-i", str(prompt)]) == 0
    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        assert [e.type for e in store.events(sid)] == ["session.started", "branch.created"]
        assert [br.focused for br in store.branches(sid)] == [True]
    finally:
        store.close()
