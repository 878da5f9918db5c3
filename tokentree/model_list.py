"""`tokentree models`: the models this machine can explore without a download.

- the bundled SmolLM2-135M-Instruct: its GGUF, and whether its transformers checkpoint has
  been made (lm/dequantize.py);
- the Hugging Face cache's models (complete or not: a partial one downloads the rest);
- GGUF files and model directories earlier sessions were started with, that still exist.

Reads files only: no torch, no network, and the database only if it exists.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalModel:
    kind: str  # "bundled" | "hf-cache" | "gguf" | "directory"
    name: str  # what --model takes
    size_bytes: int | None
    note: str  # how it runs, what is ready
    path: str | None = None


def local_models(db: Path | None) -> list[LocalModel]:
    return [*_bundled(), *_hub_cache(), *_named_before(db)]


def _bundled() -> list[LocalModel]:
    from tokentree.lm import bundled
    from tokentree.lm.dequantize import checkpoint_dir, ready

    gguf = bundled.gguf_path()
    if gguf is None:
        return [LocalModel("bundled", "smollm2", None, bundled.MISSING)]
    folder = checkpoint_dir(gguf)
    if ready(folder):
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        made = f"transformers checkpoint ready ({_mb(size)}, {folder})"
    else:
        made = "transformers checkpoint made on first use (about 30 s, 540 MB)"
    note = f"{bundled.NAME}, Q4_1 GGUF; {made}; --backend llama runs the GGUF"
    return [LocalModel("bundled", "smollm2", gguf.stat().st_size, note, str(gguf))]


def _hub_cache() -> list[LocalModel]:
    try:
        from huggingface_hub import scan_cache_dir

        from tokentree.lm.download import cached_snapshot

        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 -- no cache yet, or one it cannot read: nothing to list
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        complete = cached_snapshot(repo.repo_id) is not None
        gguf = sorted({f.file_name for rev in repo.revisions for f in rev.files if f.file_name.endswith(".gguf")})
        if gguf:
            note = "GGUF files: " + ", ".join(f"{repo.repo_id}:{name}" for name in gguf[:4])
        else:
            note = "complete" if complete else "incomplete: the rest downloads on first use"
        found.append(LocalModel("hf-cache", repo.repo_id, repo.size_on_disk, note, str(repo.repo_path)))
    return found


def _named_before(db: Path | None) -> list[LocalModel]:
    """GGUF files and model directories sessions were started with (newest first), if they exist."""
    if db is None or not db.is_file():
        return []
    from tokentree.store import Store

    store = Store.open(db)
    try:
        sessions = store.list_sessions()
    finally:
        store.close()
    found, seen = [], set()
    for s in sessions:
        name = s.model_name or ""
        path = Path(name).expanduser()
        if name in seen or not path.is_absolute() or not path.exists():
            continue
        seen.add(name)
        if path.is_file() and path.suffix.lower() == ".gguf":
            found.append(LocalModel("gguf", name, path.stat().st_size, f"llama.cpp; last used by session {s.id}", name))
        elif path.is_dir() and (path / "config.json").is_file():
            found.append(LocalModel("directory", name, None, f"transformers; last used by session {s.id}", name))
    return found


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def format_models(models: list[LocalModel], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps([asdict(m) for m in models], indent=2, ensure_ascii=False)
    width = max(len(m.name) for m in models)
    lines = [f"{'kind':<9} {'--model':<{width}} {'size':>9}  note"]
    lines += [f"{m.kind:<9} {m.name:<{width}} {_mb(m.size_bytes):>9}  {m.note}" for m in models]
    return "\n".join(lines)
