"""Which model a launch explores, and through which backend: decided before torch loads.

- `choose_default`: a new session without --model explores the configured model
  (Qwen/Qwen2.5-0.5B) where it is in the Hugging Face cache or can be downloaded; where it
  cannot (no network, HF_HUB_OFFLINE), it explores the bundled SmolLM2-135M-Instruct and
  says why in one line. A model named with --model is never replaced: its failure is the error.
- `target`: what a model name loads. `--backend auto` (the default) runs a .gguf file on
  llama.cpp and everything else on transformers; the bundled model runs on transformers
  (every view) from its dequantized checkpoint unless `--backend llama` asks for its GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokentree.errors import InputError, ModelLoadError
from tokentree.lm import bundled
from tokentree.lm.open import gguf_source

BACKENDS = ("auto", "transformers", "llama")


@dataclass(frozen=True)
class Target:
    """What to load for a model name."""

    name: str  # for load_model (hub id, directory) or open_gguf (a GGUF name)
    llama: bool  # True: llama.cpp on a GGUF; False: transformers
    label: str | None = None  # the name a session records and the status bar shows, if not `name`
    gguf: Path | None = None  # transformers on this GGUF's dequantized checkpoint (lm/dequantize.py)


def check_backend(backend: str | None) -> str:
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    return backend


def target(name: str, backend: str | None = None) -> Target:
    """The Target of model `name` on `backend`; InputError for a combination that cannot run,
    ModelLoadError if the bundled model is asked for and not installed."""
    backend = check_backend(backend)
    if bundled.is_bundled(name):
        path = bundled.require_gguf()
        if backend == "llama":
            return Target(str(path), llama=True, label=bundled.NAME)
        return Target(str(path), llama=False, label=bundled.NAME, gguf=path)
    source = gguf_source(name)
    if source is not None:
        if backend != "transformers":
            return Target(name, llama=True)
        if source.path is None:
            raise InputError(f"--backend transformers dequantizes a local .gguf file; download {name} first")
        return Target(name, llama=False, label=source.name, gguf=source.path)
    if backend == "llama":
        raise InputError(f"--backend llama runs GGUF files, and {name!r} is not one; "
                         f"name a .gguf file or the bundled model (--model smollm2)")
    return Target(name, llama=False)


def choose_default(requested: str, *, explicit: bool, code: bool = False) -> tuple[str, str | None]:
    """(the model a new session explores, a one-line note if it is not `requested`).

    `requested` is --model (`explicit`) or [model] name. A configured hub model not in the
    local cache is downloaded now, with its progress on stderr; if that cannot be done, the
    bundled model stands in, where it is installed (else the download's error is raised)."""
    from tokentree.lm.download import cached_snapshot, download_model, looks_like_path

    if explicit or bundled.is_bundled(requested) or gguf_source(requested) is not None:
        return requested, None
    if Path(requested).expanduser().exists() or looks_like_path(requested) or cached_snapshot(requested):
        return requested, None
    try:
        download_model(requested, code=code)  # offline (HF_HUB_OFFLINE), it downloads nothing
        if cached_snapshot(requested) is not None:
            return requested, None
        problem = ModelLoadError(f"model {requested!r} is not in the local Hugging Face cache")
    except ModelLoadError as exc:
        problem = exc
    if bundled.gguf_path() is None:
        raise problem
    reason = _why_not(requested, problem)
    return bundled.NAME, f"{reason}: exploring the bundled {bundled.NAME} instead (--model NAME picks another)"


def _why_not(name: str, exc: ModelLoadError) -> str:
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        return f"{name} is not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE)"
    text = str(exc)
    detail = text[text.find("(") + 1:text.find(")")] if "(" in text and ")" in text else text.split(";")[0]
    return f"{name} cannot be downloaded ({detail})"
