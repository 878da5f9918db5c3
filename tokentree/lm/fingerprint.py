"""A model's identity for the output cache: which numbers may be reused for it.

A hub model is named by its commit (the snapshot's revision). A local directory has no
revision, and a model retrained or replaced in place keeps its path, so its identity is a
hash of what changes when the weights do: config.json, and for every weight file its name,
size and modification time, plus a safetensors file's header (the tensor names, dtypes,
shapes and offsets). Only headers are read, never the weights: this costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB


def content_hash(directory: Path) -> str:
    """16 hex digits that change whenever the config or any weight file changes."""
    digest = hashlib.blake2b(digest_size=8)
    config = directory / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for path in sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        st = path.stat()
        digest.update(json.dumps([path.name, st.st_size, st.st_mtime_ns]).encode())
        if path.suffix == ".safetensors":
            digest.update(_safetensors_header(path))
    return digest.hexdigest()


def _safetensors_header(path: Path) -> bytes:
    """The file's JSON header (8-byte little-endian length, then the JSON), or b'' if unreadable."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            return f.read(size) if 0 < size <= min(_MAX_HEADER, os.fstat(f.fileno()).st_size) else b""
    except OSError:
        return b""


def fingerprint(source: str, dtype: str, *, revision: str | None = None, directory: Path | None = None) -> str:
    """`source@revision:dtype` for a hub snapshot, `source@content-HASH:dtype` for a directory."""
    if revision:
        return f"{source}@{revision}:{dtype}"
    if directory is not None:
        return f"{source}@content-{content_hash(directory)}:{dtype}"
    return f"{source}:{dtype}"
