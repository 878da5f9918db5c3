"""The KV-cache bookkeeping: llama.cpp *sequences* as cache lines in one unified KV cache, and
the decode calls that fill them.

KV reuse mirrors the engine's cache lines (lm/engine.py):
- extend: a line holding a prefix of the request is fed only the missing tokens;
- fork: a line that diverges (a pop, another branch) is copied into a free sequence up to
  the common prefix (`memory_seq_cp`: the cells are shared, nothing is copied), so the other
  branch keeps its cache; with no free sequence the line is cropped in place
  (`memory_seq_rm`). (A step after a pop feeds ONE token: the backend keeps the parent's
  logits in a small LRU, as the engine keeps them.)
- when the cache is full, the least recently used lines are dropped and the call retried.
(benchmarks/llama_cpp.py measures this against re-feeding and state save/restore.)

Sequences 0..LINES-1 are cache lines; LINES..LINES+SAMPLE_ROWS-1 hold the continuations of
one sample (lm/llama/sampling.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tokentree.lm.kept import closest_line

LINES = 16  # llama.cpp sequences used as cache lines
SAMPLE_ROWS = 16  # more sequences for the continuations of one sample, decoded as one batch
_NO_SLOT = 1  # llama_decode: no room in the KV cache for the batch


class ContextFull(ValueError):
    """The branch does not fit in llama.cpp's context, even alone."""


@dataclass
class Line:
    seq: int  # the llama.cpp sequence holding exactly `tokens`
    tokens: tuple[int, ...]


class CacheLines:
    """The cache lines of one llama.cpp context, least recently used first, and the counters
    of the work asked of it (`forward_passes` is counted by the callers, as the engine counts
    them; `tokens_fed` and `model_calls` by `decode`). Used under the backend's lock."""

    def __init__(self, lib, ctx, batch, *, n_ctx: int, n_logits: int, vocab_size: int, prefill_chunk: int):
        self.lib, self.ctx, self.batch = lib, ctx, batch  # owned (and freed) by the backend
        self.mem = lib.llama_get_memory(ctx)
        self.n_ctx = n_ctx
        self.n_logits = n_logits  # rows of llama.cpp's logits
        self.vocab_size = vocab_size  # the real vocabulary: logits are cut to it
        self.prefill_chunk = prefill_chunk
        self.forward_passes = 0
        self.tokens_fed = 0
        self.model_calls = 0
        self.lines: list[Line] = []  # least recently used first
        self.free = list(range(LINES - 1, -1, -1))  # sequence ids no line holds

    def new_line(self) -> Line:
        """An empty line: a free sequence, else the least recently used line's."""
        if self.free:
            return Line(self.free.pop(), ())
        line = self.lines.pop(0)
        self.lib.llama_memory_seq_rm(self.mem, line.seq, -1, -1)
        return Line(line.seq, ())

    def checkout(self, target: tuple[int, ...], feed_at_least: int) -> tuple[Line, int]:
        """A line whose sequence holds target[:start], start <= len(target) - feed_at_least,
        from the line sharing the longest prefix with `target` (see the module doc)."""
        limit = len(target) - feed_at_least
        best, start = closest_line(self.lines, target, limit)
        if best is None or start <= 0:
            return self.new_line(), 0
        if start == len(best.tokens):
            return best, start  # extend in place
        lib, mem = self.lib, self.mem
        if self.free:  # fork: the cells up to `start` are shared, the other branch keeps its line
            line = Line(self.free.pop(), target[:start])
            lib.llama_memory_seq_cp(mem, best.seq, line.seq, 0, start)
            return line, start
        if lib.llama_memory_seq_rm(mem, best.seq, start, -1):  # crop in place
            best.tokens = target[:start]
            return best, start
        # A recurrent model keeps no per-position state to crop: start the line over.
        lib.llama_memory_seq_rm(mem, best.seq, -1, -1)
        best.tokens = ()
        return best, 0

    def run(self, line: Line, target: tuple[int, ...], start: int, keep: int) -> torch.Tensor:
        """Feed target[start:] on top of `line` (holding target[:start]); the float32 logits
        [keep, V] of the last `keep` positions (copies). Afterwards the line holds `target` and
        is the most recently used."""
        try:
            pieces = []
            for lo in range(start, len(target), self.prefill_chunk):
                hi = min(lo + self.prefill_chunk, len(target))
                rows = min(hi - lo, max(0, keep - (len(target) - hi)))  # outputs wanted from this chunk
                out = self.decode_line(line, target[lo:hi], lo, outputs=rows)
                if rows:
                    pieces.append(out.clone())  # llama.cpp's buffer is overwritten by the next decode
            result = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        except BaseException:
            self.drop(line)  # its sequence may hold part of the tokens
            raise
        line.tokens = target
        self.remember(line)
        return result

    def decode_line(self, line: Line, tokens: Sequence[int], pos: int, outputs: int) -> torch.Tensor:
        """Decode `tokens` at positions pos.. of `line`'s sequence; logits of the last `outputs`."""
        return self.decode([(t, pos + i, line.seq) for i, t in enumerate(tokens)], outputs=outputs, keep=line)

    def decode(self, entries: list[tuple[int, int, int]], *, outputs: int, keep: Line) -> torch.Tensor:
        """One llama_decode of (token, position, sequence) entries; logits [outputs, V] of the
        last `outputs` entries as a float32 view of llama.cpp's buffer (valid until the next
        decode). A full cache drops the least recently used lines but `keep` until it fits."""
        lib, batch = self.lib, self.batch
        n = len(entries)
        batch.n_tokens = n
        for i, (token, pos, seq) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i >= n - outputs
        rc = lib.llama_decode(self.ctx, batch)
        while rc == _NO_SLOT:  # the cache is full: drop the least recently used line and retry
            victim = next((x for x in self.lines if x is not keep), None)
            if victim is None:
                break
            self.drop(victim)
            rc = lib.llama_decode(self.ctx, batch)
        if rc == _NO_SLOT:
            raise ContextFull(f"llama.cpp's context ({self.n_ctx} tokens) is full; raise [llama] n_ctx")
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not evaluate the tokens (llama_decode returned {rc})")
        self.model_calls += 1
        self.tokens_fed += n
        if not outputs:
            return torch.empty((0, self.vocab_size))
        first = lib.llama_get_logits_ith(self.ctx, n - outputs)
        last = lib.llama_get_logits_ith(self.ctx, n - 1)
        width = self.n_logits * ctypes.sizeof(ctypes.c_float)
        if ctypes.addressof(last.contents) - ctypes.addressof(first.contents) == (outputs - 1) * width:
            view = np.ctypeslib.as_array(first, shape=(outputs, self.n_logits))  # rows in batch order
        else:  # llama.cpp stored the outputs in another order: gather them row by row
            view = np.stack([np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_logits,))
                             for i in range(n - outputs, n)])
        return torch.from_numpy(view)[:, : self.vocab_size]

    def remember(self, line: Line) -> None:
        """Make `line` the most recently used (an older line with the same tokens is dropped)."""
        for other in [x for x in self.lines if x is not line and x.tokens == line.tokens]:
            self.drop(other)  # the same tokens twice: keep the newer line
        self.lines = [x for x in self.lines if x is not line]
        self.lines.append(line)

    def drop(self, line: Line) -> None:
        """Forget `line` and free its sequence (cells shared with other lines stay)."""
        self.lib.llama_memory_seq_rm(self.mem, line.seq, -1, -1)
        self.lines = [x for x in self.lines if x is not line]
        if line.seq not in self.free and line.seq < LINES:
            self.free.append(line.seq)
