"""A GGUF model as an ordinary transformers checkpoint, made once and kept in the models dir.

The transformers backend is the one with every view (attention influence, the logit lens):
llama.cpp gives neither attention weights nor hidden states. transformers' own GGUF loader
(`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) dequantizes the weights into
float32, which represents every Q4_1 weight exactly, so the checkpoint computes with the
very weights the GGUF holds. Reading a GGUF that way takes about 30 s on 2 cores; the saved
safetensors checkpoint then loads in about a second, so it is made once:

- into `<models dir>/<file stem>-<hash of the GGUF's header and size>/`, built in a hidden
  temporary folder and renamed into place only when complete, under a file lock (two
  launches at once build it once);
- checked before it is renamed (every tensor finite) and each time it is used (a manifest, written last, lists every
  file and its size): a partial or damaged checkpoint is never loaded, it is made again.

transformers' GGUF tokenizer conversion keeps only GPT-2's split regex. llama.cpp splits
some vocabularies further by their `tokenizer.ggml.pre` name; SmolLM2's ("smollm") first
splits every digit apart, as the model's own Hugging Face tokenizer does
(`Digits(individual_digits=True)` before `ByteLevel`). Without that, "72" would be one
token where the model was trained on "7", "2". PRE_TOKENIZERS restores it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from tokentree.errors import ModelLoadError
from tokentree.lm import gguf as gguf_header
from tokentree.paths import models_dir

MANIFEST = "tokentree-checkpoint.json"
FORMAT = 1  # bump when what is written changes: older checkpoints are made again


def checkpoint_dir(gguf: Path) -> Path:
    """Where the checkpoint of `gguf` lives (whether or not it has been made)."""
    return models_dir() / f"{gguf.stem}-{gguf_header.content_hash(gguf, mtime=False)}"


def ready(folder: Path) -> bool:
    """True if `folder` holds a complete checkpoint: its manifest, written last, names every
    file with its size, and each is there at that size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        return manifest.get("format") == FORMAT and bool(files) and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_checkpoint(gguf: Path, *, label: str, progress: bool = True, stream: IO[str] | None = None) -> Path:
    """The checkpoint folder of `gguf`, made first if it is not there or not complete (with
    progress lines on `stream`, stderr by default, unless `progress` is False).
    ModelLoadError, one line, if it cannot be made."""
    folder = checkpoint_dir(gguf)
    if ready(folder):
        return folder
    from filelock import FileLock, Timeout

    stream = stream or sys.stderr
    try:
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
        with lock.acquire(timeout=600):
            if ready(folder):  # another process made it while this one waited
                return folder
            _build(gguf, folder, label=label, progress=progress, stream=stream)
    except Timeout:
        raise ModelLoadError(f"another tokentree has been preparing {label} for 10 minutes "
                             f"({folder.parent}); try again later") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot prepare {label} in {folder.parent}: {exc.strerror or exc}") from None
    return folder


def _build(gguf: Path, folder: Path, *, label: str, progress: bool, stream: IO[str]) -> None:
    start = time.monotonic()
    say = (lambda text: print(f"tokentree: {text}", file=stream, flush=True)) if progress else (lambda text: None)
    if folder.exists():
        say(f"the checkpoint in {folder} is incomplete or damaged; making it again")
        shutil.rmtree(folder)
    say(f"preparing {label} for the transformers backend, once: dequantizing {gguf.name} "
        f"({gguf.stat().st_size / 1e6:.0f} MB) to a float32 checkpoint in {folder} (about 30 s, 540 MB)")
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        _write_checkpoint(gguf, work, say=say, progress=progress)
        os.replace(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"{label} is ready ({time.monotonic() - start:.0f} s); later launches load it in about a second")


def _write_checkpoint(gguf: Path, out: Path, *, say, progress: bool) -> None:
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tokentree.lm.loader import quiet_transformers

    quiet_transformers()
    meta = gguf_header.metadata_strings(gguf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            say("reading the tokenizer ...")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            fix_pre_tokenizer(tokenizer, meta.get("tokenizer.ggml.pre", ""))
            if progress:
                hf_logging.enable_progress_bar()  # transformers' bar over the tensors, on stderr
            try:
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.float32)
            finally:
                hf_logging.disable_progress_bar()
        except ImportError as exc:  # the `gguf` package
            raise ModelLoadError(f"dequantizing a GGUF needs the gguf package ({exc}); `uv sync` installs it") from None
        except Exception as exc:  # noqa: BLE001 -- a damaged file fails anywhere in the GGUF parser
            raise ModelLoadError(f"cannot dequantize {gguf.name} with transformers: {str(exc).splitlines()[0]}") from None
        _check_weights(model, gguf)
        # Saved as a plain float32 model: the loader's record of the GGUF origin would make
        # save_pretrained refuse ("quantized with gguf and not serializable") and is not true of the copy.
        model.config.quantization_config = None
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        say("writing the checkpoint ...")
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    manifest = {"format": FORMAT, "gguf": gguf.name, "gguf_hash": gguf_header.content_hash(gguf, mtime=False),
                "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _check_weights(model, gguf: Path) -> None:
    """Refuse a result with a non-finite weight (a damaged GGUF or a dequantization bug)."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"dequantizing {gguf.name} gave non-finite values in {name}; the file may be damaged")


# tokenizer.ggml.pre -> the pre-tokenizer steps llama.cpp applies before GPT-2's split regex.
PRE_TOKENIZERS = {
    "smollm": "digits",  # llama.cpp: "\\p{N}" first, each digit a piece of its own
}


def fix_pre_tokenizer(tokenizer, pre: str) -> None:
    """Make transformers' converted tokenizer split text as llama.cpp does for `pre`."""
    if PRE_TOKENIZERS.get(pre) != "digits":
        return
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
