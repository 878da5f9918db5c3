"""Download a hub model into the Hugging Face cache before it loads, with progress on stderr.

transformers would fetch the files itself, but silently: its progress bars are off because
the terminal belongs to the UI, so the first run of a 1 GB model would sit for minutes with
no sign of life. So a hub model that is not complete in the cache is downloaded here first,
before the screen opens, with one progress bar (huggingface_hub's tqdm): the file, how many
files, bytes done and total, the rate and the time left.

- Only what `from_pretrained` reads: config, tokenizer and generation files and the weights
  transformers picks (model.safetensors or its shards, else pytorch_model.bin or its shards),
  smallest first, so an interrupted download keeps the small files.
- One file at a time in the calling (main) thread: ctrl+c stops it at once. A download thread
  pool (snapshot_download) would finish every file before the process could exit.
- A model already complete in the cache is used as it is: no network call, nothing printed.
- huggingface_hub resumes nothing across processes (it deletes its own partial file when a
  download stops); the files completed before a ctrl+c stay in the cache.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from tokentree.errors import ModelLoadError

HUB_TIMEOUT = 15.0  # seconds for the hub's first answer (the model's file listing)
PROGRESS_GROUP = "tokentree.download"  # huggingface_hub progress-bar group: on for our bar only
_TEXT_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")  # config, tokenizer, templates
_SAFETENSORS, _SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
_BIN, _BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def looks_like_path(name: str) -> bool:
    """True unless `name` can be a hub repository id (owner/name)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", ".", "~")) or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def download_model(name: str, *, code: bool = False, progress: bool = True) -> bool:
    """`ensure_downloaded` for a name that may be a local path (nothing to do then), with
    every hub or network failure as one ModelLoadError sentence."""
    import httpx2  # huggingface_hub's HTTP client: a failed connection is not an OSError

    if Path(name).expanduser().exists() or looks_like_path(name):
        return False
    try:
        return ensure_downloaded(name, code=code, progress=progress)
    except (OSError, httpx2.HTTPError) as exc:
        raise hub_error(name, exc) from exc


def hub_error(name: str, exc: Exception) -> ModelLoadError:
    """What went wrong fetching hub model `name`, as one sentence that says what to do."""
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if is_offline_mode():
        return ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "pass --model PATH to a local model directory, or unset HF_HUB_OFFLINE to download it"
        )
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(f"model {name!r} is gated on the Hugging Face Hub; log in with `hf auth login` "
                              "after accepting its terms, or pass --model PATH to a local model directory")
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        return ModelLoadError(f"model {name!r} was not found on the Hugging Face Hub; "
                              "check the name, or pass --model PATH to a local model directory")
    return ModelLoadError(f"could not download model {name!r} ({first_line(exc)}); "
                          "check your network, or pass --model PATH to a local model directory")


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cached_snapshot(name: str) -> Path | None:
    """The cached snapshot folder of hub model `name` if it holds its config and all its
    weights (every shard its index names), else None. Reads only the local cache."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    for single, index in ((_SAFETENSORS, _SAFETENSORS_INDEX), (_BIN, _BIN_INDEX)):
        if (folder / single).is_file():
            return folder
        if (folder / index).is_file():
            shards = _shards(folder / index)
            return folder if shards and all((folder / s).is_file() for s in shards) else None
    return None


def _shards(index: Path) -> set[str]:
    try:
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def needed_files(names: Iterable[str], *, code: bool = False) -> list[str]:
    """The repository files `from_pretrained` reads, of `names` (a repository's listing):
    top-level config/tokenizer files and the weights transformers picks; `*.py` with `code`
    (a model whose own code is trusted)."""
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n.endswith(_TEXT_SUFFIXES) or (code and n.endswith(".py"))]
    if _SAFETENSORS in top or _SAFETENSORS_INDEX in top:
        # Only these: a repository may also hold a consolidated copy (Mistral) or other formats.
        weights = [n for n in top if n == _SAFETENSORS or (n.startswith("model-") and n.endswith(".safetensors"))]
    else:
        weights = [n for n in top if n == _BIN or (n.startswith("pytorch_model-") and n.endswith(".bin"))]
    return sorted(set(wanted) | set(weights))


def ensure_downloaded(name: str, *, code: bool = False, progress: bool = True, stream: IO[str] | None = None) -> bool:
    """Make hub model `name` complete in the Hugging Face cache. True if it downloaded files;
    False if it was already there, or the hub is offline (HF_HUB_OFFLINE: loading says what
    is missing). Hub errors (not found, gated, no network) are raised as huggingface_hub and
    httpx raise them; KeyboardInterrupt stops it between two network reads."""
    from huggingface_hub import HfApi, constants, hf_hub_download, is_offline_mode

    if cached_snapshot(name) is not None or is_offline_mode():
        return False
    # A timeout: a firewalled network that drops packets must not hold the launch for minutes.
    info = HfApi().model_info(name, files_metadata=True, timeout=HUB_TIMEOUT)
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    files = sorted(needed_files(sizes, code=code), key=lambda f: (sizes[f], f))  # small first
    total = sum(sizes[f] for f in files)
    stream = stream or sys.stderr
    if progress:
        print(f"tokentree: downloading {name} from {constants.ENDPOINT}: {len(files)} files, "
              f"{_size(total)} (ctrl+c stops; files done stay in the cache)", file=stream, flush=True)
    labels = [f"{filename} ({i}/{len(files)})" for i, filename in enumerate(files, 1)]
    with _progress_bar(total, stream, enabled=progress, desc=labels[0] if labels else "") as bar:
        done = 0
        for filename, label in zip(files, labels):
            bar.set_description_str(label)
            hf_hub_download(name, filename, tqdm_class=_counting_into(bar))
            done += sizes[filename]
            bar.n = done  # exact, whatever the file's own count said (cached, resumed, retried)
        bar.set_description_str(f"downloaded {len(files)} files", refresh=False)  # closing draws it
    return True


def _size(n: int) -> str:
    from tqdm import tqdm

    return tqdm.format_sizeof(n, "B")


def _progress_bar(total: int, stream: IO[str], *, enabled: bool, desc: str):
    """huggingface_hub's tqdm, shown even when the library's other bars are off (they are, so
    that nothing else prints); HF_HUB_DISABLE_PROGRESS_BARS=1 still hides it."""
    from huggingface_hub.utils import enable_progress_bars
    from huggingface_hub.utils import tqdm as hub_tqdm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cannot enable: HF_HUB_DISABLE_PROGRESS_BARS is set"
        enable_progress_bars(PROGRESS_GROUP)
    return hub_tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, file=stream, disable=not enabled, name=PROGRESS_GROUP,
        dynamic_ncols=True, mininterval=0.25, leave=True,
    )


def _counting_into(bar):
    """A stand-in for the per-file progress bar hf_hub_download makes (plain HTTP or Xet):
    the bytes written go to `bar`, nothing is drawn. Mirrors snapshot_download's own."""

    class FileProgress:
        total = None
        n = 0

        def __init__(self, *args, initial: int = 0, **kwargs):
            if initial:
                bar.update(initial)  # bytes a resumed request skips

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n: int | float | None = 1) -> None:
            bar.update(n or 0)

        def update_transfer(self, n: int | float | None = 1) -> None:
            """Xet's network bytes: `update` already counts what was written."""

        def set_postfix_str(self, *args, **kwargs) -> None:
            """The overall bar shows its own rate."""

        set_transfer_postfix_str = set_postfix_str

        def refresh(self, *args, **kwargs) -> None:
            bar.refresh()

        def close(self) -> None:
            pass

    return FileProgress
