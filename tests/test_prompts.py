import pytest

from tokentree.errors import InputError
from tokentree.paths import safe_stem, saved_prompts_dir
from tokentree.prompts import default_prompt_path, read_prompt, save_prompt


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


@pytest.mark.parametrize("raw", [b"one\r\ntwo\r\n", b"one\rtwo\r", b"one\r\ntwo\n", b"\xef\xbb\xbfone\r\ntwo\r\n"])
def test_line_endings_are_normalised(tmp_path, raw):
    """A file saved on Windows (CRLF) or old Mac (CR) reads as the LF file does: no '\\r'
    reaches the tokenizer, and the one trailing newline is dropped as for LF."""
    f = tmp_path / "p.txt"
    f.write_bytes(raw)
    assert read_prompt(f) == "one\ntwo"


def test_a_prompt_of_only_line_ends_is_empty(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"\r\n\r\r\n")
    with pytest.raises(InputError, match="empty"):
        read_prompt(f)


# ------------------------------------------------------------------ saving (x)


@pytest.mark.parametrize(
    "text, stem",
    [
        ("The lighthouse keeper had not seen a ship in eleven years", "the-lighthouse-keeper-had-not-seen-a"),  # not "...-seen-a-shi"
        ("x" * 50, "x" * 40),  # one word longer than the limit: cut inside it, never empty
        ("short words", "short-words"),
        ("a " * 30, "-".join(["a"] * 20)),  # 39 characters: 20 words fit, a 21st would not
        ("?!", "branch"),
    ],
)
def test_safe_stem_cuts_between_words(text, stem):
    assert safe_stem(text) == stem
    assert len(stem) <= 40


def test_saving_the_same_text_again_writes_nothing(tokentree_home):
    path, created = save_prompt(" the cat sat")
    assert created and path.name == "the-cat-sat.txt" and path.read_text(encoding="utf-8") == " the cat sat"
    again, created = save_prompt(" the cat sat")
    assert again == path and not created
    assert sorted(p.name for p in saved_prompts_dir().iterdir()) == ["the-cat-sat.txt"]
    # Another text with the same stem gets its own file; saving it again finds that one.
    other, created = save_prompt("The cat sat!")
    assert created and other.name == "the-cat-sat-2.txt"
    assert save_prompt("The cat sat!") == (other, False)
    assert save_prompt(" the cat sat") == (path, False)
    assert len(list(saved_prompts_dir().iterdir())) == 2


def test_saving_never_reads_through_a_link_nor_overwrites(tmp_path, tokentree_home):
    folder = saved_prompts_dir()
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("the cat sat")
    (folder / "the-cat-sat.txt").symlink_to(outside)  # holds the text, but through a link
    (folder / "the-cat-sat-2.txt").write_text("the cat sat.")  # same stem, other text
    path, created = save_prompt("the cat sat")
    assert created and path.name == "the-cat-sat-3.txt" and not path.is_symlink()
    assert (folder / "the-cat-sat-2.txt").read_text() == "the cat sat."
    assert outside.read_text() == "the cat sat"
