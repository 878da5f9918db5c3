"""Server backend and speculative prefetch, as a person feels them.

1. A step through the server backend vs the server's own bare completion request for the
   same prefix (one token, the same top log-probs): target <= 1.1x.
2. Prefetch hit rate: a scripted session that pauses before each append (like a person
   reading the table) and appends the selected candidate; an append is a hit when its
   node's numbers are on screen in < 10 ms. Run through the real app loop pieces (threaded
   worker, prefetch pool) on the local transformers backend and on the server. Target >= 80%
   when the pause exceeds one step time. Also the extra compute: steps computed per append.

    uv run python benchmarks/server_prefetch.py [--model tiny|qwen2.5-0.5b-shape] [--appends 30]

The server is llama-cpp-python's (`python -m llama_cpp.server`), serving an F32 GGUF of the
model (llama.cpp's own converter), started on a free loopback port and stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import median  # noqa: E402
from benchmarks.models import build_model_dir  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def bare_vs_step(backend, server, text: str, n: int) -> tuple[float, float]:
    """Median ms of the server's own bare request and of a backend step, same prefixes."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port)

    def bare(prompt) -> float:
        body = json.dumps({"model": server.model, "prompt": prompt, "max_tokens": 1,
                           "logprobs": backend.dialect.top_logprobs, "temperature": 0.0})
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        return (time.perf_counter() - t0) * 1000

    from tokentree.lm.server import NotScorable

    # Walk along the tokens of a real text: each step's branch is text the tokenizer itself
    # produced, so a text-only server can score it (a random model's picks often are not).
    # Both walks extend the server's own prompt cache by one token per request, as a step
    # does (llama-cpp-python re-runs more for an extension than for a repeated prompt, so a
    # repeated prompt would not be a fair baseline); they run one after the other.
    ids = backend.encode((text + " ") * 4)
    start = len(backend.encode(text)) // 2
    stop = min(len(ids) - 1, start + n)
    bare_ms, step_ms = [], []
    for k in range(start, stop):
        pieces = backend.token_bytes(ids[: k + 1])
        bare_ms.append(bare(b"".join(pieces[i] for i in ids[: k + 1]).decode("utf-8")))
    backend._next(tuple(ids[:start]))  # the server's cache back at the walk's start
    for k in range(start, stop):
        t0 = time.perf_counter()
        try:
            backend.step(ids[:k], ids[k])
        except NotScorable:  # a text-only server reads its text as other tokens
            continue
        step_ms.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return median(bare_ms), median(step_ms)


def scripted_session(engine, appends: int, pause_s: float, prefetch: int, db: Path) -> dict:
    """Pause, append the selected candidate, time until its numbers show; real threads."""
    from fake_engine import new_session
    from tokentree.config import Config, DisplayConfig, ExploreConfig
    from tokentree.core.explorer import Explorer
    from tokentree.core.worker import Worker
    from tokentree.store import Store

    store = Store.open(db)
    config = Config(display=DisplayConfig(tokens_to_show=10), explore=ExploreConfig(prefetch=prefetch))
    sid = new_session(store, engine, {"story": PROMPT})
    ex = Explorer(store, sid, config=config, engine=engine)
    worker = Worker()
    pool = Worker(threads=max(1, prefetch), name="prefetch") if engine.capabilities.parallel > 1 else worker

    def pump():
        worker.deliver()
        if pool is not worker:
            pool.deliver()
        while (task := ex.take_job()) is not None:
            worker.submit(task)
        while (task := ex.take_prefetch()) is not None:
            pool.submit(task)

    def until_shown() -> bool:
        """True when the node's numbers show; False when its job failed (not scorable)."""
        while ex.snapshot().waiting:
            pump()
            if ex.error and ex.idle and ex.main.retry_at is None:
                return False
            time.sleep(0.0005)
        return True

    until_shown()
    passes0 = engine.forward_passes
    latencies, skipped = [], 0
    for _ in range(appends):
        end = time.monotonic() + pause_s
        while time.monotonic() < end:  # the person reads; the app keeps pumping
            pump()
            time.sleep(0.001)
        t0 = time.perf_counter()
        ex.append()
        if not until_shown():
            skipped += 1  # not scorable on a text-only server: back, and on to the next
            ex.error = None
            ex.pop()
            ex.cursor(1)
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
    # let in-flight work finish before counting
    deadline = time.monotonic() + 30
    while (worker.pending or pool.pending) and time.monotonic() < deadline:
        pump()
        time.sleep(0.001)
    passes = engine.forward_passes - passes0
    worker.shutdown()
    if pool is not worker:
        pool.shutdown()
    store.close()
    hits = sum(1 for ms in latencies if ms < 10)
    return {"hit_rate": hits / len(latencies), "median_ms": median(latencies),
            "steps_per_append": passes / len(latencies), "not_scorable": skipped}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=("tiny", "qwen2.5-0.5b-shape"))
    parser.add_argument("--appends", type=int, default=30)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--model-dir", help="an existing model directory (skips building one)")
    parser.add_argument("--gguf", help="an existing F32 GGUF of --model-dir (skips the conversion)")
    args = parser.parse_args(argv)

    from gguf_model import convert
    from llama_server import LlamaServer
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model
    from tokentree.lm.server import connect

    work = Path(tempfile.mkdtemp(prefix="tokentree-bench-"))
    model_dir = Path(args.model_dir) if args.model_dir else build_model_dir(args.model, work / "model")
    gguf = Path(args.gguf) if args.gguf else convert(model_dir, work / "model-f32.gguf", "f32")
    server = LlamaServer(gguf, work / "server.log").start(timeout=300)
    try:
        backend = connect(server.url, model=server.model, tokenizer=str(model_dir), top_logprobs=20,
                          parallel=args.prefetch)
        bare, step = bare_vs_step(backend, server, PROMPT, 20)
        print(f"server step: {step:.2f} ms, bare completion request {bare:.2f} ms, ratio {step / bare:.2f}x "
              "(target <= 1.1x)")

        local = Engine(load_model(str(model_dir)), top_k=64)
        prefix = local.encode(PROMPT)
        local.prefill(prefix)
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            local.step(prefix, 1)
            t.append(time.perf_counter() - t0)
            local.prefill(prefix)  # back to the same parent: each timed step is a fresh child
        local_step = median(t)
        for name, engine, one_step in (("local", local, local_step), ("server", backend, step / 1000)):
            pause = max(0.05, 2 * one_step)  # a pause of two step times
            off = scripted_session(engine, args.appends, pause, 0, work / f"{name}-off.db")
            on = scripted_session(engine, args.appends, pause, args.prefetch, work / f"{name}-on.db")
            print(f"{name}: pause {pause * 1000:.0f} ms; prefetch off: hits {off['hit_rate']:.0%}, median "
                  f"{off['median_ms']:.1f} ms, {off['steps_per_append']:.2f} steps/append; prefetch "
                  f"{args.prefetch}: hits {on['hit_rate']:.0%} (target >= 80%), median {on['median_ms']:.1f} ms, "
                  f"{on['steps_per_append']:.2f} steps/append; {on['not_scorable']} appends not scorable")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
