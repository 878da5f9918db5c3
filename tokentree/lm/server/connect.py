"""Connect to a server: find what it accepts, check the model and the tokenizer, or say
in one line why it cannot be explored (the CLI then exits 2 before anything is written)."""

from __future__ import annotations

import hashlib
import json
import os

from . import protocol
from .backend import _PROBE, Dialect, ServerBackend
from .client import Client, ServerError


def connect(url: str, *, model: str = "", top_logprobs: int = 20, timeout: float = 30.0,
            api_key_env: str = "", tokenizer: str | None = None, top_k: int = 64,
            parallel: int = 4) -> ServerBackend:
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ServerError(f"the environment variable {api_key_env} (server.api_key_env) is not set")
    client = Client(url, timeout=timeout, api_key=api_key)
    try:
        return _connect(client, model, top_logprobs, tokenizer, top_k, parallel)
    except BaseException:
        client.close()
        raise


def _connect(client: Client, model: str, k: int, tokenizer_name: str | None, top_k: int,
             parallel: int) -> ServerBackend:
    served = protocol.models(client.get("/v1/models"))
    entry = _pick_model(served, model, client.netloc)
    model = entry["id"]
    hf = _hf_tokenizer(tokenizer_name) if tokenizer_name else None
    kind = _tokenize_kind(client, model)
    if hf is None and kind is None:
        raise ServerError(f"server {client.netloc} has no tokenize endpoint; pass --tokenizer NAME_OR_PATH "
                          "(the served model's Hugging Face tokenizer)")
    vocab = len(hf) if hf is not None else _served_vocab(entry)
    if vocab is None:
        raise ServerError(f"server {client.netloc} does not say its vocabulary size; pass --tokenizer "
                          "NAME_OR_PATH (the served model's Hugging Face tokenizer)")
    probe = ServerBackend(client, model=model, dialect=Dialect(True, kind, False, k), vocab_size=vocab,
                          top_k=top_k, tokenizer=hf, parallel=1)
    server_bos: list[int] = []
    if kind is not None:
        server_bos = probe._server_tokenize("", special=True)
        theirs = probe._server_tokenize(_PROBE, special=True)
        if hf is not None and list(hf.encode(_PROBE)) != theirs:
            raise ServerError(f"tokenizer {tokenizer_name!r} does not match the server's: it reads a test "
                              "sentence as other token ids; pass the served model's own tokenizer")
    ids = probe.encode(_PROBE)
    ids_prompt, answer = _try_ids_prompt(client, model, ids, k)
    if not ids_prompt:
        if kind is None:
            raise ServerError(f"server {client.netloc} takes text prompts only and cannot tokenize: "
                              "its numbers could not be tied to token ids")
        dialect = Dialect(False, kind, False, k)
        probe = ServerBackend(client, model=model, dialect=dialect, vocab_size=vocab, top_k=top_k,
                              tokenizer=hf, server_bos=server_bos, parallel=1)
        answer = probe._complete(tuple(ids))
    top = protocol.next_logprobs(answer, lambda text: None)
    if not top.all_logprobs:
        raise ServerError(f"server {client.netloc} returned no log-probabilities")
    sent = len(top.all_logprobs)
    prompt_lp = ids_prompt and _has_prompt_logprobs(client, model, ids, k)
    dialect = Dialect(ids_prompt, kind, prompt_lp, min(k, sent))
    eos = _eos_ids(hf, entry)
    probe.close() if probe.client is not client else None
    return ServerBackend(client, model=model, dialect=dialect, vocab_size=vocab, top_k=top_k, tokenizer=hf,
                         server_bos=server_bos, eos_ids=eos, revision=_revision(entry), parallel=parallel,
                         context_length=_context(entry))


def _pick_model(served: list[dict], model: str, where: str) -> dict:
    names = [m["id"] for m in served]
    if not names:
        raise ServerError(f"server {where} serves no model")
    if model:
        for m in served:
            if m["id"] == model:
                return m
        raise ServerError(f"server {where} does not serve model {model!r}; it serves: {', '.join(names)}")
    if len(served) > 1:
        raise ServerError(f"server {where} serves several models; choose one with --model: {', '.join(names)}")
    return served[0]


def _tokenize_kind(client: Client, model: str) -> str | None:
    """Which tokenize endpoint the server has (a 4xx or 404 means: not this one)."""
    tries = (("vllm", "/tokenize", {"model": model, "prompt": "a"}),
             ("llamacpp", "/tokenize", {"content": "a"}),
             ("extras", "/extras/tokenize", {"input": "a", "model": model}))
    for kind, path, body in tries:
        try:
            protocol.tokens(client.post(path, body), path)
        except ServerError as exc:
            if exc.transient and exc.status is None:
                raise  # the server itself is unreachable: say so, not "no tokenizer"
            continue
        return kind
    return None


def _try_ids_prompt(client: Client, model: str, ids: list[int], k: int) -> tuple[bool, dict | None]:
    body = {"model": model, "prompt": ids, "max_tokens": 1, "logprobs": k, "temperature": 0.0,
            "return_tokens_as_token_ids": True}
    try:
        return True, client.post("/v1/completions", body)
    except ServerError as exc:
        # A refusal of the prompt (llama-cpp-python answers 500 to its validation error): try
        # text. Not for auth or a missing endpoint, and not when nothing answered at all.
        if exc.status is not None and exc.status not in (401, 403, 404):
            return False, None
        raise


def _has_prompt_logprobs(client: Client, model: str, ids: list[int], k: int) -> bool:
    body = {"model": model, "prompt": ids, "max_tokens": 1, "logprobs": k, "temperature": 0.0,
            "prompt_logprobs": k, "return_tokens_as_token_ids": True}
    try:
        protocol.prompt_logprobs(client.post("/v1/completions", body), len(ids))
    except ServerError:
        return False
    return True


def _context(entry: dict) -> int | None:
    """The served context: vLLM's max_model_len, llama-server's n_ctx_train."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for n in (entry.get("max_model_len"), meta.get("n_ctx_train")):
        if isinstance(n, int) and n > 0:
            return n
    return None


def _served_vocab(entry: dict) -> int | None:
    meta = entry.get("meta")  # llama-server: {"n_vocab": ..., "n_params": ..., ...}
    n = meta.get("n_vocab") if isinstance(meta, dict) else None
    return n if isinstance(n, int) and n > 0 else None


def _revision(entry: dict) -> str:
    """What the server says of the model's files and quantization, as a short hash."""
    facts = {k: entry.get(k) for k in ("id", "root", "owned_by", "created", "max_model_len", "meta")
             if k != "created" and entry.get(k) is not None}
    return hashlib.blake2b(json.dumps(facts, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _eos_ids(hf, entry: dict) -> set[int]:
    if hf is not None and isinstance(hf.eos_token_id, int):
        return {hf.eos_token_id}
    return set()


def _hf_tokenizer(name: str):
    from tokentree.errors import ModelLoadError
    from tokentree.lm.loader import quiet_transformers

    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"could not load tokenizer {name!r} ({first})") from None
