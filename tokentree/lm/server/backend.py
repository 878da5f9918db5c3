"""The model on an OpenAI-compatible completion server (vLLM, SGLang, llama.cpp).

Every number comes from the server's answer to one `/v1/completions` request for one token
(`max_tokens: 1`, `logprobs: k`) on the node's token ids: the k most likely next tokens and
their log-probabilities. So probabilities and ranks of those k are the server's own; the
entropy is a lower bound (lm/topk.py), stored as inexact and shown as "≥ H".

Prompts go as token ids, so the server scores exactly the branch. A server that takes only
text (llama-cpp-python's) is sent the branch's text only after its own tokenizer gave back
exactly the branch's ids for it; otherwise the node is not scorable there (`NotScorable`),
and no number for another token sequence is ever shown.

Thread-safe: the prefetch pool calls `step` from several threads at once.
"""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from tokentree.lm.chat import ChatTemplate, render_ids
from tokentree.outputs import Analysis, Capabilities, Distribution, ModelInfo, NodeOutput
from tokentree.sampling import survivors

from .. import topk
from . import protocol
from .client import Client, ServerError

NEEDS_LOCAL = "needs a local model (the server sends no model internals)"
_PROBE = "The quick brown fox jumps over 13 lazy dogs.\nÜber café, naïve: 東京 ½"
_NOT_SCORABLE = ("this branch is not scorable on this server: it takes text prompts only, and its "
                 "tokenizer reads the branch's text as other tokens")
_KEPT = 4096  # recent distributions kept for the next step's token probability


class NotScorable(ServerError):
    """The server takes text only and reads this branch's text as other tokens."""


@dataclass(frozen=True)
class Dialect:
    """What one server accepts, found by probing it at connect time."""

    ids_prompt: bool  # takes a prompt of token ids (vLLM, SGLang, llama-server)
    tokenize: str | None  # "vllm" (/tokenize model+prompt), "llamacpp" (/tokenize content), "extras", None
    prompt_logprobs: bool  # scores every prompt position in one request (vLLM)
    top_logprobs: int  # candidates the server sends per request


class ServerBackend:
    def __init__(self, client: Client, *, model: str, dialect: Dialect, vocab_size: int, top_k: int,
                 tokenizer=None, server_bos: Sequence[int] = (), eos_ids: Iterable[int] = (),
                 revision: str = "", parallel: int = 4, context_length: int | None = None):
        self.client = client
        self.model = model
        self.dialect = dialect
        self.vocab_size = vocab_size
        self.top_k = top_k
        self.tokenizer = tokenizer  # a Hugging Face tokenizer (--tokenizer), or None
        self._server_bos = tuple(server_bos)  # what the server puts before a text prompt
        self._eos = frozenset(i for i in eos_ids if 0 <= i < vocab_size)
        self.forward_passes = 0  # completion requests that scored a node
        self._lock = threading.Lock()
        self._dists: OrderedDict[tuple[int, ...], Distribution] = OrderedDict()
        self._pieces: dict[int, bytes] = {}
        self._text_ids: dict[str, int | None] = {}  # a top-log-prob text key -> its id
        self._scorable: dict[tuple[int, ...], bool] = {}
        self._text_map: dict[str, int] | None = None
        if tokenizer is not None:
            from tokentree.lm.tokens import TokenBytes

            self._token_bytes = TokenBytes(tokenizer)
        else:
            self._token_bytes = None
        self.capabilities = Capabilities(
            influence=False, layer_lens=False, influence_note=NEEDS_LOCAL, layer_lens_note=NEEDS_LOCAL,
            prompt_logprobs=dialect.prompt_logprobs, exact_entropy=False, parallel=max(1, parallel), remote=True,
        )
        host = client.netloc
        self.info = ModelInfo(
            name=model, device=host, dtype="server",
            fingerprint=fingerprint(client, model, revision),
            vocab_key=vocab_key(client, model, tokenizer, vocab_size), context_length=context_length,
        )

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text))
        return self._server_tokenize(text, special=True)

    # ------------------------------------------------------------------ chat: through --tokenizer
    def special_ids(self) -> frozenset[int]:
        if self.tokenizer is None:
            return frozenset()
        marked = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        return frozenset(i for i in (*self.tokenizer.all_special_ids, *marked) if 0 <= i < self.vocab_size)

    def chat_template(self) -> ChatTemplate | None:
        """The --tokenizer's chat template (without one the server's template is not asked)."""
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            return None
        return ChatTemplate(template, self.tokenizer.bos_token or "", self.tokenizer.eos_token or "")

    def encode_special(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._server_tokenize(text, special=False)

    def chat_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        template = self.chat_template()
        if template is None:
            raise ServerError("a chat prompt on a server needs --tokenizer (the served model's tokenizer and template)")
        return render_ids(template, messages, self.encode_special, add_generation_prompt=add_generation_prompt)

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        out = {}
        for i in ids:
            with self._lock:
                piece = self._pieces.get(i)
            if piece is None:
                piece = self._token_bytes.one(i) if self._token_bytes else self._server_detokenize([i]).encode()
                with self._lock:
                    self._pieces[i] = piece
            out[i] = piece
        return out

    def _server_tokenize(self, text: str, *, special: bool) -> list[int]:
        kind = self.dialect.tokenize
        if kind == "vllm":
            data = self.client.post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": special})
        elif kind == "llamacpp":
            data = self.client.post("/tokenize", {"content": text, "add_special": special, "parse_special": True})
        elif kind == "extras":
            data = self.client.post("/extras/tokenize", {"input": text, "model": self.model})
            ids = protocol.tokens(data, "/extras/tokenize")
            if not special and ids[: len(self._server_bos)] == list(self._server_bos):
                ids = ids[len(self._server_bos):]
            return ids
        else:
            raise ServerError("the server has no tokenize endpoint; pass --tokenizer NAME_OR_PATH")
        return protocol.tokens(data, "/tokenize")

    def _server_detokenize(self, ids: list[int]) -> str:
        kind = self.dialect.tokenize
        if kind == "vllm":
            data = self.client.post("/detokenize", {"model": self.model, "tokens": ids})
            key = "prompt"
        elif kind == "llamacpp":
            data, key = self.client.post("/detokenize", {"tokens": ids}), "content"
        elif kind == "extras":
            data, key = self.client.post("/extras/detokenize", {"tokens": ids, "model": self.model}), "text"
        else:
            raise ServerError("the server has no detokenize endpoint; pass --tokenizer NAME_OR_PATH")
        text = data.get(key) if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise ServerError("the server's detokenize answer has no text")
        return text

    def _resolve(self, text: str) -> int | None:
        """The id a text-keyed top log-prob stands for: the one id the server's tokenizer
        reads the text as (memoized); None if it reads it as several (an ambiguous key)."""
        with self._lock:
            if text in self._text_ids:
                return self._text_ids[text]
        token = None
        if self._token_bytes is not None:
            token = self._texts().get(text)
        elif text:
            ids = self._server_tokenize(text, special=False)
            token = ids[0] if len(ids) == 1 and 0 <= ids[0] < self.vocab_size else None
        with self._lock:
            self._text_ids[text] = token
        return token

    def _texts(self) -> dict[str, int]:
        """Text -> id over the local tokenizer's vocabulary, for the texts exactly one id
        decodes to (as a text-keyed server writes them: the bytes, invalid UTF-8 dropped)."""
        if self._text_map is None:
            seen: dict[str, int | None] = {}
            for i, piece in self._token_bytes(range(self.vocab_size)).items():
                text = piece.decode("utf-8", errors="ignore")
                seen[text] = None if text in seen else i
            self._text_map = {t: i for t, i in seen.items() if i is not None}
        return self._text_map

    # ------------------------------------------------------------------ requests
    def _prompt(self, tokens: tuple[int, ...]):
        """The request's prompt, and a check to wait for before its answer may be used: the
        ids as they are; or, on a text-only server, the branch's text and the server's own
        tokenization of it, asked for in parallel with the completion (it must give back
        exactly the branch's ids, else the answer is for another sequence and is dropped)."""
        if self.dialect.ids_prompt:
            return list(tokens), None
        body = tokens
        if self._server_bos and tokens[: len(self._server_bos)] == self._server_bos:
            body = tokens[len(self._server_bos):]  # the server adds its BOS to a text prompt
        raw = b"".join(self.token_bytes(body)[i] for i in body)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise NotScorable(_NOT_SCORABLE) from None  # a partial character: no text stands for it
        with self._lock:
            known = self._scorable.get(tokens)
        if known is False:
            raise NotScorable(_NOT_SCORABLE)
        if known:
            return text, None
        return text, _Background(self._reads_back, text, tokens)

    def _reads_back(self, text: str, tokens: tuple[int, ...]) -> bool:
        same = self._server_tokenize(text, special=True) == list(tokens)
        with self._lock:
            self._scorable[tokens] = same
        return same

    def _complete(self, tokens: tuple[int, ...], *, prompt_logprobs: bool = False) -> dict:
        prompt, check = self._prompt(tokens)
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1,
                "logprobs": self.dialect.top_logprobs, "temperature": 0.0, "echo": False}
        if self.dialect.tokenize == "vllm":
            body["return_tokens_as_token_ids"] = True
        if prompt_logprobs:
            body["prompt_logprobs"] = self.dialect.top_logprobs
        data = self.client.post("/v1/completions", body)
        if check is not None and not check.result():
            raise NotScorable(_NOT_SCORABLE)
        with self._lock:
            self.forward_passes += 1
        return data

    def _distribution(self, data: dict, tokens: tuple[int, ...]) -> Distribution:
        answer = protocol.next_logprobs(data, self._resolve)
        bad = next((i for i in answer.by_id if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ServerError(f"the server sent token id {bad}, outside the vocabulary of {self.vocab_size}: "
                              "is --tokenizer the served model's?")
        dist = topk.distribution(answer.by_id, self.vocab_size, self.top_k, all_logprobs=answer.all_logprobs)
        with self._lock:
            self._pieces.update(answer.pieces)
            self._dists[tokens] = dist
            self._dists.move_to_end(tokens)
            while len(self._dists) > _KEPT:
                self._dists.popitem(last=False)
        return dist

    def _next(self, tokens: tuple[int, ...]) -> Distribution:
        with self._lock:
            dist = self._dists.get(tokens)
        return dist if dist is not None else self._distribution(self._complete(tokens), tokens)

    # ------------------------------------------------------------------ the Backend interface
    def prefill(self, tokens: Sequence[int]) -> list[NodeOutput | None]:
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        self._check_ids(tokens)
        if not self.dialect.prompt_logprobs:
            # One request for the last position; the prompt's own tokens stay n/a until visited.
            outputs: list[NodeOutput | None] = [None] * len(tokens)
            outputs[-1] = self._output(tokens)
            return outputs
        data = self._complete(tokens, prompt_logprobs=True)
        rows = protocol.prompt_logprobs(data, len(tokens))
        outputs = []
        for i in range(len(tokens)):
            prob = rank = None
            if i:
                lp, rank = rows[i - 1].get(tokens[i], (None, None))
                prob = None if lp is None else math.exp(lp)
            if i + 1 < len(tokens):
                nxt = {t: lp for t, (lp, _) in rows[i].items()}
                dist = topk.distribution(nxt, self.vocab_size, self.top_k)
            else:
                dist = self._distribution(data, tokens)
            outputs.append(NodeOutput(prob, rank, dist))
        return outputs

    def _output(self, tokens: tuple[int, ...]) -> NodeOutput:
        """A node's output: its distribution, and its token's probability and rank under the
        parent's (kept from the step before, else asked for in parallel)."""
        parent = None
        if len(tokens) > 1:
            with self._lock:
                parent = self._dists.get(tokens[:-1])
            if parent is None:
                pending = _Background(self._next, tokens[:-1])
        dist = self._distribution(self._complete(tokens), tokens)
        if len(tokens) > 1 and parent is None:
            parent = pending.result()
        prob, rank = topk.prob_rank(parent, tokens[-1]) if parent is not None else (None, None)
        return NodeOutput(prob, rank, dist)

    def step(self, prefix: Sequence[int], token: int) -> NodeOutput:
        tokens = (*prefix, token)
        self._check_ids(tokens)
        return self._output(tokens)

    def step_with_analysis(self, prefix, token, *, influence: bool, lens_count: int):
        return self.step(prefix, token), Analysis()

    def analyze(self, tokens, *, influence: bool = False, lens_ids=None) -> Analysis:
        return Analysis()  # no model internals over HTTP: capabilities say so

    def sample(self, prefix, *, count: int, steps: int, settings, seed: int, stop_ids=frozenset(), allowed=None):
        """Continuations drawn from each node's top-k (renormalized, then the sampler's
        temperature/top-k/top-p/min-p, as `sampling.survivors` computes them): the tokens
        outside the server's top-k are never drawn. Each continuation is its own chain of
        requests; the chains run in parallel. `allowed` (a regex constraint: drawn tokens ->
        the allowed ids' bitmask) keeps only the top-k ids it allows; it is called under a lock
        (a constraint's matcher serves one thread at a time)."""
        prefix = tuple(prefix)
        if not prefix:
            raise ValueError("sample needs a prefix of at least one token")
        stops = frozenset(stop_ids)
        gate = threading.Lock()

        def candidates(dist, drawn) -> tuple[list[int], list[float]]:
            if allowed is None:
                return list(dist.top_ids), list(dist.top_probs)
            with gate:
                mask = allowed(drawn)
            pairs = [(t, p) for t, p in zip(dist.top_ids, dist.top_probs)
                     if (t >> 3) < len(mask) and mask[t >> 3] >> (t & 7) & 1]
            return [t for t, _ in pairs], [p for _, p in pairs]

        def chain(row: int) -> list[tuple[int, NodeOutput]]:
            rng = random.Random(f"{seed}:{row}")
            tokens, out = prefix, []
            dist = self._next(prefix)
            for _ in range(steps):
                ids, probs = candidates(dist, tokens[len(prefix):])
                pick, _ = survivors(ids, probs, settings, 0.0) if ids else ({}, True)  # only the top-k
                if not pick:
                    break
                token = rng.choices(list(pick), weights=list(pick.values()))[0]
                prob, rank = topk.prob_rank(dist, token)
                tokens = (*tokens, token)
                dist = self._next(tokens)
                out.append((token, NodeOutput(prob, rank, dist)))
                if token in stops:
                    break
            return out

        if steps <= 0:
            return [[] for _ in range(max(0, count))]
        return [t.result() for t in [_Background(chain, row) for row in range(max(0, count))]]

    def stop_ids(self, fill_stop: str) -> frozenset[int]:
        if fill_stop not in ("eos", "line"):
            raise ValueError(f'fill_stop must be "eos" or "line", not {fill_stop!r}')
        if fill_stop == "eos":
            return self._eos
        if self._token_bytes is not None:
            pieces = self._token_bytes(range(self.vocab_size))
        else:
            with self._lock:
                pieces = dict(self._pieces)  # without a local tokenizer: the tokens seen so far
        return self._eos | {i for i, piece in pieces.items() if b"\n" in piece}

    def close(self) -> None:
        self.client.close()

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is not in the model's vocabulary of {self.vocab_size} ids")


class _Background:
    """`fn(*args)` on a daemon thread (quitting never waits for a request), then `result()`."""

    def __init__(self, fn, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def fingerprint(client: Client, model: str, revision: str) -> str:
    """server:HOST:PORT/model@what the server says of revision and quantization: two servers
    (or two quantizations of one model) never share cached numbers."""
    host = urlsplit(f"//{client.netloc}").hostname or client.netloc
    port = client.port or (443 if client.scheme == "https" else 80)
    return f"server:{host}:{port}/{model}@{revision or 'unknown'}:server"


def vocab_key(client: Client, model: str, tokenizer, vocab_size: int) -> str:
    """The local tokenizer's key when there is one (a session then resumes on a local model of
    the same vocabulary); else one of the served model and its vocabulary size."""
    if tokenizer is not None:
        from tokentree.lm.loader import vocab_key as hf_vocab_key

        return hf_vocab_key(tokenizer)
    import hashlib

    return hashlib.blake2b(f"{model}|{vocab_size}".encode(), digest_size=8).hexdigest()
