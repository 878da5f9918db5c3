import pytest

from tokentree.errors import InputError
from tokentree.prompts import default_prompt_path, read_prompt


def test_reads_utf8_and_drops_one_trailing_newline(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Café\n\n", encoding="utf-8")
    assert read_prompt(f) == "Café\n"


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "not found"),
        ("dir", "is a directory"),
        (b"", "empty"),
        (b"  \n\t\n", "empty"),
        (b"\x7fELF\x00\x01", "binary"),
        (b"caf\xe9 latin-1", "not UTF-8"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, content, needle):
    f = tmp_path / "p.txt"
    if content == "dir":
        f.mkdir()
    elif content is not None:
        f.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        read_prompt(f)


def test_default_prompt_falls_back_to_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = default_prompt_path("prompts/gsm8k.txt")
    assert path.is_file() and "Natalia" in path.read_text()
