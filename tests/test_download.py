"""A hub model that is not in the cache downloads before it loads, with progress on stderr.

The hub is tests/hub_server.py on a loopback port; HF_ENDPOINT points at it and HF_HOME at
a temporary folder. huggingface_hub reads those (and HF_HUB_OFFLINE, which conftest sets for
every other test) when it is imported, so each download runs in a new process: the real
`tokentree` command in a pseudo-terminal, or `python -c` for the progress text alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub_server import FakeHub
from test_tui_pty import CTRL_C, CTRL_Q, Terminal

REPO = "tokentree-tests/tiny-qwen2"
WEIGHTS = "model.safetensors"


@pytest.fixture
def hub(tiny_models, tmp_path, monkeypatch):
    """The stand-in hub serving the tiny Qwen2 model as REPO, and this process's environment
    pointed at it (with an empty cache) for the child processes the tests start."""
    with FakeHub({REPO: tiny_models["qwen2"]}) as server:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)  # 127.0.0.1 is reached directly
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


def _snapshot(tmp_path) -> Path:
    return tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / FakeHub.commit(REPO)


def _download(code: str = f"print(ensure_downloaded({REPO!r}))") -> subprocess.CompletedProcess:
    script = f"from tokentree.lm.download import download_model, ensure_downloaded\n{code}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)


def _lines(stderr: bytes) -> list[str]:
    """What a terminal ends up showing: each \\r-redrawn bar line as its last state."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in stderr.decode().split("\n") if line.strip()]


def test_download_shows_files_bytes_rate_and_time_left(hub, tmp_path, tiny_models):
    result = _download()
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"True\n"
    from tqdm import tqdm

    size = tqdm.format_sizeof(sum(p.stat().st_size for p in tiny_models["qwen2"].iterdir()))  # "563k"
    lines = _lines(result.stderr)
    assert lines[0] == (f"tokentree: downloading {REPO} from {hub.endpoint}: 5 files, {size}B "
                        "(ctrl+c stops; files done stay in the cache)")
    assert re.fullmatch(rf"downloaded 5 files: 100%\|█+\| {size}/{size} \[\d\d:\d\d<00:00, +[\d.]+[kM]?B/s\]",
                        lines[-1]), lines[-1]
    drawn = result.stderr.decode()
    for i, name in enumerate(["generation_config.json", "tokenizer_config.json", "config.json",
                              "tokenizer.json", WEIGHTS], 1):  # smallest first, the weights last
        assert f"{name} ({i}/5)" in drawn
    assert re.search(r"B/s\]", drawn) and re.search(r"<\d\d:\d\d", drawn)  # rate and time left
    # Exactly what from_pretrained reads, each fetched once, nothing else asked of the hub.
    assert hub.requests[0] == ("GET", f"/api/models/{REPO}")
    fetched = sorted(path.rsplit("/", 1)[-1] for method, path in hub.requests if "/resolve/main/" in path)
    assert fetched == sorted(p.name for p in tiny_models["qwen2"].iterdir() for _ in ("HEAD", "GET"))
    assert len(hub.requests) == 1 + len(fetched)
    fetched = fetched[::2]
    assert sorted(p.name for p in _snapshot(tmp_path).iterdir()) == fetched

    hub.requests.clear()
    again = _download()
    assert again.returncode == 0 and again.stdout == b"False\n" and again.stderr == b""
    assert hub.requests == [], "a cached model asks the hub nothing"


def test_a_model_the_hub_does_not_have_is_one_line(hub, tmp_path):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", "tokentree-tests/no-such-model", "--input", str(prompt)], tmp_path)
    assert term.finish(timeout=60) == 2
    lines = [line.strip() for line in term.raw.decode(errors="replace").splitlines() if line.strip()]
    assert lines == ["tokentree: loading tokentree-tests/no-such-model ...",
                     "tokentree: model 'tokentree-tests/no-such-model' was not found on the Hugging Face Hub; "
                     "check the name, or pass --model PATH to a local model directory"]
    assert hub.requests == [("GET", "/api/models/tokentree-tests/no-such-model")]


def test_first_run_downloads_then_loads_and_the_second_run_prints_nothing(hub, tmp_path):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    first = Terminal(["--model", REPO, "--input", str(prompt)], tmp_path)
    first.wait_for("Once upon a time", "next token", " idle ")
    shown = first.raw.decode(errors="replace")
    assert f"tokentree: downloading {REPO} from {hub.endpoint}: 5 files" in shown
    assert f"{WEIGHTS} (5/5)" in shown and "downloaded 5 files: 100%" in shown
    first.keys(CTRL_Q)
    assert first.finish() == 0
    assert (_snapshot(tmp_path) / WEIGHTS).is_file()

    hub.requests.clear()
    second = Terminal(["--resume", "last"], tmp_path)
    second.wait_for("Once upon a time", "next token", " idle ")
    second.keys(CTRL_Q)
    assert second.finish() == 0
    shown = second.raw.decode(errors="replace")
    assert "downloading" not in shown and "%|" not in shown
    assert hub.requests == [], "a cached model is loaded as it is, without asking the hub"


def test_ctrl_c_during_the_download_exits_130_with_one_line(hub, tmp_path):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    hub.stall = True  # the weights stop after their first chunk until hub.release()
    term = Terminal(["--model", REPO, "--input", str(prompt)], tmp_path)
    deadline = time.monotonic() + 120
    while not (hub.stalled.is_set() and f"{WEIGHTS} (5/5)" in term.raw.decode(errors="replace")):
        assert time.monotonic() < deadline and term.child.isalive(), term.raw[-500:]
        term.read(0.1)  # the weights' download has begun and its bar is drawn: in the middle now
    term.child.send(CTRL_C)  # the terminal sends SIGINT to the process
    # The hub holds the weights back until the end of the test, so the download cannot
    # finish: exiting at all means it stopped at once, not after the download.
    status = term.finish()
    assert status == 130
    shown = term.raw.decode(errors="replace")
    after_bar = shown[shown.rindex("%|"):].split("\n", 1)[1]
    assert [line.strip() for line in after_bar.splitlines() if line.strip()] == ["tokentree: interrupted"]
    assert "Traceback" not in shown

    # The small files stay in the cache; huggingface_hub removes its partial weights file
    # (it resumes nothing across processes), so the next run fetches only the weights, again
    # before the screen opens (a model without its weights is not taken for a cached one).
    snapshot = _snapshot(tmp_path)
    assert (snapshot / "config.json").is_file() and not (snapshot / WEIGHTS).exists()
    assert not list((tmp_path / "hf" / "hub").rglob("*.incomplete"))
    hub.stall = False
    hub.release()
    hub.requests.clear()
    again = Terminal(["--model", REPO, "--input", str(prompt)], tmp_path)
    again.wait_for("Once upon a time", "next token", " idle ")
    again.keys(CTRL_Q)
    assert again.finish() == 0
    assert f"{WEIGHTS} (5/5)" in again.raw.decode(errors="replace")
    assert [path for method, path in hub.requests if method == "GET"][1:] == [f"/{REPO}/resolve/main/{WEIGHTS}"]


def test_offline_and_not_cached_says_so_in_one_line(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _download("download_model('tokentree-tests/tiny-qwen2')\nprint('no download')")
    assert result.returncode == 0 and result.stdout == b"no download\n" and result.stderr == b""
    assert hub.requests == []  # the load then says HF_HUB_OFFLINE is set (test_loader)


@pytest.mark.parametrize(
    ("listing", "code", "expected"),
    [
        (["config.json", "model.safetensors", "pytorch_model.bin", "README.md", "tokenizer.json",
          "onnx/model.onnx", "onnx/config.json", ".gitattributes", "merges.txt", "vocab.json"],
         False, ["config.json", "merges.txt", "model.safetensors", "tokenizer.json", "vocab.json"]),
        (["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors", "consolidated.safetensors", "tokenizer.model", "modeling_x.py"],
         True, ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                "model.safetensors.index.json", "modeling_x.py", "tokenizer.model"]),
        (["config.json", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "modeling_x.py"],
         False, ["config.json", "pytorch_model.bin"]),
    ],
)
def test_only_what_from_pretrained_reads(listing, code, expected):
    from tokentree.lm.download import needed_files

    assert needed_files(listing, code=code) == expected


def test_a_partly_cached_model_is_not_taken_for_a_cached_one(tmp_path, monkeypatch):
    """A snapshot with its config but not every weight shard is downloaded again."""
    import json

    import huggingface_hub.constants

    snapshot = tmp_path / "models--a--b" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--a--b" / "refs").mkdir()
    (tmp_path / "models--a--b" / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    from tokentree.lm.download import cached_snapshot

    assert cached_snapshot("a/b") is None  # no weights
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    (snapshot / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert cached_snapshot("a/b") is None  # one shard missing
    (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"")
    assert cached_snapshot("a/b") == snapshot
    assert os.path.isdir(cached_snapshot("a/b"))
