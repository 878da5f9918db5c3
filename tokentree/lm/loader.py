"""Load a Hugging Face causal LM and its tokenizer, quietly, with clear one-line errors."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokentree.errors import InputError, ModelLoadError
from tokentree.lm.download import cached_snapshot, download_model, first_line, hub_error, looks_like_path
from tokentree.lm.fingerprint import fingerprint
from tokentree.lm.options import check_device_map, resolve_dtype


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str  # as given (hub name or path)
    device: str  # "cpu", "cuda", ...; with a device map e.g. "auto (cuda:0, cuda:1, cpu)"
    dtype: str  # "float32" | "bfloat16" | "float16"
    fingerprint: str  # name-or-resolved-path, revision (hub) or content hash (directory), dtype
    vocab_key: str  # short stable hash of the vocabulary and special tokens
    num_layers: int
    vocab_size: int  # size of the logits dimension
    context_length: int | None
    # Where input ids go: the input embeddings' device (with a device map); None: `device`.
    input_device: str | None = None


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
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Some parameters are on the meta device ..."


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
    name_or_path: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    bf16: bool = False,
    device_map: str | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM by hub name or local directory; ModelLoadError (one sentence) if impossible.

    `dtype` float32 (default), bfloat16 or float16; `bf16` is an alias of dtype="bfloat16".
    `device_map` ("auto", ...; accelerate) shards the model over every GPU, then CPU memory,
    then disk, instead of putting it on `device`; `max_memory` ({0: "20GiB", "cpu": ...})
    caps each device, `offload_folder` holds what goes to disk (default: a temporary folder in
    the data dir, removed with the model). A hub model not in the cache is downloaded first,
    with progress on stderr unless `progress` is False."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype_name = resolve_dtype(dtype, bf16)
    device_map = check_device_map(device_map)
    if device_map and device:
        raise InputError(f"--device {device} and --device-map {device_map} cannot be combined: "
                         "a device map places the model itself; drop one of them")
    if max_memory is not None and not device_map:
        raise ValueError("max_memory needs a device_map")
    quiet_transformers()
    name = name_or_path
    device = None if device_map else pick_device(device)
    path = Path(name).expanduser()
    local = path.exists()
    opts = dict(trust_remote_code=trust_remote_code)
    if local:
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name!r} is not a model directory (it has no config.json); "
                "pass --model PATH to a directory written by save_pretrained()"
            )
        source = str(path.resolve())
    elif looks_like_path(name):
        raise ModelLoadError(f"model path {name!r} does not exist; pass --model PATH to a local model directory")
    else:
        source = name
        download_model(name, code=trust_remote_code, progress=progress)
        # Complete in the cache: load it as it is, no update checks (and no silent downloads).
        opts["local_files_only"] = cached_snapshot(name) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = AutoConfig.from_pretrained(source, **opts)
        except OSError as exc:
            if not local:
                raise hub_error(name, exc) from exc
            raise ModelLoadError(
                f"could not read the config of model {name!r} ({first_line(exc)}); check the directory"
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
                f"could not load the tokenizer of model {name!r} ({first_line(exc)}); "
                "check that the model directory has its tokenizer files"
            ) from exc
        placement = {}
        folder = None
        if device_map:
            folder = Path(offload_folder) if offload_folder else _temporary_offload_folder()
            placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=str(folder))
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, config=config, dtype=getattr(torch, dtype_name), **placement, **opts
            )
        except (OSError, ValueError, RuntimeError) as exc:
            if folder is not None and not offload_folder:
                shutil.rmtree(folder, ignore_errors=True)
            raise ModelLoadError(
                f"could not load the weights of model {name!r} ({first_line(exc)}); "
                "check the model files, or pass --model PATH to another model"
            ) from exc
    if folder is not None and not offload_folder:
        weakref.finalize(model, shutil.rmtree, folder, True)  # the offloaded weights go with the model
    if device_map:
        device, input_device = _placement(model, device_map)
    else:
        model.to(device)
        input_device = None
    model.eval()
    revision = None if local else _revision(name)
    # No device map in the fingerprint: where the layers sit does not change the numbers.
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
        input_device=input_device,
    )


def _temporary_offload_folder() -> Path:
    from tokentree.paths import ensure_data_dir

    parent = ensure_data_dir() / "offload"
    parent.mkdir(exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix="weights-", dir=parent))


def _placement(model, device_map: str) -> tuple[str, str]:
    """(where the model is, for the status bar: "auto (cuda:0, cpu, disk)"; where input ids
    go: the input embeddings' device, or the device that runs them if they are offloaded)."""
    devices: list[str] = []
    for where in getattr(model, "hf_device_map", {}).values():
        label = f"cuda:{where}" if isinstance(where, int) else str(where)
        if label not in devices:
            devices.append(label)
    weight = model.get_input_embeddings().weight
    if weight.device.type != "meta":
        input_device = str(weight.device)
    else:  # offloaded: accelerate's top-level hook says where the model runs
        runs_on = getattr(getattr(model, "_hf_hook", None), "execution_device", None)
        input_device = f"cuda:{runs_on}" if isinstance(runs_on, int) else str(runs_on or "cpu")
    return f"{device_map} ({', '.join(devices)})" if devices else device_map, input_device


def _value_error(name: str, exc: ValueError) -> ModelLoadError:
    if "trust_remote_code" in str(exc):
        return ModelLoadError(f"model {name!r} needs its own code to load; pass --trust-remote-code if you trust it")
    return ModelLoadError(
        f"model {name!r} could not be recognised ({first_line(exc)}); "
        "pass --model PATH to a Hugging Face causal language model"
    )
