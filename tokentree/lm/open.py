"""Which backend a model name selects, and where a GGUF file named on the hub lives.

A GGUF model runs in process through llama.cpp (lm/llama/). It is named either as
- a local file: any name ending in `.gguf` (`--model ~/models/qwen2.5-0.5b-q4_k_m.gguf`), or
- a file in a hub repository: `OWNER/REPO:FILE.gguf` (the file's path inside the repository), or
  `OWNER/REPO:QUANT` (llama.cpp's own `-hf` convention, e.g. `Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M`:
  the repository's one GGUF file whose name contains the tag; listing the repository needs
  the network, so offline name the file).
Every other name is a Hugging Face model (a hub id or a directory). No heavy imports here:
the choice is made, and a bad name or a missing llama extra reported, before torch or
llama.cpp load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tokentree.errors import ModelLoadError
from tokentree.lm.gguf import require_llama

_HUB = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<spec>[^:\s]+)")


@dataclass(frozen=True)
class GgufSource:
    path: Path | None = None  # a local file
    repo: str | None = None  # or a hub repository and, in it,
    spec: str | None = None  # a file path (ends in .gguf) or a quantization tag

    @property
    def name(self) -> str:
        """The name a session records: an absolute path (a resume works from any directory)."""
        return str(self.path) if self.path is not None else f"{self.repo}:{self.spec}"


def gguf_source(name: str) -> GgufSource | None:
    """The GGUF file `name` stands for, or None when it names a Hugging Face model."""
    if not name:
        return None
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf") and (path.exists() or not _HUB.fullmatch(name)):
        return GgufSource(path=path.resolve())
    hub = _HUB.fullmatch(name)
    if hub and not path.exists():
        return GgufSource(repo=hub["repo"], spec=hub["spec"])
    return None


def pick_quant(files: list[str], tag: str) -> str:
    """The one GGUF file of a repository listing whose name holds the quantization `tag`
    (case-insensitive; of a split model its first part); ModelLoadError if none or several."""
    wanted = tag.lower()
    found = [f for f in files if f.lower().endswith(".gguf") and wanted in Path(f).name.lower()]
    split = re.compile(r"-(\d{5})-of-\d{5}\.gguf$", re.IGNORECASE)
    found = [f for f in found if not split.search(f) or split.search(f)[1] == "00001"]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(f"no GGUF file in the repository matches {tag!r}; name the file: REPO:FILE.gguf")
    raise ModelLoadError(f"several GGUF files match {tag!r} ({', '.join(sorted(found)[:4])}); name one: REPO:FILE.gguf")


def resolve_gguf(source: GgufSource, *, progress: bool = True) -> Path:
    """The local file of `source`: the path itself, or the hub file from the Hugging Face cache
    (downloaded if it is not there yet, with a progress bar on stderr unless `progress` is
    False: behind the screen nothing may print). ModelLoadError, one line, if there is none."""
    if source.path is not None:
        if not source.path.is_file():
            raise ModelLoadError(f"GGUF file not found: {source.path}")
        return source.path
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings would print over the terminal
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    repo, spec = source.repo, source.spec
    try:
        filename = spec if spec.lower().endswith(".gguf") else pick_quant(list_repo_files(repo), spec)
        return Path(hf_hub_download(repo, filename))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 -- offline, missing repo or file, network: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot fetch {source.name} from the hub: {first}") from None


def open_gguf(name: str, config, *, quiet: bool = True, label: str | None = None):
    """The LlamaBackend (lm/llama/) for a GGUF model name, with the [llama] and [display]
    settings of `config`; ModelLoadError, one line, if it cannot load. The cheap checks come
    first: the llama extra, the file (or the hub download), then torch and the model.
    `label`: the name the session records and the status bar shows (the bundled model's)."""
    import sys

    source = gguf_source(name)
    if source is None:
        raise ModelLoadError(f"{name!r} does not name a GGUF file")
    require_llama()  # before a download or torch: the missing extra is the first thing to say
    path = resolve_gguf(source, progress=not quiet)
    if not quiet:
        print(f"tokentree: loading {label or source.name} (llama.cpp) ...", file=sys.stderr, flush=True)
    from tokentree.lm.llama import PREFILL_CHUNK, LlamaBackend

    cfg = config.llama
    # [model] prefill_chunk bounds a prompt's memory here too; llama.cpp holds a chunk's logits
    # and its compute buffer at once, so at most PREFILL_CHUNK tokens go per call.
    return LlamaBackend(path, name=label or source.name, threads=cfg.threads, n_ctx=cfg.n_ctx, top_k=config.top_k,
                        cache_size=config.display.cache_size,
                        prefill_chunk=min(config.model.prefill_chunk, PREFILL_CHUNK))
