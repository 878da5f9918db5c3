"""What a user reads is what the model says: the screen and the JSON export agree with a
plain Hugging Face forward pass (float64 softmax over the tokenizer's real vocabulary),
through the whole path: engine, cache, store, explorer, snapshot, export."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fake_engine import explore, new_session
from tokentree.config import Config, DisplayConfig
from tokentree.core.explorer import Explorer
from tokentree.export import export_session
from tokentree.lm import load_model
from tokentree.lm.engine import Engine
from tokentree.paths import default_db_path
from tokentree.store import Store

CONFIG = Config(display=DisplayConfig(tokens_to_show=8))
REL = 1e-4


def reference(model, ids: list[int], real_vocab: int) -> torch.Tensor:
    """float64 next-token probabilities after every prefix of `ids`, over the real vocabulary."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()[:, :real_vocab]
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "llama", "qwen2-padded"])
def test_screen_and_export_equal_a_plain_forward(arch, tiny_models, tokentree_home):
    loaded = load_model(str(tiny_models[arch]), device="cpu")
    engine = Engine(loaded)
    real_vocab = len(loaded.tokenizer)
    store = Store.open(default_db_path())
    try:
        sid, ex = explore(store, engine, {"p": "Natalia sold clips to"}, config=CONFIG)
        snap = ex.snapshot()
        ids = [t.token_id for t in snap.prompt]
        probs = reference(loaded.model, ids, real_vocab)

        # The screen: the table at the tip, and each appended token's probability.
        last = probs[-1]
        for row in snap.candidates:
            assert row.prob == pytest.approx(float(last[row.token_id]), rel=REL)
            assert row.rank == int((last > last[row.token_id]).sum()) + 1
        assert [r.token_id for r in snap.candidates] == last.topk(len(snap.candidates)).indices.tolist()
        entropy = float(-(last * last.log()).sum())
        assert snap.entropy == pytest.approx(entropy, rel=REL)
        assert snap.norm_entropy == pytest.approx(entropy / math.log(real_vocab), rel=REL)
        assert snap.last_prob == pytest.approx(float(probs[-2][ids[-1]]), rel=REL)

        # The export: every node's own probability and rank, entropy and top list.
        nodes = json.loads(export_session(store, sid, "json"))["nodes"]
        by_depth = {}
        for node in nodes:
            parent = next((n for n in nodes if n["id"] == node["parent"]), None)
            by_depth[node["id"]] = 0 if parent is None else by_depth[parent["id"]] + 1
        for node in nodes:
            depth = by_depth[node["id"]]
            assert node["token_id"] == ids[depth]
            if depth == 0:
                assert node["prob"] is None and node["rank"] is None  # nothing predicts it
                continue
            dist = probs[depth - 1]
            assert node["prob"] == pytest.approx(float(dist[ids[depth]]), rel=REL)
            assert node["rank"] == int((dist > dist[ids[depth]]).sum()) + 1
            assert node["entropy"] == pytest.approx(float(-(dist * dist.log()).sum()), rel=REL)
            for top in node["top"][:8]:
                assert top["prob"] == pytest.approx(float(dist[top["token_id"]]), rel=REL)
    finally:
        store.close()


def test_a_soft_capped_model_says_its_layer_views_are_not_available(tiny_models, tokentree_home):
    """Gemma2 soft-caps its logits: a logit lens would contradict the model's own output,
    so the layer views refuse with a note instead of drawing numbers."""
    engine = Engine(load_model(str(tiny_models["gemma2"]), device="cpu"))
    store = Store.open(default_db_path())
    try:
        sid = new_session(store, engine, {"p": "Natalia sold clips"})
        ex = Explorer(store, sid, config=CONFIG, layer_prob=True)
        ex.attach_engine(engine)
        ex.run_jobs_inline()
        ex.features.views.cycle_layer_view()
        assert ex.layer_view == "off" and "not available for this model" in ex.message
        snap = ex.snapshot()
        assert snap.num_layers == 0 and all(row.layers is None for row in snap.candidates)
    finally:
        store.close()
