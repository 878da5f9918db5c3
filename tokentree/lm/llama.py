"""A GGUF model through llama.cpp in this process: exact next-token numbers on a CPU.

llama.cpp hands back the full next-token logits, so every stored number (top-k, entropy,
a token's probability and rank) comes from the same `analysis` math as the transformers
engine's, over the same real vocabulary (the converter's "[PAD…]" rows are cut off, as the
engine cuts an LM head's padding rows).

KV reuse mirrors the engine's cache lines (lm/engine.py), with llama.cpp *sequences* as
lines in one unified KV cache:
- extend: a line holding a prefix of the request is fed only the missing tokens;
- fork: a line that diverges (a pop, another branch) is copied into a free sequence up to
  the common prefix (`memory_seq_cp`: the cells are shared, nothing is copied), so the other
  branch keeps its cache; with no free sequence the line is cropped in place
  (`memory_seq_rm`). A step after a pop feeds ONE token: the parent's logits are kept in a
  small LRU, as the engine keeps them.
- when the cache is full, the least recently used lines are dropped and the call retried.
(benchmarks/llama_cpp.py measures this against re-feeding and state save/restore.)

Counters: `forward_passes` as the engine counts them (a prefill 1, a step 1, a cached node 0),
`tokens_fed` the tokens given to llama.cpp, `model_calls` its decode calls.
No attention weights or hidden states come out of llama.cpp: no influence, no layer lens.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import tokentree.lm.analysis as analysis
from tokentree.errors import ModelLoadError
from tokentree.lm import gguf
from tokentree.lm.kept import KeptLogits, closest_line, sample_request
from tokentree.outputs import Analysis, Capabilities, ModelInfo, NodeOutput

NEEDS_TRANSFORMERS = "needs the transformers backend (llama.cpp gives no attention weights or hidden states)"
DEFAULT_N_CTX = 8192  # KV cells shared by every cached line (12 KiB each for Qwen2.5-0.5B in F16)
PREFILL_CHUNK = 256  # tokens per decode call of a prompt: [256, 151,936] float32 logits are 148 MiB
LINES = 16  # llama.cpp sequences used as cache lines
SAMPLE_ROWS = 16  # more sequences for the continuations of one sample, decoded as one batch
_SUMMARY_ROWS = 16  # rows per analysis.summarize call, as in the engine
_PREFILL_ROWS_KEPT = 8  # a prefill keeps the logits of its last prefixes (a pop into the prompt)
_NO_SLOT = 1  # llama_decode: no room in the KV cache for the batch

log = logging.getLogger("tokentree.llama")


class ContextFull(ValueError):
    """The branch does not fit in llama.cpp's context, even alone."""


def import_llama():
    """The llama_cpp module, its log routed to the log file; ModelLoadError (one line, naming
    the extra) if it is missing."""
    llama_cpp = gguf.require_llama()
    _quiet(llama_cpp)
    return llama_cpp


# ------------------------------------------------------------------ llama.cpp's log

_errors: list[str] | None = None  # error lines of the load in progress (None: not collecting)
_callback = None  # the ctypes callback must outlive every call into llama.cpp
_setup = threading.Lock()


def _quiet(lib) -> None:
    """Route llama.cpp's log to the log file (the terminal belongs to the UI), keeping the
    error lines of a load so that its failure can say why. Idempotent."""
    global _callback
    with _setup:
        if _callback is not None:
            return

        @lib.llama_log_callback
        def callback(level, text, user_data):
            message = text.decode("utf-8", "replace").strip()
            if level == 4 and message:  # GGML_LOG_LEVEL_ERROR
                if _errors is not None:
                    _errors.append(message)
                log.warning("llama.cpp: %s", message)
            elif level == 3 and message:  # WARN
                log.info("llama.cpp: %s", message)

        _callback = callback
        lib.llama_log_set(callback, ctypes.c_void_p(0))
        lib.llama_backend_init()


def _load_failure(errors: list[str]) -> str:
    """The first informative error line of a failed load, without llama.cpp's function names."""
    for line in errors:
        text = line.split(": ", 1)[1] if ": " in line and " " not in line.split(": ", 1)[0] else line
        if "failed to load model" not in text:
            text = text.removeprefix("error loading model: ")
            return "".join(c if c.isprintable() else "?" for c in text)  # one safe line
    return "llama.cpp could not read it"


# ------------------------------------------------------------------ threads


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads share a core's arithmetic units,
    so a second thread per core slows llama.cpp's matrix products down."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        try:
            import psutil

            return max(1, psutil.cpu_count(logical=False) or 1)
        except ImportError:
            return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def quant_name(lib, ftype: int) -> str:
    """"F32", "F16", "Q4_K_M", ... for a llama_ftype value."""
    ftype &= ~lib.LLAMA_FTYPE_GUESSED
    for name in dir(lib):
        if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED" and getattr(lib, name) == ftype:
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return f"ftype{ftype}"


def context_params(lib, quant: str, *, n_ctx: int, chunk: int, threads: int, sequences: int):
    """llama.cpp context parameters for exploring (the benchmark's bare baseline uses the same)."""
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = chunk
    params.n_seq_max = sequences
    params.kv_unified = True  # lines share one cache: a fork shares its prefix's cells
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    if quant == "F32":
        # Keys and values in float32 too, and no flash attention (on a CPU it computes in
        # float16): the numbers then match the float32 Hugging Face model to ~1e-6.
        params.type_k = params.type_v = lib.GGML_TYPE_F32
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return params


# ------------------------------------------------------------------ the backend


@dataclass
class _Line:
    seq: int  # the llama.cpp sequence holding exactly `tokens`
    tokens: tuple[int, ...]


class LlamaBackend:
    """The Backend interface on one GGUF file. Used from one worker thread."""

    def __init__(self, path: str | Path, *, name: str | None = None, threads: int = 0,
                 n_ctx: int = DEFAULT_N_CTX, top_k: int = 64, cache_size: int = 100,
                 prefill_chunk: int = PREFILL_CHUNK):
        lib = self._lib = import_llama()
        path = Path(path)
        self.top_k = top_k
        self.cache_size = max(1, cache_size)
        self.forward_passes = 0
        self.tokens_fed = 0
        self.model_calls = 0
        self._lock = threading.RLock()
        self._model = self._ctx = self._batch = None
        self._model = self._load(lib, path, name or str(path))
        try:
            self._setup(lib, path, name or str(path), threads, n_ctx, prefill_chunk)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _load(lib, path: Path, name: str):
        global _errors
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0  # CPU: the memory floor, and numbers that do not depend on a GPU
        with _setup:
            _errors = []
        try:
            model = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
        finally:
            with _setup:
                errors, _errors = _errors or [], None
        if not model:
            raise ModelLoadError(f"cannot load {name} as a GGUF model: {_load_failure(errors)}")
        return model

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
        self._mem = lib.llama_get_memory(ctx)
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
        self._pieces: dict[int, bytes] = {}
        self._stop_ids: dict[str, frozenset[int]] = {}
        self._lines: list[_Line] = []  # least recently used first
        self._free = list(range(LINES - 1, -1, -1))  # sequence ids no line holds
        self._logits = KeptLogits(self.cache_size)  # next-token logits of recent prefixes

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
        lib = self._live()
        raw = text.encode("utf-8")
        size = len(raw) + 8
        for _ in range(2):
            out = (lib.llama_token * size)()
            n = lib.llama_tokenize(self._vocab, raw, len(raw), out, size, True, True)
            if n >= 0:
                return list(out[:n])
            size = -n
        raise ValueError("llama.cpp could not tokenize the text")

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
            line = self._new_line()
            try:
                for start in range(0, n, self.prefill_chunk):
                    end = min(start + self.prefill_chunk, n)
                    logits = self._decode_line(line, tokens[start:end], start, outputs=end - start)
                    for i in range(max(keep_from, start), end):
                        self._logits.keep(tokens[: i + 1], logits[i - start])
                    for lo in range(start, end, _SUMMARY_ROWS):
                        hi = min(lo + _SUMMARY_ROWS, end)
                        rows = analysis.summarize(logits[lo - start: hi - start], self.top_k, targets[lo:hi])
                        dists.extend(rows[0])
                        scores.extend(zip(rows[1], rows[2]))
                    del logits  # a view of llama.cpp's buffer: the next decode overwrites it
            except BaseException:
                self._drop(line)
                raise
            line.tokens = tokens
            self._remember(line)
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
            line, start = self._checkout(target, feed_at_least=2 if rerun else 1)
            self.forward_passes += 1
            rows = self._run(line, target, start, keep=2 if rerun else 1)
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
               stop_ids: Iterable[int] = frozenset()) -> list[list[tuple[int, NodeOutput]]]:
        """`count` continuations of up to `steps` tokens drawn after `prefix`, as
        `Engine.sample` draws them: `analysis.sampling_probs` with `settings`, `analysis.draw`
        with a torch generator seeded with `seed`, every live continuation's newest token
        decoded in ONE batch per step (each in its own llama.cpp sequence, forked from the
        prefix's line without copying). Up to SAMPLE_ROWS continuations form one batch; more
        are drawn in further batches, continuing the same generator.

        Each drawn token comes with the NodeOutput of the prefix + the tokens drawn so far (its
        probability and rank under the model's own distribution at its parent). The lines and
        kept logits are left as a step on `prefix` leaves them; no sampled node enters them.
        forward_passes: one per step that ran, plus one if the prefix had to be computed."""
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
                self._sample_group(prefix, source, first, rows, steps, settings, generator, stops, results)
        return results

    def _sample_group(self, prefix, source: _Line, first: torch.Tensor, rows: list[int], steps: int,
                      settings, generator, stops, results) -> None:
        lib, mem = self._lib, self._mem
        seqs = [LINES + j for j in range(len(rows))]  # row rows[j] grows in sequence seqs[j]
        for seq in seqs:
            lib.llama_memory_seq_rm(mem, seq, -1, -1)
            lib.llama_memory_seq_cp(mem, source.seq, seq, 0, len(prefix))
        logits = first[None].expand(len(rows), -1)
        try:
            for step in range(steps):
                probs = analysis.sampling_probs(logits, temperature=settings.temperature, top_k=settings.top_k,
                                                top_p=settings.top_p, min_p=settings.min_p)
                tokens = analysis.draw(probs, generator).view(-1)
                token_probs, token_ranks = analysis.target_probs_ranks(logits, tokens)
                drawn = tokens.tolist()
                self.forward_passes += 1
                out = self._decode([(t, len(prefix) + step, s) for t, s in zip(drawn, seqs)], outputs=len(drawn),
                                   keep=source)
                logits = out.clone()  # llama.cpp's buffer is overwritten by the next decode
                dists = analysis.distributions(logits, self.top_k)
                keep = []
                for j, (row, token) in enumerate(zip(rows, drawn)):
                    results[row].append((token, NodeOutput(token_probs[j], token_ranks[j], dists[j])))
                    if token not in stops:
                        keep.append(j)
                    else:
                        lib.llama_memory_seq_rm(mem, seqs[j], -1, -1)
                if not keep or step == steps - 1:
                    break
                if len(keep) < len(rows):
                    logits = logits[keep]
                    rows, seqs = [rows[j] for j in keep], [seqs[j] for j in keep]
        finally:
            for seq in range(LINES, LINES + SAMPLE_ROWS):
                lib.llama_memory_seq_rm(mem, seq, -1, -1)

    def _prefix_line(self, prefix: tuple[int, ...]) -> tuple[torch.Tensor, _Line]:
        """(logits after `prefix`, a line whose first len(prefix) cells are `prefix`): a kept
        one costs nothing, otherwise one call, as a step on `prefix` makes."""
        logits = self._logits.get(prefix)
        if logits is not None:
            for line in reversed(self._lines):
                if line.tokens[: len(prefix)] == prefix:
                    return logits, line
        line, start = self._checkout(prefix, feed_at_least=1)
        self.forward_passes += 1
        rows = self._run(line, prefix, start, keep=1)
        return self._logits.keep(prefix, rows[-1]), line

    # ------------------------------------------------------------------ cache lines
    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is not in the model's vocabulary of {self.vocab_size} ids")

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise ContextFull(f"the branch would be {n} tokens; llama.cpp's context holds {self.n_ctx} "
                              "(raise [llama] n_ctx, up to the model's trained context)")

    def _new_line(self) -> _Line:
        """An empty line: a free sequence, else the least recently used line's."""
        if self._free:
            return _Line(self._free.pop(), ())
        line = self._lines.pop(0)
        self._lib.llama_memory_seq_rm(self._mem, line.seq, -1, -1)
        return _Line(line.seq, ())

    def _checkout(self, target: tuple[int, ...], feed_at_least: int) -> tuple[_Line, int]:
        """A line whose sequence holds target[:start], start <= len(target) - feed_at_least,
        from the line sharing the longest prefix with `target` (see the module doc)."""
        limit = len(target) - feed_at_least
        best, start = closest_line(self._lines, target, limit)
        if best is None or start <= 0:
            return self._new_line(), 0
        if start == len(best.tokens):
            return best, start  # extend in place
        lib, mem = self._lib, self._mem
        if self._free:  # fork: the cells up to `start` are shared, the other branch keeps its line
            line = _Line(self._free.pop(), target[:start])
            lib.llama_memory_seq_cp(mem, best.seq, line.seq, 0, start)
            return line, start
        if lib.llama_memory_seq_rm(mem, best.seq, start, -1):  # crop in place
            best.tokens = target[:start]
            return best, start
        # A recurrent model keeps no per-position state to crop: start the line over.
        lib.llama_memory_seq_rm(mem, best.seq, -1, -1)
        best.tokens = ()
        return best, 0

    def _run(self, line: _Line, target: tuple[int, ...], start: int, keep: int) -> torch.Tensor:
        """Feed target[start:] on top of `line` (holding target[:start]); the float32 logits
        [keep, V] of the last `keep` positions (copies). Afterwards the line holds `target` and
        is the most recently used."""
        try:
            pieces = []
            for lo in range(start, len(target), self.prefill_chunk):
                hi = min(lo + self.prefill_chunk, len(target))
                rows = min(hi - lo, max(0, keep - (len(target) - hi)))  # outputs wanted from this chunk
                out = self._decode_line(line, target[lo:hi], lo, outputs=rows)
                if rows:
                    pieces.append(out.clone())  # llama.cpp's buffer is overwritten by the next decode
            result = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        except BaseException:
            self._drop(line)  # its sequence may hold part of the tokens
            raise
        line.tokens = target
        self._remember(line)
        return result

    def _decode_line(self, line: _Line, tokens: Sequence[int], pos: int, outputs: int) -> torch.Tensor:
        """Decode `tokens` at positions pos.. of `line`'s sequence; logits of the last `outputs`."""
        return self._decode([(t, pos + i, line.seq) for i, t in enumerate(tokens)], outputs=outputs, keep=line)

    def _decode(self, entries: list[tuple[int, int, int]], *, outputs: int, keep: _Line) -> torch.Tensor:
        """One llama_decode of (token, position, sequence) entries; logits [outputs, V] of the
        last `outputs` entries as a float32 view of llama.cpp's buffer (valid until the next
        decode). A full cache drops the least recently used lines but `keep` until it fits."""
        lib, batch = self._lib, self._batch
        n = len(entries)
        batch.n_tokens = n
        for i, (token, pos, seq) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i >= n - outputs
        rc = lib.llama_decode(self._ctx, batch)
        while rc == _NO_SLOT:  # the cache is full: drop the least recently used line and retry
            victim = next((x for x in self._lines if x is not keep), None)
            if victim is None:
                break
            self._drop(victim)
            rc = lib.llama_decode(self._ctx, batch)
        if rc == _NO_SLOT:
            raise ContextFull(f"llama.cpp's context ({self.n_ctx} tokens) is full; raise [llama] n_ctx")
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not evaluate the tokens (llama_decode returned {rc})")
        self.model_calls += 1
        self.tokens_fed += n
        if not outputs:
            return torch.empty((0, self.vocab_size))
        first = lib.llama_get_logits_ith(self._ctx, n - outputs)
        last = lib.llama_get_logits_ith(self._ctx, n - 1)
        width = self._n_logits * ctypes.sizeof(ctypes.c_float)
        if ctypes.addressof(last.contents) - ctypes.addressof(first.contents) == (outputs - 1) * width:
            view = np.ctypeslib.as_array(first, shape=(outputs, self._n_logits))  # rows in batch order
        else:  # llama.cpp stored the outputs in another order: gather them row by row
            view = np.stack([np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, i), shape=(self._n_logits,))
                             for i in range(n - outputs, n)])
        return torch.from_numpy(view)[:, : self.vocab_size]

    def _remember(self, line: _Line) -> None:
        for other in [x for x in self._lines if x is not line and x.tokens == line.tokens]:
            self._drop(other)  # the same tokens twice: keep the newer line
        self._lines = [x for x in self._lines if x is not line]
        self._lines.append(line)

    def _drop(self, line: _Line) -> None:
        """Forget `line` and free its sequence (cells shared with other lines stay)."""
        self._lib.llama_memory_seq_rm(self._mem, line.seq, -1, -1)
        self._lines = [x for x in self._lines if x is not line]
        if line.seq not in self._free and line.seq < LINES:
            self._free.append(line.seq)
