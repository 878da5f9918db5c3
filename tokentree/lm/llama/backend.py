"""The llama.cpp backend: a GGUF model through llama.cpp in this process, exact next-token
numbers on a CPU, behind the Backend interface (lm/backend.py).

llama.cpp hands back the full next-token logits, so every stored number (top-k, entropy,
a token's probability and rank) comes from the same `analysis` math as the transformers
engine's, over the same real vocabulary (the converter's "[PAD…]" rows are cut off, as the
engine cuts an LM head's padding rows). The KV cache is reused through cache lines
(lm/llama/cache.py); a step after a pop feeds ONE token: the parent's logits are kept in a
small LRU, as the engine keeps them.

Counters: `forward_passes` as the engine counts them (a prefill 1, a step 1, a cached node 0),
`tokens_fed` the tokens given to llama.cpp, `model_calls` its decode calls.
No attention weights or hidden states come out of llama.cpp: no influence, no layer lens.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

import tokentree.lm.analysis as analysis
from tokentree.errors import ModelLoadError
from tokentree.lm import gguf
from tokentree.lm.chat import ChatTemplate, render_ids
from tokentree.lm.kept import KeptLogits, sample_request
from tokentree.lm.llama.cache import LINES, SAMPLE_ROWS, CacheLines, ContextFull, Line
from tokentree.lm.llama.params import DEFAULT_N_CTX, PREFILL_CHUNK, context_params, physical_cores, quant_name
from tokentree.lm.llama.runtime import import_llama, load_model
from tokentree.lm.llama.sampling import sample_group
from tokentree.outputs import Analysis, Capabilities, ModelInfo, NodeOutput

NEEDS_TRANSFORMERS = "needs the transformers backend (llama.cpp gives no attention weights or hidden states)"
_SUMMARY_ROWS = 16  # rows per analysis.summarize call, as in the engine
_PREFILL_ROWS_KEPT = 8  # a prefill keeps the logits of its last prefixes (a pop into the prompt)


class LlamaBackend:
    """The Backend interface on one GGUF file. Used from one worker thread."""

    def __init__(self, path: str | Path, *, name: str | None = None, threads: int = 0,
                 n_ctx: int = DEFAULT_N_CTX, top_k: int = 64, cache_size: int = 100,
                 prefill_chunk: int = PREFILL_CHUNK):
        lib = self._lib = import_llama()
        path = Path(path)
        self.top_k = top_k
        self.cache_size = max(1, cache_size)
        self._lock = threading.RLock()
        self._model = self._ctx = self._batch = None
        self._model = load_model(lib, path, name or str(path))
        try:
            self._setup(lib, path, name or str(path), threads, n_ctx, prefill_chunk)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ loading
    def _setup(self, lib, path: Path, name: str, threads: int, n_ctx: int, chunk: int) -> None:
        model = self._model
        if not lib.llama_model_has_decoder(model) or lib.llama_model_has_encoder(model):
            raise ModelLoadError(f"{name} is not a decoder-only language model; choose a causal LM's GGUF")
        self._vocab = lib.llama_model_get_vocab(model)
        self.threads = threads if threads > 0 else physical_cores()
        quant = quant_name(lib, lib.llama_model_ftype(model))
        trained = lib.llama_model_n_ctx_train(model)
        want = min(n_ctx or trained, trained) if trained > 0 else (n_ctx or DEFAULT_N_CTX)
        self.prefill_chunk = max(1, min(chunk, want))
        params = context_params(lib, quant, n_ctx=want, chunk=self.prefill_chunk, threads=self.threads,
                                sequences=LINES + SAMPLE_ROWS)
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not make a context of {want} tokens for {name}; "
                                 "lower [llama] n_ctx")
        self._ctx = ctx
        self._batch = lib.llama_batch_init(max(self.prefill_chunk, SAMPLE_ROWS), 0, 1)
        self.n_ctx = lib.llama_n_ctx(ctx)
        self._n_logits = lib.llama_vocab_n_tokens(self._vocab)  # rows of llama.cpp's logits
        texts, attrs = self._token_table()
        unused = lib.LLAMA_TOKEN_ATTR_UNUSED
        padding = [gguf.is_padding(i, t, bool(a & unused)) for i, (t, a) in enumerate(zip(texts, attrs))]
        # The real vocabulary: up to the last id that is not a converter's padding row.
        self.vocab_size = next((i + 1 for i in range(len(texts) - 1, -1, -1) if not padding[i]), len(texts))
        control = [bool(a & lib.LLAMA_TOKEN_ATTR_CONTROL) for a in attrs]
        added = [bool(a & (lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_USER_DEFINED)) for a in attrs]
        self.capabilities = Capabilities(
            influence=False, layer_lens=False, influence_note=NEEDS_TRANSFORMERS,
            layer_lens_note=NEEDS_TRANSFORMERS, prompt_logprobs=True, exact_entropy=True, parallel=1,
        )
        plural = "" if self.threads == 1 else "s"
        self.info = ModelInfo(
            name=name, device=f"cpu (llama.cpp, {self.threads} thread{plural})", dtype=quant,
            fingerprint=gguf.fingerprint(path, quant),
            vocab_key=gguf.vocab_key(texts, control, added, padding),
            context_length=self.n_ctx, num_layers=lib.llama_model_n_layer(model),
        )
        self._special = frozenset(i for i in range(self.vocab_size) if control[i])
        self._pieces: dict[int, bytes] = {}
        self._stop_ids: dict[str, frozenset[int]] = {}
        self._cache = CacheLines(lib, ctx, self._batch, n_ctx=self.n_ctx, n_logits=self._n_logits,
                                 vocab_size=self.vocab_size, prefill_chunk=self.prefill_chunk)
        self._logits = KeptLogits(self.cache_size)  # next-token logits of recent prefixes

    # The work counters live with the cache lines, which count the decode calls.
    @property
    def forward_passes(self) -> int:
        return self._cache.forward_passes

    @forward_passes.setter
    def forward_passes(self, value: int) -> None:
        self._cache.forward_passes = value

    @property
    def tokens_fed(self) -> int:
        return self._cache.tokens_fed

    @property
    def model_calls(self) -> int:
        return self._cache.model_calls

    def _token_table(self) -> tuple[list[str], list[int]]:
        lib, vocab = self._lib, self._vocab
        ids = range(self._n_logits)
        texts = [(lib.llama_vocab_get_text(vocab, i) or b"").decode("utf-8", "replace") for i in ids]
        return texts, [lib.llama_vocab_get_attr(vocab, i) for i in ids]

    def close(self) -> None:
        """Free llama.cpp's batch, context and model (idempotent)."""
        lib = self._lib
        with self._lock:
            if self._batch is not None:
                lib.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx is not None:
                lib.llama_free(self._ctx)
                self._ctx = None
            if self._model is not None:
                lib.llama_model_free(self._model)
                self._model = None

    def _live(self):
        """llama_cpp, while the model is loaded: after `close` a call raises instead of
        reading freed memory."""
        if self._ctx is None:
            raise RuntimeError("the llama.cpp model is closed")
        return self._lib

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Ids from the GGUF's own tokenizer: special tokens in the text are parsed, and BOS is
        added when the GGUF says so (as a Hugging Face tokenizer's encode does)."""
        return self._tokenize(text, add_bos=True)

    def encode_special(self, text: str) -> list[int]:
        """Ids of chat-template text: special tokens parsed, no BOS added (the template has it)."""
        return self._tokenize(text, add_bos=False)

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        lib = self._live()
        raw = text.encode("utf-8")
        size = len(raw) + 8
        for _ in range(2):
            out = (lib.llama_token * size)()
            n = lib.llama_tokenize(self._vocab, raw, len(raw), out, size, add_bos, True)
            if n >= 0:
                return list(out[:n])
            size = -n
        raise ValueError("llama.cpp could not tokenize the text")

    def special_ids(self) -> frozenset[int]:
        """The GGUF's control tokens."""
        return self._special

    def chat_template(self) -> ChatTemplate | None:
        """The GGUF's `tokenizer.chat_template`, with its BOS and EOS tokens' text."""
        lib = self._live()
        raw = lib.llama_model_chat_template(self._model, None)
        if not raw:
            return None
        vocab = self._vocab

        def text_of(token: int) -> str:
            return self._piece(token).decode("utf-8", "replace") if 0 <= token < self.vocab_size else ""

        return ChatTemplate(raw.decode("utf-8"), text_of(lib.llama_vocab_bos(vocab)), text_of(lib.llama_vocab_eos(vocab)))

    def chat_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        template = self.chat_template()
        if template is None:
            raise ValueError("the GGUF has no chat template")
        return render_ids(template, messages, self.encode_special, add_generation_prompt=add_generation_prompt)

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        """The exact bytes of each token (llama.cpp's piece); special tokens as their name."""
        return {i: self._piece(i) for i in ids}

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            lib, size = self._live(), 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = lib.llama_token_to_piece(self._vocab, token, buf, size, 0, True)
                if n >= 0:
                    break
                size = -n  # too small: llama.cpp says how many bytes it needs
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def stop_ids(self, fill_stop: str) -> frozenset[int]:
        """"eos": every end-of-generation token of the GGUF (its eos and eot ids and what
        llama.cpp counts as end of generation, e.g. <|im_end|>); "line": those and every id
        whose bytes contain a newline."""
        if fill_stop not in ("eos", "line"):
            raise ValueError(f'fill_stop must be "eos" or "line", not {fill_stop!r}')
        ids = self._stop_ids.get(fill_stop)
        if ids is None:
            lib, vocab = self._live(), self._vocab
            found = {lib.llama_vocab_eos(vocab), lib.llama_vocab_eot(vocab)}
            found.update(i for i in range(self.vocab_size) if lib.llama_vocab_is_eog(vocab, i))
            found = {i for i in found if 0 <= i < self.vocab_size}
            if fill_stop == "line":
                found.update(i for i in range(self.vocab_size) if b"\n" in self._piece(i))
            ids = self._stop_ids[fill_stop] = frozenset(found)
        return ids

    # ------------------------------------------------------------------ the Backend interface
    def prefill(self, tokens: Sequence[int]) -> list[NodeOutput]:
        """Outputs for every prefix tokens[:i+1], each token fed once, in chunks of
        `prefill_chunk`, each chunk's logits reduced to the stored numbers before the next."""
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        self._check_ids(tokens)
        self._check_length(len(tokens))
        n = len(tokens)
        keep_from = n - min(self.cache_size, _PREFILL_ROWS_KEPT)
        targets = torch.tensor(tokens[1:], dtype=torch.long)
        dists: list = []
        scores: list[tuple[float | None, int | None]] = [(None, None)]
        with self._lock:
            self._live()
            self.forward_passes += 1
            line = self._cache.new_line()
            try:
                for start in range(0, n, self.prefill_chunk):
                    end = min(start + self.prefill_chunk, n)
                    logits = self._cache.decode_line(line, tokens[start:end], start, outputs=end - start)
                    for i in range(max(keep_from, start), end):
                        self._logits.keep(tokens[: i + 1], logits[i - start])
                    for lo in range(start, end, _SUMMARY_ROWS):
                        hi = min(lo + _SUMMARY_ROWS, end)
                        rows = analysis.summarize(logits[lo - start: hi - start], self.top_k, targets[lo:hi])
                        dists.extend(rows[0])
                        scores.extend(zip(rows[1], rows[2]))
                    del logits  # a view of llama.cpp's buffer: the next decode overwrites it
            except BaseException:
                self._cache.drop(line)
                raise
            line.tokens = tokens
            self._cache.remember(line)
        return [NodeOutput(prob, rank, dist) for (prob, rank), dist in zip(scores, dists)]

    def step(self, prefix: Sequence[int], token: int) -> NodeOutput:
        """Output for prefix + [token], feeding llama.cpp only what no cached line holds:
        one token after a step or a pop (two if the parent's logits are no longer kept)."""
        prefix = tuple(prefix)
        target = prefix + (token,)
        self._check_ids((token,))
        self._check_length(len(target))
        with self._lock:
            self._live()
            parent = self._logits.get(prefix) if prefix else None
            rerun = bool(prefix) and parent is None  # the parent's last token runs again, same call
            line, start = self._cache.checkout(target, feed_at_least=2 if rerun else 1)
            self.forward_passes += 1
            rows = self._cache.run(line, target, start, keep=2 if rerun else 1)
            if rerun:
                parent = self._logits.keep(prefix, rows[0])
            logits = self._logits.keep(target, rows[-1])
        prob, rank = analysis.token_prob_rank(parent, token) if prefix else (None, None)
        return NodeOutput(prob, rank, analysis.distributions(logits[None], self.top_k)[0])

    def step_with_analysis(self, prefix: Sequence[int], token: int, *, influence: bool,
                           lens_count: int) -> tuple[NodeOutput, Analysis]:
        return self.step(prefix, token), Analysis()  # no influence, no lens: capabilities say so

    def analyze(self, tokens: Sequence[int], *, influence: bool = False,
                lens_ids: Sequence[int] | None = None) -> Analysis:
        return Analysis()

    def sample(self, prefix: Sequence[int], *, count: int, steps: int, settings, seed: int,
               stop_ids: Iterable[int] = frozenset(), allowed=None) -> list[list[tuple[int, NodeOutput]]]:
        """`count` continuations of up to `steps` tokens drawn after `prefix`, as
        `Engine.sample` draws them: `analysis.sampling_probs` with `settings`, `analysis.draw`
        with a torch generator seeded with `seed`, every live continuation's newest token
        decoded in ONE batch per step (each in its own llama.cpp sequence, forked from the
        prefix's line without copying). Up to SAMPLE_ROWS continuations form one batch; more
        are drawn in further batches, continuing the same generator.

        Each drawn token comes with the NodeOutput of the prefix + the tokens drawn so far (its
        probability and rank under the model's own distribution at its parent). The lines and
        kept logits are left as a step on `prefix` leaves them; no sampled node enters them.
        forward_passes: one per step that ran, plus one if the prefix had to be computed.
        `allowed`: as `Engine.sample` takes it (a regex constraint's bitmask per step)."""
        prefix, count, steps = sample_request(prefix, settings, count, steps)
        self._check_ids(prefix)
        results: list[list[tuple[int, NodeOutput]]] = [[] for _ in range(count)]
        if not count or not steps:
            return results
        steps = min(steps, self.n_ctx - len(prefix))  # a continuation stops at the context's end
        if steps <= 0:
            self._check_length(len(prefix) + 1)
        stops = frozenset(stop_ids)
        generator = torch.Generator()
        generator.manual_seed(int(seed))
        with self._lock:
            self._live()
            first, source = self._prefix_line(prefix)
            for group in range(0, count, SAMPLE_ROWS):
                rows = list(range(group, min(count, group + SAMPLE_ROWS)))
                sample_group(self._cache, prefix, source, first, rows, steps, settings, generator, stops, results,
                             top_k=self.top_k, allowed=allowed)
        return results

    def _prefix_line(self, prefix: tuple[int, ...]) -> tuple[torch.Tensor, Line]:
        """(logits after `prefix`, a line whose first len(prefix) cells are `prefix`): a kept
        one costs nothing, otherwise one call, as a step on `prefix` makes."""
        logits = self._logits.get(prefix)
        if logits is not None:
            for line in reversed(self._cache.lines):
                if line.tokens[: len(prefix)] == prefix:
                    return logits, line
        line, start = self._cache.checkout(prefix, feed_at_least=1)
        self.forward_passes += 1
        rows = self._cache.run(line, prefix, start, keep=1)
        return self._logits.keep(prefix, rows[-1]), line

    # ------------------------------------------------------------------ checks
    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is not in the model's vocabulary of {self.vocab_size} ids")

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise ContextFull(f"the branch would be {n} tokens; llama.cpp's context holds {self.n_ctx} "
                              "(raise [llama] n_ctx, up to the model's trained context)")

