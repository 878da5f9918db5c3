"""Sampled continuations on llama.cpp: up to SAMPLE_ROWS rows drawn together, each in its own
sequence (LINES.. of the context) forked from the prefix's cache line without copying, every
live row's newest token decoded in ONE batch per step and scored into a NodeOutput."""

from __future__ import annotations

import torch

import tokentree.lm.analysis as analysis
from tokentree.lm.llama.cache import LINES, SAMPLE_ROWS, CacheLines, Line
from tokentree.outputs import NodeOutput


def sample_group(cache: CacheLines, prefix: tuple[int, ...], source: Line, first: torch.Tensor,
                 rows: list[int], steps: int, settings, generator, stops, results, *, top_k: int,
                 allowed=None) -> None:
    """Draw up to `steps` tokens for each row in `rows` (at most SAMPLE_ROWS) after `prefix`,
    whose cells `source` holds and whose next-token logits are `first`: `analysis.sampling_probs`
    with `settings`, `analysis.draw` with `generator`. Each drawn token and the NodeOutput of
    the prefix + the tokens drawn so far go to results[row]; a row stops at a token in `stops`.
    `allowed` (a regex constraint): the row's drawn tokens -> the bitmask of the ids that may
    come next; only those are drawn, and a row where none may ends there.
    One forward pass is counted per step; the sample sequences are emptied afterwards."""
    lib, mem = cache.lib, cache.mem
    seqs = [LINES + j for j in range(len(rows))]  # row rows[j] grows in sequence seqs[j]
    for seq in seqs:
        lib.llama_memory_seq_rm(mem, seq, -1, -1)
        lib.llama_memory_seq_cp(mem, source.seq, seq, 0, len(prefix))
    logits = first[None].expand(len(rows), -1)
    try:
        for step in range(steps):
            scores = logits
            if allowed is not None:
                ok = analysis.allowed_rows([allowed([t for t, _ in results[r]]) for r in rows], logits.shape[-1],
                                           logits.device)
                live = ok.any(-1).tolist()
                if not all(live):  # nothing may follow: that continuation ends here
                    for j, alive in enumerate(live):
                        if not alive:
                            lib.llama_memory_seq_rm(mem, seqs[j], -1, -1)
                    keep = [j for j, alive in enumerate(live) if alive]
                    if not keep:
                        break
                    logits, ok = logits[keep], ok[keep]
                    rows, seqs = [rows[j] for j in keep], [seqs[j] for j in keep]
                scores = analysis.restrict(logits, ok)
            probs = analysis.sampling_probs(scores, temperature=settings.temperature, top_k=settings.top_k,
                                            top_p=settings.top_p, min_p=settings.min_p)
            tokens = analysis.draw(probs, generator).view(-1)
            token_probs, token_ranks = analysis.target_probs_ranks(logits, tokens)
            drawn = tokens.tolist()
            cache.forward_passes += 1
            out = cache.decode([(t, len(prefix) + step, s) for t, s in zip(drawn, seqs)], outputs=len(drawn),
                               keep=source)
            logits = out.clone()  # llama.cpp's buffer is overwritten by the next decode
            dists = analysis.distributions(logits, top_k)
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
