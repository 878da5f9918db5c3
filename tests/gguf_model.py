"""Convert a tiny Hugging Face model to GGUF with llama.cpp's own converter.

`convert_hf_to_gguf.py` ships in llama-cpp-python's source distribution (vendor/llama.cpp),
which uv unpacked into its cache when it built the package; `TOKENTREE_LLAMA_CPP_SRC` may
point at another llama.cpp checkout. Our tokenizers are trained in the tests, so the
converter does not recognise their pre-tokenizer by hash: they are byte-level BPE with
Qwen2's split pattern, which the "qwen2" pre-tokenizer names. The converter runs in a child
process (it puts its own `gguf` package first on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

_RUN = """
import runpy, sys
src, model, out, outtype = sys.argv[1:5]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", outtype]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def converter_source() -> Path | None:
    """llama.cpp's source tree holding convert_hf_to_gguf.py, or None if none is here."""
    given = os.environ.get("TOKENTREE_LLAMA_CPP_SRC")
    if given:
        return Path(given)
    try:
        cache = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    wanted = version("llama-cpp-python")
    found = sorted(Path(cache).glob(f"sdists-*/pypi/llama-cpp-python/{wanted}/*/src/vendor/llama.cpp"))
    found = [p for p in found if (p / "convert_hf_to_gguf.py").is_file()]
    return found[-1] if found else None


def convert(model_dir: Path, out: Path, outtype: str = "f32") -> Path:
    src = converter_source()
    if src is None:
        raise RuntimeError("llama.cpp's convert_hf_to_gguf.py was not found (uv's cache has no "
                           "llama-cpp-python source); set TOKENTREE_LLAMA_CPP_SRC to a llama.cpp checkout")
    result = subprocess.run([sys.executable, "-c", _RUN, str(src), str(model_dir), str(out), outtype],
                            capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"GGUF conversion failed:\n{result.stderr[-2000:]}")
    return out
