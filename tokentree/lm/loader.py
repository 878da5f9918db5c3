"""Load a Hugging Face causal LM and its tokenizer, quietly, with clear one-line errors."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokentree.errors import ModelLoadError
from tokentree.lm.fingerprint import fingerprint


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str  # as given (hub name or path)
    device: str
    dtype: str  # "float32" | "bfloat16"
    fingerprint: str  # name-or-resolved-path, revision (hub) or content hash (directory), dtype
    vocab_key: str  # short stable hash of the vocabulary and special tokens
    num_layers: int
    vocab_size: int  # size of the logits dimension
    context_length: int | None


def pick_device(requested: str | None = None) -> str:
    """CUDA > MPS > CPU, unless `requested` names a device (checked to be usable)."""
    if requested:
        try:
            kind = torch.device(requested).type
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"unknown device {requested!r}; use cuda, mps or cpu") from exc
        if kind == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} was asked for but CUDA is not available; use --device cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {requested!r} was asked for but MPS is not available; use --device cpu")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def quiet_transformers() -> None:
    """No progress bars or library warnings: the terminal belongs to the UI."""
    import huggingface_hub.utils
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    hub_logging.set_verbosity_error()  # its download retries would print on stderr


def _looks_like_path(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", ".", "~")) or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _hub_error(name: str, exc: Exception) -> ModelLoadError:
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
    return ModelLoadError(f"could not download model {name!r} ({_first_line(exc)}); "
                          "check your network, or pass --model PATH to a local model directory")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_causal_lm(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING or "AutoModelForCausalLM" in (
        getattr(config, "auto_map", None) or {}
    )


def _revision(name: str) -> str | None:
    """The commit hash of a hub model's cached snapshot, if any."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    if isinstance(found, str) and Path(found).parent.parent.name == "snapshots":
        return Path(found).parent.name
    return None


def vocab_key(tokenizer) -> str:
    """Short stable hash of id -> token and the special tokens: ids mean the same under it."""
    vocab = sorted((i, t) for t, i in tokenizer.get_vocab().items())
    added = sorted((i, t.content, bool(t.special)) for i, t in tokenizer.added_tokens_decoder.items())
    blob = json.dumps([vocab, added], ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _context_length(config, tokenizer) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


def load_model(
    name_or_path: str, *, device: str | None = None, bf16: bool = False, trust_remote_code: bool = False
) -> LoadedModel:
    """Load a causal LM by hub name or local directory; ModelLoadError (one sentence) if impossible."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    name = name_or_path
    device = pick_device(device)
    path = Path(name).expanduser()
    local = path.exists()
    if local:
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name!r} is not a model directory (it has no config.json); "
                "pass --model PATH to a directory written by save_pretrained()"
            )
        source = str(path.resolve())
    elif _looks_like_path(name):
        raise ModelLoadError(f"model path {name!r} does not exist; pass --model PATH to a local model directory")
    else:
        source = name
    opts = dict(trust_remote_code=trust_remote_code)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = AutoConfig.from_pretrained(source, **opts)
        except OSError as exc:
            if not local:
                raise _hub_error(name, exc) from exc
            raise ModelLoadError(
                f"could not read the config of model {name!r} ({_first_line(exc)}); check the directory"
            ) from exc
        except ValueError as exc:
            raise _value_error(name, exc) from exc
        if not _is_causal_lm(config):
            raise ModelLoadError(
                f"model {name!r} is a {config.model_type!r} model, not a causal language model; "
                "choose one that AutoModelForCausalLM can load"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **opts)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"could not load the tokenizer of model {name!r} ({_first_line(exc)}); "
                "check that the model directory has its tokenizer files"
            ) from exc
        dtype = torch.bfloat16 if bf16 else torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, **opts)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"could not load the weights of model {name!r} ({_first_line(exc)}); "
                "check the model files, or pass --model PATH to another model"
            ) from exc
    model.to(device)
    model.eval()
    dtype_name = "bfloat16" if bf16 else "float32"
    revision = None if local else _revision(name)
    identity = fingerprint(source, dtype_name, revision=revision, directory=path.resolve() if local else None)
    text_config = config.get_text_config()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        device=device,
        dtype=dtype_name,
        fingerprint=identity,
        vocab_key=vocab_key(tokenizer),
        num_layers=int(text_config.num_hidden_layers),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        context_length=_context_length(text_config, tokenizer),
    )


def _value_error(name: str, exc: ValueError) -> ModelLoadError:
    if "trust_remote_code" in str(exc):
        return ModelLoadError(f"model {name!r} needs its own code to load; pass --trust-remote-code if you trust it")
    return ModelLoadError(
        f"model {name!r} could not be recognised ({_first_line(exc)}); "
        "pass --model PATH to a Hugging Face causal language model"
    )
