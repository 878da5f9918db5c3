"""Start the explorer: a new session from prompt files, or a resumed one.

The order matters for "never lose data, never write on bad input": config and prompt files
are checked before the database is opened, and the model is loaded (and the prompts
tokenized and checked against its context) before a session is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokentree.config import Config, load_config
from tokentree.errors import InputError
from tokentree.logs import setup_logging
from tokentree.paths import db_path
from tokentree.prompts import default_prompt_path, read_prompt
from tokentree.sessions import resolve_session


def launch(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from tokentree.tui.keymap import build_keymap

    build_keymap(config)  # a bad [keys] table fails now, not after a slow model load
    setup_logging()
    if args.resume and args.input:
        raise InputError("--resume and --input cannot be combined: a resumed session keeps its prompts")
    if args.resume:
        return _resume(args, config, db_path(args.db))
    return _new_session(args, config, db_path(args.db))


def _new_session(args: argparse.Namespace, config: Config, db: Path) -> int:
    paths = [Path(p) for p in args.input] or [default_prompt_path(config.prompt.example_prompt)]
    texts = [read_prompt(p) for p in paths]

    from tokentree.store import RootPrompt, Store

    store = Store.open(db)
    try:
        engine = _load_engine(args, config, args.model or config.model.name)
        prompts = []
        for path, text in zip(paths, texts):
            tokens = engine.encode(text)
            if not tokens:
                raise InputError(f"prompt tokenizes to nothing: {path}")
            limit = engine.loaded.context_length
            if limit and len(tokens) >= limit:
                raise InputError(
                    f"prompt is {len(tokens)} tokens, the model's context is {limit}: {path}"
                )
            prompts.append((str(path), tokens))
        loaded = engine.loaded
        session_id = store.start_session(
            model_name=loaded.name, fingerprint=loaded.fingerprint, vocab_key=loaded.vocab_key,
            prompt_sources=[source for source, _ in prompts],
            roots=[RootPrompt(tuple(tokens), source, Path(source).stem) for source, tokens in prompts],
        )
        explorer = _explorer(store, session_id, config, args, model_name=loaded.name)
        explorer.attach_engine(engine)
        from tokentree.tui.app import run_tui

        return run_tui(explorer, config)
    finally:
        store.close()


def _resume(args: argparse.Namespace, config: Config, db: Path) -> int:
    from tokentree.store import Store

    if not db.exists():
        raise InputError(f"no sessions to resume: {db} does not exist yet")
    store = Store.open(db)
    try:
        session_id = resolve_session(store, args.resume)
        info = store.session(session_id)
        if not store.branches(session_id):
            raise InputError(f"session {session_id} has no branches (it was cut off while starting); start a new one")
        model_name = args.model or info.model_name
        explorer = _explorer(store, session_id, config, args, model_name=model_name)

        def load_engine():
            return _load_engine(args, config, model_name, quiet=True)

        from tokentree.tui.app import run_tui

        return run_tui(explorer, config, load_engine=load_engine)
    finally:
        store.close()


def _explorer(store, session_id: int, config: Config, args: argparse.Namespace, *, model_name: str):
    from tokentree.core.explorer import Explorer

    return Explorer(store, session_id, config=config, layer_prob=args.layer_prob, model_name=model_name)


def _load_engine(args: argparse.Namespace, config: Config, model_name: str, *, quiet: bool = False):
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    if not quiet:
        print(f"tokentree: loading {model_name} ...", file=sys.stderr, flush=True)
    loaded = load_model(model_name, device=args.device, bf16=args.bf16,
                        trust_remote_code=args.trust_remote_code)
    return Engine(loaded, top_k=config.top_k, cache_size=config.display.cache_size,
                  prefill_chunk=config.model.prefill_chunk)

