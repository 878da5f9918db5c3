"""llama_cpp itself: the module imported with llama.cpp's log routed to the log file, and a
GGUF model loaded from a file on the CPU (a failed load says why, in one line)."""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

from tokentree.errors import ModelLoadError
from tokentree.lm import gguf

log = logging.getLogger("tokentree.llama")

_errors: list[str] | None = None  # error lines of the load in progress (None: not collecting)
_callback = None  # the ctypes callback must outlive every call into llama.cpp
_setup = threading.Lock()


def import_llama():
    """The llama_cpp module, its log routed to the log file; ModelLoadError (one line, naming
    the extra) if it is missing."""
    llama_cpp = gguf.require_llama()
    _quiet(llama_cpp)
    return llama_cpp


def _quiet(lib) -> None:
    """Route llama.cpp's log to the log file (the terminal belongs to the UI), keeping the
    error lines of a load so that its failure can say why. Idempotent."""
    global _callback
    with _setup:
        if _callback is not None:
            return

        @lib.llama_log_callback
        def callback(level, text, user_data):
            message = text.decode("utf-8", "replace").strip()
            if level == 4 and message:  # GGML_LOG_LEVEL_ERROR
                if _errors is not None:
                    _errors.append(message)
                log.warning("llama.cpp: %s", message)
            elif level == 3 and message:  # WARN
                log.info("llama.cpp: %s", message)

        _callback = callback
        lib.llama_log_set(callback, ctypes.c_void_p(0))
        lib.llama_backend_init()


def _load_failure(errors: list[str]) -> str:
    """The first informative error line of a failed load, without llama.cpp's function names."""
    for line in errors:
        text = line.split(": ", 1)[1] if ": " in line and " " not in line.split(": ", 1)[0] else line
        if "failed to load model" not in text:
            text = text.removeprefix("error loading model: ")
            return "".join(c if c.isprintable() else "?" for c in text)  # one safe line
    return "llama.cpp could not read it"


def load_model(lib, path: Path, name: str):
    """llama.cpp's model for the GGUF file at `path` (named `name` in errors), on the CPU;
    ModelLoadError with llama.cpp's reason if it cannot be read."""
    global _errors
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0  # CPU: the memory floor, and numbers that do not depend on a GPU
    with _setup:
        _errors = []
    try:
        model = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
    finally:
        with _setup:
            errors, _errors = _errors or [], None
    if not model:
        raise ModelLoadError(f"cannot load {name} as a GGUF model: {_load_failure(errors)}")
    return model
