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
